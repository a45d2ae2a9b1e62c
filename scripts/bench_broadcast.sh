#!/usr/bin/env bash
# Broadcast to 10,000 subscribers at 10 publishes/s, 64-byte messages: uringcast (one worker)
# against the floor (loadgen/examples/floor_server.rs: a plain loop write()ing one pre-encoded
# frame to each socket), interleaved within each run. Each server is pinned to core 0, the load
# generator to core 1. uringcast's CPU (utime+stime) is read by the load generator over its
# traffic window; the floor reports its own CPU over its sending period (it stops by itself
# after 12 s; it sends whether or not anyone measures, so the load generator's window would
# not match its deliveries). Usage: scripts/bench_broadcast.sh [RUNS=3] [SUBSCRIBERS=10000] [PUBLISHES_PER_S=10]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; subs=${2:-10000}; rate=${3:-10}
out=${OUT:-$(mktemp -d /tmp/bench_broadcast.XXXX)}
cargo build --release -q --workspace --examples
load=target/release/uringcast-load
port=9311
for run in $(seq 1 "$runs"); do
  for server in floor uringcast; do
    port=$((port + 1))
    if [ "$server" = floor ]; then src="127.0.0.$((120 + run * 2))"; else src="127.0.0.$((121 + run * 2))"; fi
    if [ "$server" = floor ]; then
      taskset -c 0 target/release/examples/floor_server --listen "127.0.0.1:$port" --connections "$subs" \
        --rate "$rate" --size 64 --start-delay 1 --max-seconds 12 >"$out/$server-$run.server" 2>&1 &
      publishers=0
    else
      taskset -c 0 target/release/uringcast --listen "127.0.0.1:$port" --mode broadcast --workers 1 \
        --ping-interval 0 >"$out/$server-$run.server" 2>&1 &
      publishers=1
    fi
    pid=$!
    for _ in $(seq 1 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$port/topic" --subscribers "$subs" \
      --publishers "$publishers" --rate "$rate" --size 64 --duration 8 --server-pid "$pid" \
      --source "$src" --quiet --json "$out/$server-$run.json" >/dev/null 2>&1 || true
    if [ "$server" = floor ]; then wait "$pid" 2>/dev/null || true; else kill "$pid"; wait "$pid" 2>/dev/null || true; fi
    python3 - "$out/$server-$run.json" "$server" "$run" "$out/$server-$run.server" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
cpu = (d.get("server") or {}).get("cpu_per_message_us") or 0
if sys.argv[2] == "floor":
    m = re.search(r"\(([\d.]+) µs per frame\)", open(sys.argv[4]).read())
    cpu = float(m.group(1)) if m else float("nan")
lat = d["latency_us"]
print(f"run {sys.argv[3]} {sys.argv[2]:9s} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"server_cpu_per_delivery_us {cpu:.2f} p50_ms {lat['p50']/1000:.1f} p99_ms {lat['p99']/1000:.1f}")
PY
  done
done
echo "results in $out"
