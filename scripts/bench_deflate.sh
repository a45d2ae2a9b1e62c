#!/usr/bin/env bash
# permessage-deflate figures, interleaved within each run, the server pinned to core 0 and its
# clients to core 1 (docs/PERFORMANCE.md, "permessage-deflate"):
#   broadcast  uringcast --workers 1: 10,000 subscribers, 10 publishes/s, a 400-byte JSON tick
#              (uringcast-load --payload json); plain (no --deflate) against deflate (--deflate
#              on both ends): server CPU µs per delivery and bytes on the wire per delivery
#   idle       RSS per idle connection at 10,000 connections, each after one 2 KiB JSON
#              message and its echo: uringcast plain and with deflate, Node ws 8 without and
#              with perMessageDeflate
# Usage: scripts/bench_deflate.sh [RUNS=3] [WHAT=broadcast,idle]
# Installs Node ws from npm into target/peers/node (once). Loopback only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
what=${2:-broadcast,idle}
out=${OUT:-$(mktemp -d /tmp/bench_deflate.XXXX)}; mkdir -p "$out"
cargo build --release -q --workspace
load=target/release/uringcast-load
server=target/release/uringcast
# shellcheck source=peers/install.sh
. scripts/peers/install.sh
if [[ $what == *idle* ]]; then peer_install node; fi
port=9700
next() { port=$((port + 1)); src="127.0.0.$((130 + port % 100))"; }
wait_listen() { for _ in $(seq 1 100); do ss -ltn "sport = :$1" | grep -q LISTEN && return; sleep 0.1; done; }
start_uringcast() { # mode deflate(0/1)
  local deflate=(); [ "$2" = 1 ] && deflate=(--deflate)
  taskset -c 0 "$server" --listen "127.0.0.1:$port" --mode "$1" --workers 1 --ping-interval 0 \
    "${deflate[@]}" >"$out/server.log" 2>&1 &
  pid=$!; wait_listen "$port"
}
start_node() { # deflate(0/1)
  NODE_PATH="$node_path" PORT=$port MODE=echo DEFLATE=$1 taskset -c 0 node scripts/peers/node/server.js \
    >"$out/node.log" 2>&1 &
  pid=$!; wait_listen "$port"
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

fanout() { # deflate(0/1)
  next; start_uringcast broadcast "$1"
  local deflate=(); [ "$1" = 1 ] && deflate=(--deflate)
  timeout 180 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$port/ticks" --subscribers 10000 \
    --publishers 1 --rate 10 --payload json --size 400 --duration 8 "${deflate[@]}" \
    --server-pid "$pid" --source "$src" --connect-rate 3000 --quiet \
    --json "$out/broadcast-$1-$run.json" >/dev/null 2>&1 || true
  stop
  python3 - "$out/broadcast-$1-$run.json" "$run" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}
received = d["received"] or 1
print(f"broadcast run {sys.argv[2]} {'deflate' if sys.argv[3] == '1' else 'plain  '} "
      f"received {d['received']}/{d['expected']} missing {d['missing']} "
      f"deflate_connections {d.get('deflate_connections')} "
      f"server_us_per_delivery {s.get('cpu_per_message_us') or 0:.3f} "
      f"wire_bytes_per_delivery {d['wire_bytes_in'] / received:.1f} "
      f"payload_bytes_per_delivery {d['payload_bytes_in'] / received:.1f} "
      f"p50_ms {d['latency_us']['p50']/1000:.2f} p99_ms {d['latency_us']['p99']/1000:.2f}")
PY
}

for run in $(seq 1 "$runs"); do
  if [[ $what == *broadcast* ]]; then
    for deflate in 0 1; do fanout "$deflate"; done
  fi
  if [[ $what == *idle* ]]; then
    for peer in uringcast node; do
      for deflate in 0 1; do
        next
        if [ "$peer" = uringcast ]; then start_uringcast echo "$deflate"; else start_node "$deflate"; fi
        echo -n "idle run $run $peer deflate=$deflate "
        DEFLATE=$deflate MESSAGE_BYTES=2048 timeout 170 python3 scripts/idle_memory.py "$port" "$pid" 10000 2 \
          | sed 's/rss_before=[0-9]* rss_after=[0-9]* //' || echo failed
        stop
      done
    done
  fi
done
echo "results in $out"
