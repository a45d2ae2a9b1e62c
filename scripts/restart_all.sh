#!/usr/bin/env bash
# Back after a restart: hold N connections to one uringcast server, stop it with SIGTERM once
# all N are open, start it again on the same port, and report how the load generator's
# connections came back (`--reconnect`: exponential backoff with jitter, bounded in attempts
# and time): the time until all N were back, the peak handshake rate while they came back, the
# reconnects, how many gave up (must be 0), and the server's RSS with all N back
# (docs/PERFORMANCE.md, "A million connections", issue 27 point 4).
#
# Usage: scripts/restart_all.sh N [RATE=5000] [--history H] [--broker redis] [--plan]
#   RATE          handshakes per second of the first ramp (the reconnects go at their own pace)
#   --history H   N Server-Sent Events subscribers of one topic instead of idle WebSocket
#                 connections, the server started with --history H, and an outside publisher
#                 (its own process, HTTP POST /publish) publishing PUBLISH_RATE a second
#                 through the restart. The subscribers present their last position
#                 (Last-Event-ID) when they reconnect. Reported: owed, received, missing, and
#                 the resumes: recovered exactly, "not recovered" (told), silent losses.
#                 (WebSocket rooms have no resume in the server, SSE and Pusher do: so the
#                 history runs use SSE.)
#   --broker redis  two nodes behind one Redis (scripts/brokers.sh), both with --history (H,
#                 or 1000): the subscribers on node B, the publisher on node A; B is stopped,
#                 publications go on through A while B is down, B starts again, and the
#                 subscribers recover them from the topic's Redis stream.
#   --plan        print the sizing, the memory check and the kernel settings it would raise,
#                 then exit (nothing built or run; exit 3 if N would not fit)
# Environment:
#   OUT           where the reports go (target/restart_all)
#   RESTART_BIN   the directory of built uringcast and uringcast-load binaries; without it
#                 the script builds them (cargo build --release) and uses target/release
#   PUBLISH_RATE  publications per second in the history runs (20; a fraction such as 0.05
#                 is one every 20 s: at a million subscribers one publication keeps both
#                 cores busy for seconds, and 1/s leaves no CPU for the reconnects)
#   DOWN_PUBLISHES  publications made while the server is down before it starts again
#                 (history runs, 2 x PUBLISH_RATE, at least 2)
#   CAPACITY_TABLE_HEADROOM  descriptor-table slots kept free per worker (1000): 5000 sizes a
#                 million at 67 workers of 15,000, room for a reconnect storm
#
# Sizing as scripts/capacity.sh (scripts/capacity_plan.py): one server worker and one
# load-generator thread per 19,000 connections, one source address per 12,500. The memory
# check runs first and refuses (exit 3) a run that would not fit; fs.file-max and
# net.ipv4.tcp_max_orphans are raised for big runs, named, and restored on exit
# (scripts/kernel_limits.sh). Every wait has a bound and waits for a real signal: the load
# generator's progress line (one a second) saying how many are open, the publisher's count.
# Loopback only. Exit 0 if all N came back and none gave up, and with history no silent loss
# and no duplicate (and with --broker redis nothing missing. A lone node's history does not
# survive its restart, so there every resume is answered "not recovered", which is told, not
# a failure; what the restarted node published before a subscriber was back is replayed to
# it from the new epoch's start while --history still holds that start);
# 1 otherwise; 2 on a usage or start-up error; 3 if memory would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
plan_only=0
history=0
broker=
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --plan) plan_only=1; shift ;;
    --history) history=${2:?--history needs H}; shift 2 ;;
    --broker) broker=${2:?--broker needs redis}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "restart_all: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -ge 1 ] || { echo "restart_all: N missing (see --help)" >&2; exit 2; }
n=${args[0]}
rate=${args[1]:-5000}
case $broker in
  "" | redis) ;;
  *) echo "restart_all: --broker $broker: only redis is supported" >&2; exit 2 ;;
esac
[ -n "$broker" ] && [ "$history" = 0 ] && history=1000
publish_rate=${PUBLISH_RATE:-20}
[[ $publish_rate =~ ^[0-9]*\.?[0-9]+$ ]] \
  && awk -v r="$publish_rate" 'BEGIN { exit !(r + 0 > 0 && r + 0 <= 100000) }' \
  || { echo "restart_all: PUBLISH_RATE=$publish_rate: a number of publications per second above 0" >&2; exit 2; }
# The history runs wait for `window` publications at a time (two seconds' worth, at least 2),
# which take `window_secs` to make.
window=$(awk -v r="$publish_rate" 'BEGIN { w = int(2 * r); print (w < 2 ? 2 : w) }')
window_secs=$(awk -v r="$publish_rate" -v w="$window" 'BEGIN { printf "%d", w / r + 1 }')
down_publishes=${DOWN_PUBLISHES:-$window}
[[ $down_publishes =~ ^[1-9][0-9]*$ ]] \
  || { echo "restart_all: DOWN_PUBLISHES=$down_publishes: a whole number of publications above 0" >&2; exit 2; }
out=${OUT:-target/restart_all}
planner=(python3 scripts/capacity_plan.py)
. scripts/kernel_limits.sh
. scripts/ports.sh

read -r _ _ tables sources < <("${planner[@]}" plan "$n" --steps "$n") || exit 2
kind="idle WebSocket connections"
[ "$history" != 0 ] && kind="SSE subscribers (--history $history)"
[ -n "$broker" ] && kind="$kind on node B of two behind $broker"
echo "restart_all: $n $kind; server --workers $tables, load generator --threads $tables, $sources source addresses; ramp $rate/s"
"${planner[@]}" check "$n" "$tables" || exit 3
if [ "$plan_only" = 1 ]; then
  limits_plan "$n"
  exit 0
fi

if [ -n "${RESTART_BIN:-}" ]; then
  bin=$RESTART_BIN
else
  cargo build --release -q -p uringcast -p uringcast-loadgen
  bin=target/release
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.json "$out"/*.txt "$out"/*.progress "$out"/*.out "$out"/*.err

pids=()
brokers_dir=
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do
    # A load generator runs under `timeout`, which SIGKILL does not pass on: its child first.
    pkill -KILL -P "$pid" 2>/dev/null || true
    # wait gives the killed process's status (137): under set -e it would end the cleanup
    # at the first process killed and leave the others running.
    kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  [ -n "$brokers_dir" ] && scripts/brokers.sh stop "$brokers_dir" >/dev/null 2>&1
  limits_restore restart_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM
limits_raise restart_all "$n" || exit 2

# wait_line FILE REGEX SECONDS [FROM_LINE]: until a line after FROM_LINE matches (0), or the
# bound passes (1).
wait_line() {
  local file=$1 regex=$2 bound=$3 from=${4:-0} until
  until=$(($(date +%s) + bound))
  while [ "$(date +%s)" -le "$until" ]; do
    tail -n "+$((from + 1))" "$file" 2>/dev/null | grep -Eq -- "$regex" && return 0
    sleep 0.2
  done
  return 1
}
# wait_open FILE below|all N SECONDS FROM_LINE: until a progress line after FROM_LINE says
# fewer than N open (below), or N open (all); 1 when the bound passes first.
wait_open() {
  local file=$1 how=$2 want=$3 bound=$4 from=$5 until
  until=$(($(date +%s) + bound))
  while [ "$(date +%s)" -le "$until" ]; do
    tail -n "+$((from + 1))" "$file" 2>/dev/null | awk -v how="$how" -v want="$want" '
      { for (i = 1; i < NF; i++) if ($i == "open") {
          if ((how == "all" && $(i + 1) == want) || (how == "below" && $(i + 1) < want)) found = 1
      } }
      END { exit !found }' && return 0
    sleep 0.2
  done
  return 1
}
lines() { wc -l <"$1"; }
fail() { echo "restart_all: $*" >&2; exit 1; }

# start_node NAME ADDR [FLAGS...]: a server on ADDR with its output in $out/NAME.out; sets
# node_pid and node_addr once it listens.
# The ports come from free_server_port, below the ephemeral range: a restarted server takes
# its port again, and a port the kernel picked could meanwhile go to a client's connect().
server_addr() {
  local port
  port=$(free_server_port) || { echo "restart_all: no free port for a server" >&2; return 1; }
  echo "127.0.0.1:$port"
}
start_node() {
  local name=$1 addr=$2
  shift 2
  "$bin/uringcast" --listen "$addr" --ping-interval 0 --handshake-timeout 60 "$@" \
    >"$out/$name.out" 2>"$out/$name.err" &
  node_pid=$!
  pids+=("$node_pid")
  wait_line "$out/$name.out" '^listening on ' 10 || {
    cat "$out/$name.err" >&2
    echo "restart_all: $name did not start on $addr" >&2
    exit 2
  }
  node_addr=$(sed -n 's/^listening on //p' "$out/$name.out" | head -n 1)
}

# stop_node PID: SIGTERM, and wait until it has exited: its close handshakes take up to
# --drain-timeout (5 s) and closing N sockets some more, so the bound is 30 s + 1 s per 10,000.
stop_node() {
  local pid=$1 i limit=$((300 + n / 1000))
  kill -TERM "$pid"
  for ((i = 0; i < limit; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    echo "restart_all: the server did not exit within $((limit / 10)) s of SIGTERM; killed" >&2
  fi
  wait "$pid" 2>/dev/null || true
}

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

first=$((2 + RANDOM % 40)) # fresh addresses per run: less TIME_WAIT left from the last
source="127.0.0.$first-127.0.0.$((first + sources - 1))"
down_secs=$(awk -v r="$publish_rate" -v d="$down_publishes" 'BEGIN { printf "%d", d / r + 1 }')
bound=$((n / rate + 600 + 2 * window_secs + down_secs)) # the whole run, at most
reconnect=(--reconnect --reconnect-max 50 --reconnect-timeout 300)
# SIGINT ends the load generator's hold early with its report; a background job of a script
# would ignore it, so its default action is put back first.
# The hold ends by SIGINT long before --duration; the kill bound covers the ramp, the
# restart and the close after it.
interruptible=(env --default-signal=INT timeout --foreground -s KILL $((2 * bound)))

if [ "$history" = 0 ]; then
  listen=$(server_addr) || exit 2
  start_node server "$listen" --workers "$tables"
  server=$node_pid
  addr=$node_addr
  "${interruptible[@]}" "$bin/uringcast-load" connect "ws://$addr/" --connections "$n" \
    --rate "$rate" --duration "$bound" --threads "$tables" --source "$source" \
    --handshake-timeout 60 "${reconnect[@]}" --json "$out/restart.json" \
    >"$out/restart.txt" 2>"$out/restart.progress" &
  load=$!
  pids+=("$load")
  wait_open "$out/restart.progress" all "$n" $((n / rate + 120)) 0 \
    || fail "not all $n open within $((n / rate + 120)) s (see $out/restart.progress)"
  echo "restart_all: all $n open; SIGTERM to the server"
  mark=$(lines "$out/restart.progress")
  down_at=$(date +%s.%N)
  stop_node "$server"
  wait_open "$out/restart.progress" below "$n" 30 "$mark" \
    || fail "the load generator saw no connection lost within 30 s of the server's exit"
  mark=$(lines "$out/restart.progress")
  start_node server2 "$addr" --workers "$tables"
  server=$node_pid
  echo "restart_all: started again on $addr, $(awk -v a="$down_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s after the SIGTERM"
  wait_open "$out/restart.progress" all "$n" 330 "$mark" \
    || echo "restart_all: not all $n back within 330 s" >&2
  rss=$(rss_mib "$server")
  kill -INT "$load"
  wait "$load" || true
  stop_node "$server"
  cat "$out/restart.txt"
  python3 - "$out/restart.json" "$n" "$rss" <<'PY'
import json, sys
path, n, rss = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    d = json.load(open(path))
except (OSError, ValueError):
    print("restart_all: no report from the load generator")
    sys.exit(1)
r = d.get("reconnect") or {}
back = r.get("back_after_s")
peak = r.get("peak_reconnect_handshakes_per_s")
print(f"restart of {n:,}: lost {r.get('lost', 0):,}, reconnected {r.get('reconnected', 0):,} "
      f"({r.get('attempts', 0):,} attempts, {r.get('failed_attempts', 0):,} failed), "
      f"gave up {r.get('gave_up', 0)}")
print(f"  all back {back:.2f} s after the first loss" if back is not None else "  not all back")
print(f"  peak {peak:,} handshakes/s while reconnecting; server RSS {rss} MiB with all back")
ok = r.get("gave_up", 1) == 0 and r.get("reconnected", 0) >= n and r.get("lost", 0) >= n
sys.exit(0 if ok else 1)
PY
  exit $?
fi

# History: SSE subscribers on node B, an outside publisher (on node A behind Redis, else on B).
metric() { # ADDR NAME: the sum over workers of uringcast_NAME, empty if the node does not answer
  # A node too busy to answer in 2 s (a million reconnecting) is no error: under set -e and
  # pipefail, curl's failure would end the script without a word.
  { curl -s --max-time 2 "http://$1/metrics" 2>/dev/null || true; } \
    | awk -v m="uringcast_$2{" 'index($0, m) == 1 { s += $2; seen = 1 } END { if (seen) print s }'
}
# wait_metric ADDR NAME MIN SECONDS: until the node's NAME is at least MIN (0), else 1.
wait_metric() {
  local until value
  until=$(($(date +%s) + $4))
  while [ "$(date +%s)" -le "$until" ]; do
    value=$(metric "$1" "$2")
    [ -n "$value" ] && [ "$value" -ge "$3" ] && return 0
    sleep 0.2
  done
  return 1
}
token=restart-all-token
topic=restart
node_flags=(--mode broadcast --publish-token "$token" --history "$history")
if [ -n "$broker" ]; then
  command -v redis-server >/dev/null || {
    echo "SKIP restart_all --broker redis: redis-server missing (scripts/brokers.sh install)"
    exit 0
  }
  brokers_dir=$out/brokers
  scripts/brokers.sh start "$brokers_dir" >"$out/brokers.out" 2>"$out/brokers.err" \
    || { cat "$out/brokers.err" >&2; exit 2; }
  redis_url=$(sed -n 's/^REDIS_URL=//p' "$brokers_dir/env")
  [ -n "$redis_url" ] || { echo "SKIP restart_all --broker redis: no Redis started"; exit 0; }
  node_flags+=(--broker "$redis_url")
  listen=$(server_addr) || exit 2
  start_node node-a "$listen" --workers 1 "${node_flags[@]}"
  pub_addr=$node_addr
  a_pid=$node_pid
fi
listen=$(server_addr) || exit 2
start_node node-b "$listen" --workers "$tables" "${node_flags[@]}"
b_pid=$node_pid
b_addr=$node_addr
[ -n "$broker" ] || pub_addr=$b_addr
at=$(($(date +%s) + n / rate + 15))
"${interruptible[@]}" "$bin/uringcast-load" sse "http://$b_addr/$topic" --subscribers "$n" \
  --publishers 0 --threads "$tables" --source "$source" --connect-rate "$rate" \
  --handshake-timeout 60 --duration "$bound" --start-at "$at" "${reconnect[@]}" --quiet \
  --json "$out/subscribers.json" >"$out/subscribers.txt" 2>&1 &
subs=$!
pids+=("$subs")
"${interruptible[@]}" "$bin/uringcast-load" sse "http://$pub_addr/$topic" --subscribers 1 \
  --publishers 1 --publish-url "http://$pub_addr/publish/$topic" --publish-token "$token" \
  --rate "$publish_rate" --duration "$bound" --start-at "$at" --source 127.0.0.254 \
  "${reconnect[@]}" --quiet --json "$out/publisher.json" >"$out/publisher.txt" 2>&1 &
pub=$!
pids+=("$pub")
# Node B's own count of the streams it holds (its /metrics connection adds one).
wait_metric "$b_addr" connections "$n" $((n / rate + 60)) \
  || fail "node B does not hold $n streams within $((n / rate + 60)) s"
# Publishing has begun and reaches B's subscribers.
wait_metric "$b_addr" deliveries_total $((window * n)) $((at - $(date +%s) + window_secs + 60 + n / 10000)) \
  || fail "node B delivered fewer than $window publications to each subscriber"
pub_metric_addr=$pub_addr
published_before=$(metric "$pub_metric_addr" publishes_total)
echo "restart_all: all $n subscribers live, $published_before publications so far; SIGTERM to node B"
down_at=$(date +%s.%N)
stop_node "$b_pid"
if [ -n "$broker" ]; then
  # Publications made on node A while B is down, counted by A.
  wait_metric "$pub_metric_addr" publishes_total $((published_before + down_publishes)) \
    $((down_secs + 60)) \
    || fail "node A did not publish $down_publishes while B was down"
  echo "restart_all: $down_publishes publications made on node A while B was down"
fi
start_node node-b2 "$b_addr" --workers "$tables" "${node_flags[@]}"
b_pid=$node_pid
echo "restart_all: node B started again on $b_addr, $(awk -v a="$down_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s after the SIGTERM"
wait_metric "$b_addr" connections "$n" 330 || echo "restart_all: not all $n streams back on B within 330 s" >&2
rss=$(rss_mib "$b_pid")
# A few live publications after everyone is back, then the publisher stops.
# Behind a broker, the restarted B's count starts with what its subscribers recover (at
# least the publications made while it was down); the live ones come on top.
replayed=0
[ -n "$broker" ] && replayed=$down_publishes
wait_metric "$b_addr" deliveries_total $(((replayed + window) * n)) $((window_secs + 60 + n / 10000)) \
  || echo "restart_all: fewer than $window live publications reached B's subscribers after the restart" >&2
kill -INT "$pub"
wait "$pub" || true
sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sent"])' "$out/publisher.json") \
  || fail "no report from the publisher ($out/publisher.txt)"
# The subscribers stop once node B has nothing left to deliver: its count of deliveries
# unchanged for a second (or after 30 s).
last=-1
for _ in $(seq 1 30); do
  now=$(metric "$b_addr" deliveries_total)
  [ "$now" = "$last" ] && break
  last=$now
  sleep 1
done
kill -INT "$subs"
wait "$subs" || true
stop_node "$b_pid"
[ -n "$broker" ] && stop_node "$a_pid"
cat "$out/subscribers.txt"
python3 - "$out/subscribers.json" "$out/publisher.json" "$n" "$rss" "${broker:-none}" <<'PY'
import json, sys
subs_path, pub_path, n, rss, broker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    subs = json.load(open(subs_path))
    pub = json.load(open(pub_path))
except (OSError, ValueError) as e:
    print(f"restart_all: a report is missing: {e}")
    sys.exit(1)
sent = pub["sent"]
failed_publishes = pub.get("publish_errors", 0)
owed = sent * n
received = subs.get("received", 0)
r = subs.get("reconnect") or {}
s = subs.get("streams") or {}
back = r.get("back_after_s")
peak = r.get("peak_reconnect_handshakes_per_s")
print(f"restart of {n:,} subscribers: lost {r.get('lost', 0):,}, reconnected "
      f"{r.get('reconnected', 0):,}, gave up {r.get('gave_up', 0)}; "
      + (f"all back {back:.2f} s after the first loss" if back is not None else "not all back")
      + f"; peak {peak or 0:,} handshakes/s while reconnecting; node B RSS {rss} MiB")
print(f"owed {sent} x {n:,} = {owed:,}; received {received:,}; missing {max(owed - received, 0):,}"
      f" (the publisher's failed publishes, not owed: {failed_publishes})")
print(f"resumes {s.get('resumes', 0):,}: recovered exactly {s.get('recovered', 0):,}, "
      f"not recovered (told) {s.get('reset_on_resume', 0):,}, silent losses "
      f"{s.get('silent_losses', 0):,}; duplicates {s.get('repeated', 0):,}")
# (`repeated_on_resume` is the part of `repeated` that came on a resume.)
ok = (r.get("gave_up", 1) == 0 and s.get("silent_losses", 1) == 0 and s.get("repeated", 1) == 0
      and (received >= owed or broker == "none"))
sys.exit(0 if ok else 1)
PY
