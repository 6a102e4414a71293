#!/usr/bin/env bash
# Build and install llama-cpp-python (the version pinned in pyproject.toml) into the venv.
#
# Why not a plain `pip install`:
# - llama.cpp compiles with -march=native. On x86 we leave out Intel AMX: ggml's AMX
#   kernels die with SIGILL (`tilezero`) on Sapphire Rapids VMs that do allow AMX
#   (ggml-org/llama.cpp PR 26954: tile config lost, permission asked on one thread only).
#   The whole server process would die on the first local completion.
# - pip's wheel cache keys a built wheel by the source only, not by the compile flags nor
#   the CPU, so a wheel built elsewhere (or with AMX) would be reused. Ours is kept in a
#   directory named after the version, the flags and this CPU's feature flags.
# Usage: scripts/install-llama.sh VENV_BIN
set -euo pipefail
BIN="$1"
cd "$(dirname "$0")/.."

SPEC="$(grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')"
FLAGS=""
if [ "$(uname -m)" = "x86_64" ]; then
  FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
CPU="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)"
KEY="$(printf '%s\n%s\n%s\n' "$SPEC" "$FLAGS" "$CPU" | sha256sum | cut -c1-16)"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/iatros/wheels/llama-$KEY"

if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "install-llama: compiling $SPEC (4 to 12 minutes, once per machine)"
  mkdir -p "$WHEELS.tmp"
  # CMake starts its C and C++ flags from these; gcc lets -mno-* win over -march=native.
  CFLAGS="$FLAGS" CXXFLAGS="$FLAGS" \
    "$BIN/pip" wheel --quiet --no-deps --no-cache-dir --wheel-dir "$WHEELS.tmp" "$SPEC"
  rm -rf "$WHEELS"
  mv "$WHEELS.tmp" "$WHEELS"
fi
WHEEL="$(ls "$WHEELS"/llama_cpp_python-*.whl)"
"$BIN/pip" install --quiet --no-deps --force-reinstall "$WHEEL"  # replaces any other build
"$BIN/pip" install --quiet "$WHEEL"  # and its dependencies
