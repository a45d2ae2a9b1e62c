#!/usr/bin/env bash
# Capacity: hold N concurrent idle WebSocket connections to one uringcast process, in steps,
# and report per step the server's RSS, the kernel's slab and the load generator's RSS per
# connection, the time to connect them and the handshake rate and latency, and that they are
# alive: 1 in 100 sends a message and gets its echo (docs/PERFORMANCE.md, "the most concurrent
# idle connections" and "A million").
#
# Steps: 250,000, 500,000 and 1,000,000 where below N, then N (`capacity.sh 1000000` runs
# 250k, 500k and 1M; `capacity.sh 25000` runs 25,000 only).
#
# Both sides go past the process descriptor limit (RLIMIT_NOFILE, 20,000 here) the same way:
# connections are direct descriptors in io_uring fixed file tables, one table per server worker
# and per load-generator thread, each holding up to the limit. scripts/capacity_plan.py sizes
# both from the step, and spreads the clients over enough source addresses (127.0.0.2, ...) to
# stay clear of the ~28,000 ephemeral ports of one address pair (12,500 connections per pair).
#
# Memory: before each step the script estimates what it needs (per connection: the figures the
# previous step measured, plus 15%; else defaults from docs/PERFORMANCE.md) and stops with a
# message, before starting, if MemAvailable minus a reserve (5% of RAM, at least 1 GiB) cannot
# hold it. While a step runs, a watchdog kills the step's server and load generator if
# MemAvailable falls below half that reserve, so the machine never reaches the OOM killer.
#
# Kernel settings: big runs raise fs.file-max (both ends' sockets are files) and
# net.ipv4.tcp_max_orphans (every connection closes at once at the end) where they are below
# what N needs, name each change, and restore the old values on exit. Small runs change nothing.
#
# Usage: scripts/capacity.sh [--wss] [--plan] N [RUNS=1] [RATE=5000] [HOLD_SECONDS=10]
#   (CAPACITY_STEPS=A,B,... in the environment replaces the steps, e.g. 5000,10000)
#   (CAPACITY_SERVER_ARGS="--recv-buffers 64" in the environment adds flags to every server start)
#   --wss   wss:// connections (a throwaway certificate, trusted with the load generator's --ca)
#   --plan  print the steps, their sizing and the memory check, then exit (nothing is built or
#           run; exit 3 if a step would not fit)
# Loopback only; every run is bounded (ramp at RATE/s, then HOLD_SECONDS, then close). Exits 1
# if a run did not hold all N connections or the sample did not echo, 3 if memory would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
wss=0
plan_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wss) wss=1; shift ;;
    --plan) plan_only=1; shift ;;
    *) break ;;
  esac
done
n=${1:-100000}
runs=${2:-1}
rate=${3:-5000}
hold=${4:-10}
planner=(python3 scripts/capacity_plan.py)
. scripts/kernel_limits.sh
wss_flag=()
[ "$wss" = 1 ] && wss_flag=(--wss)
# 1 in SAMPLE connections sends one message during the hold and must get its echo.
sample=100

# CAPACITY_STEPS=A,B,... replaces the ladder (to try the steps at small N).
steps=$("${planner[@]}" plan "$n" ${CAPACITY_STEPS:+--steps "$CAPACITY_STEPS"}) || exit 2
if [ "$plan_only" = 1 ]; then
  while read -r _ step tables sources; do
    echo "step $step: server --workers $tables, load generator --threads $tables, $sources source addresses"
    "${planner[@]}" check "$step" "$tables" "${wss_flag[@]}" || exit 3
  done <<<"$steps"
  limits_plan "$n"
  exit 0
fi

cargo build --release -q -p uringcast -p uringcast-loadgen
server=target/release/uringcast
load=target/release/uringcast-load
work=$(mktemp -d)
measured="$work/measured.json"

cleanup() {
  limits_restore capacity
  [ -n "${server_pid:-}" ] && kill -KILL "$server_pid" 2>/dev/null || true
  [ -n "${load_pid:-}" ] && kill -KILL "$load_pid" 2>/dev/null || true
  [ -n "${watchdog_pid:-}" ] && kill "$watchdog_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
limits_raise capacity "$n" || exit 2

scheme=ws
tls=()
ca=()
if [ "$wss" = 1 ]; then
  scheme=wss
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -addext keyUsage=digitalSignature -addext extendedKeyUsage=serverAuth \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
  ca=(--ca "$work/cert.pem")
fi

floor_kb=$("${planner[@]}" floor)
status=0
echo "capacity: $n $scheme connections in steps of $(cut -d' ' -f2 <<<"$steps" | paste -sd' '); RLIMIT_NOFILE $(ulimit -Hn); runs stop if MemAvailable < $((floor_kb / 1024)) MiB"
while read -r _ step tables sources <&3; do
  for run in $(seq 1 "$runs"); do
    "${planner[@]}" check "$step" "$tables" "${wss_flag[@]}" --measured "$measured" || exit 3
    first=$((2 + RANDOM % 40)) # fresh addresses per run: less TIME_WAIT left from the last
    source="127.0.0.$first-127.0.0.$((first + sources - 1))"
    echo "step $step, run $run: server --workers $tables, load generator --threads $tables, sources $source"
    out="$work/server.out"
    # shellcheck disable=SC2086 # CAPACITY_SERVER_ARGS is a list of flags
    "$server" --listen 127.0.0.1:0 --workers "$tables" --ping-interval 0 --handshake-timeout 60 \
      "${tls[@]}" ${CAPACITY_SERVER_ARGS:-} >"$out" 2>/dev/null &
    server_pid=$!
    for _ in $(seq 1 100); do grep -q '^listening on' "$out" && break; sleep 0.1; done
    port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
    json="$work/report.json"
    rm -f "$json" "$work/oom"
    "$load" connect "$scheme://127.0.0.1:$port/" --connections "$step" --rate "$rate" \
      --duration "$hold" --threads "$tables" --source "$source" --server-pid "$server_pid" \
      --handshake-timeout 60 \
      --echo-sample "$sample" "${ca[@]}" --quiet --json "$json" >/dev/null 2>&1 &
    load_pid=$!
    # The watchdog: bounded time, and memory never below the floor.
    deadline=$(($(date +%s) + step / rate + hold + 120))
    (
      while kill -0 "$load_pid" 2>/dev/null; do
        avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
        why=
        [ "$avail" -lt "$floor_kb" ] && why="MemAvailable fell to $((avail / 1024)) MiB"
        [ "$(date +%s)" -gt "$deadline" ] && why="the run outlived its bound of $((step / rate + hold + 120)) s"
        if [ -n "$why" ]; then
          echo "$why" >"$work/oom"
          kill -KILL "$load_pid" "$server_pid" 2>/dev/null
          break
        fi
        sleep 1
      done
    ) &
    watchdog_pid=$!
    set +e
    wait "$load_pid"
    rc=$?
    set -e
    load_pid=
    kill "$watchdog_pid" 2>/dev/null || true
    wait "$watchdog_pid" 2>/dev/null || true
    watchdog_pid=
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    if [ -e "$work/oom" ]; then
      echo "capacity: STOPPED step $step: $(cat "$work/oom"); its server and load generator were killed" >&2
      exit 3
    fi
    "${planner[@]}" record "$json" "$measured" || { status=1; echo "  (load generator exit $rc)"; }
  done
done 3<<<"$steps"
exit "$status"
