#!/usr/bin/env bash
# Scale-out figures (docs/PERFORMANCE.md, "Scale-out through a broker"), each configuration
# interleaved within every run. The receiving node B is pinned to core 0 alone; the publishing
# node A, the brokers and the load generators share core 1.
#   fanout   10,000 subscribers on B, 10 publishes/s of 64 B, 8 s:
#            local       B has no broker; the publisher is a WebSocket client of B
#            redis-same  B on a standalone Redis; the publisher is a client of B (same node)
#            redis       the publisher is a client of node A; A and B share the Redis (cross-node)
#            nats-same, nats   the same through NATS
#            B's CPU µs per delivery (from /proc, via --server-pid) and delivery latency p50/p99
#            (same-node for local, cross-node for the others).
#   ceiling  publishes/s through A's broker link to one subscriber on B, 4 s per step, rates
#            from 25,000/s to 150,000/s: the highest rate reached (95%) with nothing lost anywhere
#            (load generator: missing 0; A: no publish drop or failure; B: no gap or drop); the
#            broker process's own CPU µs per publish at each step (from /proc).
#   latency  the broker's own hop: 100 subscribers on B, 1,000 publishes/s of 64 B, 5 s; local
#            (same node, no broker) against cross-node through Redis and NATS: p50/p99/p99.9.
# Usage: scripts/bench_brokers.sh [RUNS=3] [WHAT=fanout,ceiling,latency]
# Needs redis-server and nats-server (scripts/brokers.sh install). Loopback only; every run
# is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
what=${2:-fanout,ceiling,latency}
out=${OUT:-$(mktemp -d /tmp/bench_brokers.XXXX)}; mkdir -p "$out"
cargo build --release -q -p uringcast -p uringcast-loadgen
load=target/release/uringcast-load
server=target/release/uringcast
scripts/brokers.sh start "$out/brokers" >"$out/brokers.env"
trap 'scripts/brokers.sh stop "$out/brokers" >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT
# shellcheck disable=SC1091
. <(grep -v '^SKIP' "$out/brokers.env")
for pid in ${REDIS_PID:-} ${NATS_PID:-}; do taskset -pc 1 "$pid" >/dev/null; done
echo "output in $out"

port=9800
next() { port=$((port + 2)); src="127.0.0.$((130 + port % 100))"; }
wait_listen() {
  for _ in $(seq 1 100); do ss -ltn "sport = :$1" | grep -q LISTEN && return; sleep 0.1; done
  echo "bench_brokers: nothing listens on port $1 after 10 s" >&2; exit 1
}
node() { # core port broker-url-or-empty -> pid in $node_pid
  local broker=(); [ -n "$3" ] && broker=(--broker "$3")
  taskset -c "$1" "$server" --listen "127.0.0.1:$2" --mode broadcast --workers 1 --ping-interval 0 \
    "${broker[@]}" >"$out/node-$2.log" 2>&1 &
  node_pid=$!; wait_listen "$2"
}
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%d", s }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
summary() { # json label
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}
print(f"{sys.argv[2]:<10} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"B_us_per_delivery {s.get('cpu_per_message_us') or 0:.3f} "
      f"p50_ms {d['latency_us']['p50']/1000:.2f} p99_ms {d['latency_us']['p99']/1000:.2f}")
PY
}

fanout() { # label broker-url-or-empty same|cross
  next
  local b=$port a=$((port + 1))
  node 0 "$b" "$2"; local b_pid=$node_pid
  if [ "$3" = same ]; then
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/ticks" --subscribers 10000 \
      --publishers 1 --rate 10 --duration 8 --server-pid "$b_pid" --source "$src" \
      --connect-rate 5000 --quiet --json "$out/fanout-$1-$run.json" >/dev/null 2>&1 || true
    stop "$b_pid"
  else
    node 1 "$a" "$2"; local a_pid=$node_pid
    # One load generator: its publisher on node A (--publisher-url), its subscribers on B.
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/ticks" --subscribers 10000 \
      --publisher-url "ws://127.0.0.1:$a/ticks" --publishers 1 --rate 10 --duration 8 \
      --server-pid "$b_pid" --source "$src" --connect-rate 5000 --quiet \
      --json "$out/fanout-$1-$run.json" >/dev/null 2>&1 || true
    stop "$a_pid" "$b_pid"
  fi
  summary "$out/fanout-$1-$run.json" "$1"
}

hop() { # label broker-url-or-empty
  next
  local b=$port a=$((port + 1)) cross=()
  node 0 "$b" "$2"; local b_pid=$node_pid a_pid=
  if [ -n "$2" ]; then
    node 1 "$a" "$2"; a_pid=$node_pid
    cross=(--publisher-url "ws://127.0.0.1:$a/hop")
  fi
  timeout 60 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/hop" --subscribers 100 \
    "${cross[@]}" --publishers 1 --rate 1000 --duration 5 --source "$src" --quiet \
    --json "$out/hop-$1-$run.json" >/dev/null 2>&1 || true
  stop $a_pid "$b_pid"
  python3 - "$out/hop-$1-$run.json" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_us"]
print(f"hop {sys.argv[2]:<6} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"p50_us {l['p50']} p99_us {l['p99']} p99.9_us {l['p999']}")
PY
}

ceiling() { # label broker-url broker-pid
  local rate
  for rate in 25000 50000 75000 100000 150000; do
    next
    local b=$port a=$((port + 1))
    node 0 "$b" "$2"; local b_pid=$node_pid
    node 1 "$a" "$2"; local a_pid=$node_pid
    timeout 60 taskset -c 0 "$load" broadcast "ws://127.0.0.1:$b/flood" --subscribers 1 \
      --publishers 0 --duration 7 --quiet --json "$out/ceiling-$1-$rate-$run.json" >/dev/null 2>&1 &
    local sub=$!
    for _ in $(seq 1 100); do # until the subscriber is on B and B subscribed at the broker
      [ "$(metric "$b" uringcast_broker_subscribed_topics)" -ge 1 ] && break; sleep 0.05
    done
    timeout 60 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$a/flood" --subscribers 1 \
      --publishers 4 --rate "$rate" --duration 4 --quiet --json "$out/ceiling-pub-$1-$rate-$run.json" \
      >/dev/null 2>&1 &
    local pub=$!
    # The broker's CPU and A's publishes over the middle 2 s of the 4 s of traffic (the
    # publishers connect within the first).
    sleep 1.5
    local t0 p0; t0=$(cpu_ticks "$3"); p0=$(metric "$a" uringcast_broker_published_total)
    sleep 2
    local t1 p1; t1=$(cpu_ticks "$3"); p1=$(metric "$a" uringcast_broker_published_total)
    wait "$pub" || true
    wait "$sub" || true
    local published=$(metric "$a" uringcast_broker_published_total)
    local window=$((p1 - p0))
    local lost_a=$(( $(metric "$a" uringcast_broker_publish_drops_total) + $(metric "$a" uringcast_broker_publish_failures_total) ))
    local lost_b=$(( $(metric "$b" uringcast_broker_gaps_total) + $(metric "$b" uringcast_broker_receive_drops_total) + $(metric "$b" uringcast_mailbox_drops_total) ))
    stop "$a_pid" "$b_pid"
    python3 - "$out/ceiling-$1-$rate-$run.json" "$1" "$rate" "$published" "$lost_a" "$lost_b" \
      "$t0" "$t1" "$(getconf CLK_TCK)" "$window" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
label, rate, published, lost_a, lost_b, t0, t1, hz, window = sys.argv[2:]
published = int(published); cpu_s = (int(t1) - int(t0)) / int(hz)
# The publishing side shares core 1 with node A and the broker: a step counts only if it
# reached 95% of its rate.
reached = published >= 0.95 * int(rate) * 4
ok = d["missing"] == 0 and int(lost_a) == 0 and int(lost_b) == 0 and d["received"] > 0 and reached
print(f"ceiling {label:<6} rate {int(rate):>6}/s published {published} received {d['received']} "
      f"missing {d['missing']} lost_at_A {lost_a} lost_at_B {lost_b} "
      f"broker_us_per_publish {cpu_s * 1e6 / max(int(window), 1):.2f} "
      f"{'OK' if ok else ('LOSS' if reached else 'RATE-NOT-REACHED')}")
PY
  done
}

for run in $(seq 1 "$runs"); do
  echo "== run $run"
  if [[ $what == *fanout* ]]; then
    fanout local "" same
    [ -n "${REDIS_URL:-}" ] && fanout redis-same "$REDIS_URL" same
    [ -n "${REDIS_URL:-}" ] && fanout redis "$REDIS_URL" cross
    [ -n "${NATS_URL:-}" ] && fanout nats-same "$NATS_URL" same
    [ -n "${NATS_URL:-}" ] && fanout nats "$NATS_URL" cross
  fi
  if [[ $what == *latency* ]]; then
    hop local ""
    [ -n "${REDIS_URL:-}" ] && hop redis "$REDIS_URL"
    [ -n "${NATS_URL:-}" ] && hop nats "$NATS_URL"
  fi
  if [[ $what == *ceiling* ]]; then
    [ -n "${REDIS_URL:-}" ] && ceiling redis "$REDIS_URL" "$REDIS_PID"
    [ -n "${NATS_URL:-}" ] && ceiling nats "$NATS_URL" "$NATS_PID"
  fi
done
