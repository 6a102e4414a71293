#!/usr/bin/env bash
# Install Debian's Prometheus tools (prometheus, promtool, Alertmanager's amtool) for the tests
# of deploy/prometheus (tests/observability/test_prometheus.py), when they are missing.
# Without root or apt: explain and carry on (those tests skip); under CI (CI=true) a missing
# tool is a failure instead, so those tests can never turn into skips there.
set -u

give_up() {
  echo "install-prometheus: $1; the Prometheus tests will be skipped" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "install-prometheus: CI=true: a missing tool is a failure, not a skip" >&2
    exit 1
  fi
  exit 0
}

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
   && command -v amtool >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || give_up "promtool is missing and apt-get is not available"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    give_up "promtool is missing and installing it needs root (sudo apt-get install prometheus prometheus-alertmanager)"
  fi
else
  SUDO=""
fi
echo "install-prometheus: installing prometheus and prometheus-alertmanager with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
       prometheus prometheus-alertmanager >/dev/null; }; then
  give_up "apt-get could not install prometheus"
fi
promtool --version 2>/dev/null | head -1 || true
