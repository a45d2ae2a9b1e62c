#!/usr/bin/env bash
# A broadcast to every connection: N subscribers of one topic on one server, spread over as
# many load-generator processes as the descriptor limit and the ports need, one publisher
# process on the topic's publish-only path, all traffic started together with --start-at,
# and the subscriber reports merged. Every subscriber is owed every publish (--expect), so
# the merged report's `missing` counts what never arrived.
#
# Usage: scripts/broadcast_all.sh [N=1000000] [RATE=1] [DURATION=30] [--plan]
#   RATE publishes per second for DURATION seconds (RATE x DURATION publishes, rounded up).
# Environment:
#   PER_PROCESS   subscribers per load-generator process (250000)
#   CONNECT_RATE  handshakes per second per process (2000)
#   OUT           where the reports go (target/broadcast_all)
#   PERF_OUT      a file: `perf record -a -g` of the whole machine from 5 s before the first
#                 publish to PERF_SECS (12) after it
#   TCP_MEM       "MIN PRESSURE MAX" pages for net.ipv4.tcp_mem during the run (restored on
#                 exit); unset, the kernel's own. A million's first fan-out went past the
#                 default maximum here (575,832 pages, 2.2 GiB; docs/PERFORMANCE.md)
#
# Prints the merged report's lines and the figures the million issue asks for: the fan-out
# time (the slowest delivery of any publish, from its scheduled send), p50/p99, the server's
# CPU per delivery, and the load generator's. Sizing as scripts/capacity.sh: one server worker
# and one load-generator thread per 19,000 connections, one source address per 12,500; the
# memory check (scripts/capacity_plan.py) runs first and stops (exit 3) a run that would not
# fit; fs.file-max and net.ipv4.tcp_max_orphans are raised for big runs and restored on exit.
# Loopback only; every process has a time bound.
set -euo pipefail
cd "$(dirname "$0")/.."

plan_only=0
args=()
for a in "$@"; do
  case $a in
    --plan) plan_only=1 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done
n=${args[0]:-1000000}
rate=${args[1]:-1}
duration=${args[2]:-30}
per_process=${PER_PROCESS:-250000}
connect_rate=${CONNECT_RATE:-2000}
out=${OUT:-target/broadcast_all}
planner=(python3 scripts/capacity_plan.py)
. scripts/kernel_limits.sh

processes=$(((n + per_process - 1) / per_process))
per=$(((n + processes - 1) / processes))
read -r _ _ workers _ < <("${planner[@]}" plan "$n" --steps "$n")
read -r _ _ threads sources < <("${planner[@]}" plan "$per" --steps "$per")
publishes=$(python3 -c "import math; print(math.ceil($rate * $duration))")
# Every process connected by then, with a margin for the slowest.
lead=$((per / connect_rate + 30))
echo "broadcast_all: $n subscribers in $processes process(es) of $per ($threads threads, $sources source addresses each); server --workers $workers; $publishes publish(es) at $rate/s"
"${planner[@]}" check "$n" "$workers" || exit 3
[ "$plan_only" = 1 ] && exit 0
last_source=$((1 + processes * sources + 1))
if [ "$last_source" -gt 254 ]; then
  echo "broadcast_all: $processes x $sources source addresses do not fit in 127.0.0.2-127.0.0.254" >&2
  exit 2
fi

cargo build --release -q -p uringcast -p uringcast-loadgen
bin=target/release
mkdir -p "$out"
rm -f "$out"/sub*.json "$out"/pub.json "$out"/all.json

pids=()
perf_pid=
cleanup() {
  # perf first, with SIGINT, so that it finishes writing its file.
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  limits_restore broadcast_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM
limits_raise broadcast_all "$n" || exit 2
if [ -n "${TCP_MEM:-}" ]; then
  limits_set broadcast_all net.ipv4.tcp_mem "$TCP_MEM" || exit 2
fi

: >"$out/server.out"
"$bin/uringcast" --listen 127.0.0.1:0 --mode broadcast --workers "$workers" --ping-interval 0 \
  --handshake-timeout 60 >"$out/server.out" 2>"$out/server.err" &
server=$!
pids+=("$server")
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^listening on //p' "$out/server.out")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$out/server.err" >&2; exit 1; }

at=$(($(date +%s) + lead))
bound=$((lead + duration + 120))
echo "broadcast_all: traffic starts at $(date -d "@$at" +%T) (in $lead s)"
if [ -n "${PERF_OUT:-}" ]; then
  # The whole machine's kernel and user stacks from the first publish on, sampled on the
  # software clock (no hardware counters here): where the fan-out's time goes. perf starts
  # 5 s early: on a machine busy with the fan-out its own start took 7 s.
  (
    wait_s=$((at - 5 - $(date +%s)))
    [ "$wait_s" -gt 0 ] && sleep "$wait_s"
    exec perf record -a -g -e cpu-clock -F 499 -o "$PERF_OUT" -- sleep $((${PERF_SECS:-12} + 5))
  ) >"$out/perf.out" 2>&1 &
  perf_pid=$!
fi
subs=()
for ((i = 0; i < processes; i++)); do
  first=$((2 + i * sources))
  count=$per
  [ $((i * per + per)) -gt "$n" ] && count=$((n - i * per))
  timeout "$bound" "$bin/uringcast-load" broadcast "ws://$addr/all" --subscribers "$count" \
    --publishers 0 --expect "$publishes" --threads "$threads" \
    --source "127.0.0.$first-127.0.0.$((first + sources - 1))" --connect-rate "$connect_rate" \
    --handshake-timeout 60 --duration "$duration" --drain-timeout 60 --start-at "$at" \
    --server-pid "$server" --quiet --json "$out/sub$i.json" >"$out/sub$i.txt" 2>&1 &
  subs+=($!)
  pids+=($!)
done
pub_status=0
timeout "$bound" "$bin/uringcast-load" broadcast "ws://$addr/all" --subscribers 1 --publishers 1 \
  --publisher-url "ws://$addr/publish/all" --rate "$rate" --duration "$duration" \
  --drain-timeout 60 --source "127.0.0.$((last_source + 1))" --start-at "$at" \
  --server-pid "$server" --quiet --json "$out/pub.json" >"$out/pub.txt" 2>&1 || pub_status=$?
sub_status=0
for pid in "${subs[@]}"; do wait "$pid" || sub_status=1; done
reports=()
for ((i = 0; i < processes; i++)); do reports+=("$out/sub$i.json"); done
merge_status=0
"$bin/uringcast-load" merge "${reports[@]}" --json "$out/all.json" >"$out/all.txt" 2>&1 || merge_status=$?
cat "$out/all.txt"
grep -E '^messages' "$out/pub.txt" | sed 's/^/publisher /'
python3 - "$out/all.json" "$out/pub.json" <<'PY'
import json, sys
merged, pub = (json.load(open(p)) for p in sys.argv[1:3])
sent = pub["sent"]
subscribers = merged["connections"]["target"]
lat = merged.get("latency_us") or {}
deliveries = merged["received"]
server_cpu = merged["server"]["cpu_s"] if merged.get("server") else None
client_cpu = merged["client"]["cpu_s"]
print(f"owed {sent} x {subscribers:,} = {sent * subscribers:,}; received {deliveries:,}; "
      f"missing {merged['missing']:,}")
print(f"fan-out: slowest delivery {lat.get('max', 0) / 1e6:.2f} s after its publish; "
      f"p50 {lat.get('p50', 0) / 1e6:.2f} s, p99 {lat.get('p99', 0) / 1e6:.2f} s")
if server_cpu is not None and deliveries:
    print(f"server CPU {server_cpu:.2f} s: {server_cpu / deliveries * 1e6:.2f} us per delivery; "
          f"load generator {client_cpu:.2f} s: {client_cpu / deliveries * 1e6:.2f} us per delivery")
PY
kill -TERM "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
[ "$pub_status" = 0 ] && [ "$sub_status" = 0 ] && [ "$merge_status" = 0 ]
