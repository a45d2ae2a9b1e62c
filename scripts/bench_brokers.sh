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
# Streams across nodes (issue 25; scripts/bench_streams.sh runs these four): the same
# measures with positions from the broker (--history 300 --max-recover 300) beside plain
# pub/sub, per broker: Redis, Redis Cluster, NATS (JetStream with --history) and Kafka (Tansu;
# it has no pub/sub path, so it is measured with --history only):
#   history-fanout   fanout cross-node, labels redis, redis-history, cluster, cluster-history,
#                    nats, nats-history, kafka-history
#   history-latency  hop: local, then each of those labels
#   history-ceiling  ceiling for the -history labels, rates CEILING_RATES (environment;
#                    default 5000 10000 25000 50000 100000); a loss now also counts the
#                    gaps B reported as "not recovered"
#   recovery         1,000 SSE streams on node B, HTTP publishes on node A at 20/s; 2 s into the
#                    traffic every stream closes, B is stopped and a fresh B (no hot copy)
#                    started on the same port, and 5 s later all 1,000 reopen at once with
#                    Last-Event-ID, each 100 or more publications behind: recovered exactly /
#                    reset / silent losses, the time until the last was live again, and the
#                    CPU (all threads, from /proc/PID/task/*/schedstat) of the broker and of
#                    the fresh B over the 3 s from the reopening, the broker's beside its own
#                    rate just before (A's publishes only).
# Usage: scripts/bench_brokers.sh [RUNS=3] [WHAT=fanout,ceiling,latency]
#   WHAT is a comma-separated list of the parts above; `streams` is the last four.
# Needs redis-server and nats-server (scripts/brokers.sh install; tansu for Kafka). Loopback
# only; every run is bounded in count and time. PORT_BASE (default 9800) moves the nodes'
# ports; SUBSCRIBERS (default 10000) the fanout's subscribers, for a quick try.
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
# Every thread of every broker (nats-server and tansu run several) on core 1.
for pid in ${REDIS_PID:-} ${NATS_PID:-} ${REDIS_CLUSTER_PIDS:-} ${KAFKA_PID:-}; do
  taskset -apc 1 "$pid" >/dev/null
done
echo "output in $out"

port=${PORT_BASE:-9800}
next() { port=$((port + 2)); src="127.0.0.$((130 + port % 100))"; }
wait_listen() {
  for _ in $(seq 1 100); do ss -ltn "sport = :$1" | grep -q LISTEN && return; sleep 0.1; done
  echo "bench_brokers: nothing listens on port $1 after 10 s" >&2; exit 1
}
node() { # core port broker-url-or-empty [more server args] -> pid in $node_pid
  local core=$1 at=$2 broker=(); [ -n "$3" ] && broker=(--broker "$3")
  shift 3
  taskset -c "$core" "$server" --listen "127.0.0.1:$at" --mode broadcast --workers 1 --ping-interval 0 \
    "${broker[@]}" "$@" >>"$out/node-$at.log" 2>&1 &
  node_pid=$!; wait_listen "$at"
}
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%d", s }'; }
cpu_ticks() { local p s=0; for p in "$@"; do s=$((s + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$s"; }
cpu_ns() { # every thread of the PIDs: time on a CPU in ns (schedstat; finer than ticks)
  local p t x s=0
  for p in "$@"; do
    for t in /proc/"$p"/task/*/schedstat; do read -r x _ 2>/dev/null <"$t" && s=$((s + x)); done
  done
  echo "$s"
}
summary() { # json label
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}
print(f"{sys.argv[2]:<10} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"B_us_per_delivery {s.get('cpu_per_message_us') or 0:.3f} "
      f"p50_ms {d['latency_us']['p50']/1000:.2f} p99_ms {d['latency_us']['p99']/1000:.2f}")
PY
}

fanout() { # label broker-url-or-empty same|cross [more server args]
  next
  local b=$port a=$((port + 1)) args=("${@:4}")
  node 0 "$b" "$2" "${args[@]}"; local b_pid=$node_pid
  if [ "$3" = same ]; then
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/ticks" --subscribers "${SUBSCRIBERS:-10000}" \
      --publishers 1 --rate 10 --duration 8 --server-pid "$b_pid" --source "$src" \
      --connect-rate 5000 --quiet --json "$out/fanout-$1-$run.json" >/dev/null 2>&1 || true
    stop "$b_pid"
  else
    node 1 "$a" "$2" "${args[@]}"; local a_pid=$node_pid
    # One load generator: its publisher on node A (--publisher-url), its subscribers on B.
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/ticks" --subscribers "${SUBSCRIBERS:-10000}" \
      --publisher-url "ws://127.0.0.1:$a/ticks" --publishers 1 --rate 10 --duration 8 \
      --server-pid "$b_pid" --source "$src" --connect-rate 5000 --quiet \
      --json "$out/fanout-$1-$run.json" >/dev/null 2>&1 || true
    stop "$a_pid" "$b_pid"
  fi
  summary "$out/fanout-$1-$run.json" "$1"
}

hop() { # label broker-url-or-empty [more server args]
  next
  local b=$port a=$((port + 1)) cross=() args=("${@:3}")
  node 0 "$b" "$2" "${args[@]}"; local b_pid=$node_pid a_pid=
  if [ -n "$2" ]; then
    node 1 "$a" "$2" "${args[@]}"; a_pid=$node_pid
    cross=(--publisher-url "ws://127.0.0.1:$a/hop")
  fi
  timeout 60 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$b/hop" --subscribers 100 \
    "${cross[@]}" --publishers 1 --rate 1000 --duration 5 --source "$src" --quiet \
    --json "$out/hop-$1-$run.json" >/dev/null 2>&1 || true
  stop $a_pid "$b_pid"
  python3 - "$out/hop-$1-$run.json" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_us"]
print(f"hop {sys.argv[2]:<15} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"p50_us {l['p50']} p99_us {l['p99']} p99.9_us {l['p999']}")
PY
}

ceiling() { # label broker-url "broker-pid..." [more server args]; rates: $rates
  local rate args=("${@:4}")
  for rate in ${rates:-25000 50000 75000 100000 150000}; do
    next
    local b=$port a=$((port + 1))
    node 0 "$b" "$2" "${args[@]}"; local b_pid=$node_pid
    node 1 "$a" "$2" "${args[@]}"; local a_pid=$node_pid
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
    local t0 p0; t0=$(cpu_ticks $3); p0=$(metric "$a" uringcast_broker_published_total)
    sleep 2
    local t1 p1; t1=$(cpu_ticks $3); p1=$(metric "$a" uringcast_broker_published_total)
    wait "$pub" || true
    wait "$sub" || true
    local published=$(metric "$a" uringcast_broker_published_total)
    local window=$((p1 - p0))
    local lost_a=$(( $(metric "$a" uringcast_broker_publish_drops_total) + $(metric "$a" uringcast_broker_publish_failures_total) ))
    local lost_b=$(( $(metric "$b" uringcast_broker_gaps_total) + $(metric "$b" uringcast_broker_receive_drops_total) + $(metric "$b" uringcast_mailbox_drops_total) ))
    # With --history a gap B could not fill from the broker is reported to its subscribers.
    lost_b=$(( lost_b + $(metric "$b" uringcast_broker_history_gaps_reported_total) + $(metric "$b" uringcast_gaps_reported_total) ))
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
print(f"ceiling {label:<15} rate {int(rate):>6}/s published {published} received {d['received']} "
      f"missing {d['missing']} lost_at_A {lost_a} lost_at_B {lost_b} "
      f"broker_us_per_publish {cpu_s * 1e6 / max(int(window), 1):.2f} "
      f"{'OK' if ok else ('LOSS' if reached else 'RATE-NOT-REACHED')}")
PY
  done
}

# Positions from the broker; --max-recover as --history, so a replay of 100 or more is exact.
history=(--history 300 --max-recover 300)
# The brokers of the streams parts (BROKERS picks some): label, URL, broker PIDs.
streams_brokers() {
  local name
  for name in ${BROKERS:-redis cluster nats kafka}; do
    case $name in
      redis) [ -n "${REDIS_URL:-}" ] && echo "redis $REDIS_URL $REDIS_PID" ;;
      cluster) [ -n "${REDIS_CLUSTER_URL:-}" ] && echo "cluster $REDIS_CLUSTER_URL $REDIS_CLUSTER_PIDS" ;;
      nats) [ -n "${NATS_URL:-}" ] && echo "nats $NATS_URL $NATS_PID" ;;
      kafka) [ -n "${KAFKA_URL:-}" ] && echo "kafka $KAFKA_URL $KAFKA_PID" ;;
    esac
  done
  return 0
}
sleep_until() { # epoch seconds (fractional)
  sleep "$(python3 -c "import sys, time; print(max(0.0, float(sys.argv[1]) - time.time()))" "$1")"
}
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

recovery() { # label broker-url "broker-pid..."
  next
  local b=$port a=$((port + 1)) streams=1000 rate=20 after=2 down=5 json="$out/recovery-$1-$run.json"
  node 0 "$b" "$2" "${history[@]}" --publish-token T; local b_pid=$node_pid
  node 1 "$a" "$2" "${history[@]}" --publish-token T; local a_pid=$node_pid
  timeout 120 taskset -c 1 "$load" sse "http://127.0.0.1:$b/rec" --subscribers "$streams" \
    --publishers 1 --publish-url "http://127.0.0.1:$a/publish/rec" --publish-token T \
    --rate "$rate" --size 64 --duration 12 --reconnect-after "$after" --reconnect-down "$down" \
    --reconnect-window 0 --source "$src" --quiet --json "$json" >"$out/recovery-$1-$run.load" 2>&1 &
  local loadgen=$! i
  for i in $(seq 1 600); do [ "$(established "$b")" -ge "$streams" ] && break; sleep 0.1; done
  for i in $(seq 1 600); do [ "$(established "$b")" -eq 0 ] && break; sleep 0.05; done
  local closed; closed=$(date +%s.%N)
  # Every stream is closed: B goes, and a fresh B (no hot copy) takes its port.
  stop "$b_pid"
  node 0 "$b" "$2" "${history[@]}" --publish-token T; b_pid=$node_pid
  local base0 base1 t_base0 t_base1 k0 k1 b0 b1 t0 t1
  t_base0=$(date +%s.%N); base0=$(cpu_ns $3)
  sleep_until "$(python3 -c "print($closed + $down - 0.3)")"
  t_base1=$(date +%s.%N); base1=$(cpu_ns $3)
  t0=$t_base1; k0=$base1; b0=$(cpu_ns "$b_pid")
  sleep 3
  t1=$(date +%s.%N); k1=$(cpu_ns $3); b1=$(cpu_ns "$b_pid")
  wait "$loadgen" || true
  stop "$a_pid" "$b_pid"
  python3 - "$json" "$1" "$t_base0" "$t_base1" "$base0" "$base1" "$t0" "$t1" "$k0" "$k1" "$b0" "$b1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); st = d["streams"]; storm = st.get("storm") or {}
tb0, tb1, kb0, kb1, t0, t1, k0, k1, b0, b1 = map(float, sys.argv[3:])
base_rate = (kb1 - kb0) / max(tb1 - tb0, 1e-3)        # broker ns per s before the reopening
broker_ms = (k1 - k0) / 1e6
extra_ms = broker_ms - base_rate * (t1 - t0) / 1e6    # beside what A's publishes cost it
live = storm.get("all_live_after_s")
print(f"recovery {sys.argv[2]:<8} streams {storm.get('streams')} recovered {st['recovered']} "
      f"reset {st['reset_on_resume']} silent {st['silent_losses']} repeated {st['repeated_on_resume']} "
      f"unconfirmed {st['unconfirmed']} missing {d['missing']} replayed {storm.get('replayed')} "
      f"all_live_after_s {live if live is not None else 'none'} "
      f"broker_ms_3s {broker_ms:.1f} broker_ms_before_3s {base_rate * (t1 - t0) / 1e6:.1f} "
      f"broker_extra_ms {extra_ms:.1f} B_ms_3s {(b1 - b0) / 1e6:.1f}")
PY
}

has() { [[ ,$what, == *,$1,* ]]; }
[ "$what" = streams ] && what=history-fanout,history-latency,history-ceiling,recovery
mapfile -t stream_brokers < <(streams_brokers)

for run in $(seq 1 "$runs"); do
  echo "== run $run"
  if has fanout; then
    fanout local "" same
    [ -n "${REDIS_URL:-}" ] && fanout redis-same "$REDIS_URL" same
    [ -n "${REDIS_URL:-}" ] && fanout redis "$REDIS_URL" cross
    [ -n "${NATS_URL:-}" ] && fanout nats-same "$NATS_URL" same
    [ -n "${NATS_URL:-}" ] && fanout nats "$NATS_URL" cross
  fi
  if has latency; then
    hop local ""
    [ -n "${REDIS_URL:-}" ] && hop redis "$REDIS_URL"
    [ -n "${NATS_URL:-}" ] && hop nats "$NATS_URL"
  fi
  if has ceiling; then
    [ -n "${REDIS_URL:-}" ] && ceiling redis "$REDIS_URL" "$REDIS_PID"
    [ -n "${NATS_URL:-}" ] && ceiling nats "$NATS_URL" "$NATS_PID"
  fi
  if has history-fanout; then
    for line in "${stream_brokers[@]}"; do
      read -r name url pids <<<"$line"
      [ "$name" = kafka ] || fanout "$name" "$url" cross
      fanout "$name-history" "$url" cross "${history[@]}"
    done
  fi
  if has history-latency; then
    hop local ""
    for line in "${stream_brokers[@]}"; do
      read -r name url pids <<<"$line"
      [ "$name" = kafka ] || hop "$name" "$url"
      hop "$name-history" "$url" "${history[@]}"
    done
  fi
  if has history-ceiling; then
    for line in "${stream_brokers[@]}"; do
      read -r name url pids <<<"$line"
      rates=${CEILING_RATES:-5000 10000 25000 50000 100000} ceiling "$name-history" "$url" "$pids" "${history[@]}"
    done
  fi
  if has recovery; then
    for line in "${stream_brokers[@]}"; do read -r name url pids <<<"$line"; recovery "$name" "$url" "$pids"; done
  fi
done
