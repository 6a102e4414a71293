#!/usr/bin/env bash
# Install Debian's Chromium for the web app's browser tests (tests/web), when it is missing.
# Playwright drives this system browser (executable_path=/usr/bin/chromium); its own browser
# download is never used. Without root (or apt), explain and carry on: the tests then skip.
set -u
CHROMIUM="${IATROS_TEST_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: $CHROMIUM is missing and apt-get is not available;" \
       "the browser tests (tests/web) will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-browser: $CHROMIUM is missing and installing it needs root" \
         "(run: sudo apt-get install chromium); the browser tests will be skipped" >&2
    exit 0
  fi
else
  SUDO=""
fi
echo "install-browser: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
  echo "install-browser: apt-get could not install chromium;" \
       "the browser tests (tests/web) will be skipped" >&2
  exit 0
fi
"$CHROMIUM" --version 2>/dev/null || true
