#!/usr/bin/env bash
# The scribe's system packages (Debian):
# - espeak-ng synthesizes the speech that the scribe's tests and benchmark transcribe
#   (ACI-Bench consultations and short clinical sentences, English and French);
# - Pango is what WeasyPrint lays the note's PDF out with;
# - poppler-utils (pdftoppm) renders a PDF page to an image, so a test can look at it.
# Under CI a missing package is a failure; elsewhere (no root, no apt) the tests that need
# it skip and say so.
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0' || missing+=(libpango-1.0-0 libpangoft2-1.0-0)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]}"
  (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null; })
fi
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "espeak-ng or poppler-utils could not be installed: the scribe's tests need them" >&2
    exit 1
  fi
  echo "espeak-ng or pdftoppm is missing (needs root and apt-get): those tests will skip" >&2
fi
