#!/usr/bin/env bash
# Debian packages the scale-out tests and benchmarks run (tests/cluster, bench/cluster.py):
# HAProxy in front of three Iatros instances, and redis-sentinel for failover. Installed
# when missing. Without root (or apt), explain and carry on: the cluster tests then fail
# with "haproxy: not found"; under CI (CI=true) a failed install stops here instead.
set -u
PACKAGES=(haproxy redis-sentinel)
BINARIES=(haproxy redis-sentinel)

give_up() {
  echo "install-system: $1; tests/cluster needs: ${PACKAGES[*]}" >&2
  if [ "${CI:-}" = "true" ]; then
    exit 1
  fi
  exit 0
}

missing=0
for bin in "${BINARIES[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/usr/bin/$bin" ] || missing=1
done
[ "$missing" -eq 0 ] && exit 0
command -v apt-get >/dev/null 2>&1 || give_up "apt-get is not available"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    give_up "installing needs root (run: sudo apt-get install ${PACKAGES[*]})"
  fi
else
  SUDO=""
fi
echo "install-system: installing ${PACKAGES[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >/dev/null; }; then
  give_up "apt-get could not install ${PACKAGES[*]}"
fi
# The packages start their own services; the tests start what they need on their own ports.
for service in haproxy redis-sentinel; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop "$service" >/dev/null 2>&1 || true
  else
    $SUDO service "$service" stop >/dev/null 2>&1 || true
  fi
done
exit 0
