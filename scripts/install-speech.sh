#!/usr/bin/env bash
# espeak-ng (Debian) synthesizes the speech that the scribe's tests and benchmark transcribe:
# consultations from ACI-Bench and short clinical sentences, in English and French.
# Installed here because it is a system package, not a Python one. Under CI a missing
# synthesizer is a failure; elsewhere (no root, no apt) the tests that need it skip and say so.
set -euo pipefail
if command -v espeak-ng >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing espeak-ng"
  (apt-get install -y -qq espeak-ng >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng >/dev/null; })
fi
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "espeak-ng could not be installed: the speech tests need it" >&2
    exit 1
  fi
  echo "espeak-ng is not installed (needs root and apt-get): speech tests will be skipped" >&2
fi
