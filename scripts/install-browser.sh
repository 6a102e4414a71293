#!/usr/bin/env bash
# Install Debian's Chromium for the web app's browser tests (tests/web), when it is missing.
# Playwright drives this system browser (executable_path=/usr/bin/chromium); its own browser
# download is never used. Without root (or apt), explain and carry on: the tests then skip;
# under CI (CI=true) that is a failure instead, so the browser tests can never turn into skips.
set -u
CHROMIUM="${IATROS_TEST_CHROMIUM:-/usr/bin/chromium}"

give_up() {
  echo "install-browser: $1; the browser tests (tests/web) will be skipped" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "install-browser: CI=true: a missing browser is a failure, not a skip" >&2
    exit 1
  fi
  exit 0
}

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  give_up "$CHROMIUM is missing and apt-get is not available"
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    give_up "$CHROMIUM is missing and installing it needs root (run: sudo apt-get install chromium)"
  fi
else
  SUDO=""
fi
echo "install-browser: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
  give_up "apt-get could not install chromium"
fi
"$CHROMIUM" --version 2>/dev/null || true
