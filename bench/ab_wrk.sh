#!/usr/bin/env bash
# Side-by-side A/B of two source trees with wrk (../shared/tools/wrk_chat.lua), one server at
# a time on loopback, in front of the fake upstream (start it first:
#   .venv/bin/python -m iatros.testing.fake_upstream --port 9100 --delay-ms 50).
# usage: bench/ab_wrk.sh SRC_DIR PORT same|new [SECONDS]
#   same: the same question every time (exact-cache hits); new: a fresh one (pass-through)
# Prints req/s and the server's CPU time per request (utime+stime over the measured run).
# The previous commit's tree: git archive REV src | tar -x -C /tmp/old
set -euo pipefail
SRC=$1; PORT=$2; MODE=$3; DUR=${4:-8}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
cat > "$WORK/cfg.yaml" <<YAML
admin_key: sk-ab-admin-0123456789abcdef0123456789
providers: {up: {type: openai, base_url: "http://127.0.0.1:9100/v1", api_key: x}}
deployments: {pa: {provider: up, model: fake}}
models: {m: {deployments: [pa]}}
embeddings: {default_model: null}
YAML
IATROS_DATA_DIR="$WORK/data" PYTHONPATH="$SRC" "$ROOT/.venv/bin/python" -m iatros serve \
  --port "$PORT" --config "$WORK/cfg.yaml" > "$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 150); do curl -s "localhost:$PORT/readyz" | grep -q ready && break; sleep 0.2; done
export WRK_KEY=sk-ab-admin-0123456789abcdef0123456789
[ "$MODE" = same ] && export WRK_SAME=1
LUA="$ROOT/../shared/tools/wrk_chat.lua"
URL="http://127.0.0.1:$PORT/v1/chat/completions"
wrk -t1 -c100 -d3s -s "$LUA" "$URL" > /dev/null
T0=$(awk '{print $14+$15}' "/proc/$PID/stat")
OUT=$(wrk -t1 -c100 -d"${DUR}s" -s "$LUA" "$URL" | grep WRK)
T1=$(awk '{print $14+$15}' "/proc/$PID/stat")
N=$(echo "$OUT" | sed 's/.*completed=\([0-9]*\).*/\1/')
RPS=$(echo "$OUT" | sed 's/.*rps=\([0-9.]*\).*/\1/')
TICK=$(getconf CLK_TCK)
echo "rps=$RPS cpu_ms_per_req=$(python3 -c "print(round(($T1-$T0)*1000/$TICK/$N,4))")"
