#!/usr/bin/env bash
# Memory per idle connection: RUNS runs of N idle connections against one worker, sampled
# HOLDS seconds after the last upgrade (a comma list; the handshake deadlines expire at 10 s).
# Usage: scripts/idle_memory.sh [N=19000] [RUNS=3] [HOLDS=11]
# SERVER=path/to/uringcast measures another build of the server (default: this tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-19000}
runs=${2:-3}
holds=${3:-11}
server_bin=${SERVER:-target/release/uringcast}
[ -n "${SERVER:-}" ] || cargo build --release -q
for run in $(seq 1 "$runs"); do
  out=$(mktemp)
  timeout 120 "$server_bin" --listen 127.0.0.1:0 --workers 1 >"$out" 2>/dev/null &
  server=$!
  for _ in $(seq 1 100); do grep -q '^listening on' "$out" && break; sleep 0.1; done
  port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
  # timeout(1) runs the server as its child: measure the server itself.
  pid=$(pgrep -P "$server" uringcast || echo "$server")
  timeout 100 python3 scripts/idle_memory.py "$port" "$pid" "$n" "$holds"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$out"
done
