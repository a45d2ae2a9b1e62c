#!/usr/bin/env bash
# uringcast beside the WebSocket servers people pick, in one command: Bun (uWebSockets), Node
# `ws` 8, fastwebsockets, tokio-tungstenite, Gorilla WebSocket, Django Channels and Socket.IO
# (scripts/peers/README.md says how each is set up; one that cannot be installed prints SKIP),
# and the write() floors (loadgen/examples/floor_server.rs for broadcast, echo_floor.rs for
# echo). Everything is driven
# by uringcast-load; each server runs pinned to core 0, the load generator to core 1.
#
#   scripts/bench.sh [--quick] [--reps N] [--only S1,S2] [--servers A,B] [--out DIR] [--page FILE]
#
# Scenarios (--only picks some): idle, broadcast, inflight, sweep, echo, handshakes, wss,
# deflate, pusher (uringcast --mode pusher beside Sockudo: fan-out CPU per delivery,
# deliveries per second, idle memory per subscribed connection, presence churn per
# CPU-second; the servers uringcast and sockudo of --servers take part), sse (uringcast only,
# --history 300: the broadcast load to Server-Sent Events streams beside the same load to
# WebSocket subscribers, both published over HTTP). Each repetition runs every scenario, and within a scenario every server, in an
# order rotated from one repetition to the next (interleaved runs: the machine's noise falls
# on all alike). The report takes medians over the repetitions and per-repetition ratios.
# --quick runs every scenario once at small scale (a few minutes). The run's files (every
# report's JSON, the commands, the servers' logs) go to --out (target/bench/<time>);
# docs/BENCHMARKS.md and the plots in docs/bench/ are written from them by
# scripts/bench_report.py (--page elsewhere writes the page there and its plots beside it).
#
# Builds uringcast, its load generator and floor server, and scripts/peers; installs Bun, Node ws
# and Socket.IO from npm, Django Channels from PyPI and Gorilla from Debian's packages into
# target/peers (scripts/peers/install.sh); builds Sockudo once from crates.io (not with
# --quick: then SKIP unless built before). Loopback only; every process
# is bounded by `timeout`, and every server started is stopped on exit.
set -eEuo pipefail
# Every early exit says why: a failing command that stops the script names itself and its line
# (-E carries the trap into functions; subshells leave the message to their parent).
trap 'rc=$?; [ "$BASH_SUBSHELL" = 0 ] && echo "bench.sh: stopped at line $LINENO: \`$BASH_COMMAND\` exited with $rc" >&2' ERR
cd "$(dirname "$0")/.."
root=$PWD

quick=0 reps="" only="idle,broadcast,inflight,sweep,echo,handshakes,wss,deflate,pusher,sse"
servers="uringcast,bun,node,fastwebsockets,tungstenite,gorilla,channels,socketio,sockudo" out="" page=docs/BENCHMARKS.md
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --reps) reps=$2; shift ;;
    --only) only=$2; shift ;;
    --servers) servers=$2; shift ;;
    --out) out=$2; shift ;;
    --page) page=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  reps=${reps:-1}
  idle_n=2000 subs=2000 sweep_ns="500 1000 2000" secs=3 sweep_secs=2 echo_secs=3 hs_n=2000
  pusher_rate=50 pusher_churn=50
else
  reps=${reps:-3}
  idle_n=19000 subs=10000 sweep_ns="1000 5000 10000 19000" secs=8 sweep_secs=5 echo_secs=8 hs_n=10000
  pusher_rate=200 pusher_churn=200
fi
case $reps in ''|*[!0-9]*|0) echo "bench.sh: --reps takes a positive number" >&2; exit 2 ;; esac
out=${out:-target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/runs" "$out/bin" "$out/logs"
out=$(cd "$out" && pwd)

# --- build and install --------------------------------------------------------------------
echo "building uringcast, uringcast-load and floor_server (release)..." >&2
timeout 1800 cargo build --release -q --workspace --bins --examples
# Run copies: a rebuild during the run cannot swap a binary under it.
cp target/release/uringcast target/release/uringcast-load target/release/examples/floor_server \
  target/release/examples/echo_floor "$out/bin/"
# A peer that cannot be built or installed is left out of the run, and says so.
skip() { # name what
  echo "SKIP bench $1: $2 missing" >&2
  servers=$(tr ',' '\n' <<<"$servers" | grep -vx "$1" | paste -sd, -)
}
if [[ ,$servers, == *,fastwebsockets,* || ,$servers, == *,tungstenite,* ]]; then
  echo "building scripts/peers (release)..." >&2
  if (cd scripts/peers && timeout 1800 cargo build --release -q --bin fastwebsockets-echo --bin tungstenite-echo); then
    cp scripts/peers/target/release/fastwebsockets-echo scripts/peers/target/release/tungstenite-echo "$out/bin/"
  else
    skip fastwebsockets "scripts/peers build"; skip tungstenite "scripts/peers build"
  fi
fi
# shellcheck source=peers/install.sh
. scripts/peers/install.sh
# shellcheck source=ports.sh
. scripts/ports.sh
if [[ ,$servers, == *,bun,* ]]; then peer_install bun || true; [ -x "$bun" ] || skip bun "bun (npm install)"; fi
if [[ ,$servers, == *,node,* ]]; then
  peer_install node || true
  command -v node >/dev/null && [ -d "$node_path/ws" ] || skip node "node or its ws (npm install)"
fi
if [[ ,$servers, == *,socketio,* ]]; then
  peer_install socketio || true
  command -v node >/dev/null && [ -d "$socketio_path/socket.io" ] || skip socketio "node or socket.io (npm install)"
fi
if [[ ,$servers, == *,gorilla,* ]]; then
  peer_install_gorilla || true
  [ -x "$gorilla_bin" ] || skip gorilla "Go or Gorilla WebSocket (apt-get install golang-go golang-github-gorilla-websocket-dev)"
fi
if [[ ,$servers, == *,channels,* ]]; then
  peer_install_channels || true
  [ -x "$channels_venv/bin/daphne" ] || skip channels "Django Channels or Daphne (pip install in a venv)"
fi
if [[ ,$servers, == *,sockudo,* ]]; then
  # Built once and cached under target/ (a large build); --quick (CI) never builds it: SKIP
  # unless a full run built it before. Without the pusher scenarios it has nothing to run.
  if ! [[ ,$only, == *,pusher,* ]]; then
    servers=$(tr ',' '\n' <<<"$servers" | grep -vx sockudo | paste -sd, -)
  elif [ "$quick" = 1 ]; then
    peer_install_sockudo cached || skip sockudo "a cached Sockudo build (--quick does not build it; a full run does, into $sockudo_bin)"
  else
    peer_install_sockudo || true
    [ -x "$sockudo_bin" ] || skip sockudo "Sockudo $sockudo_version (cargo install; see target/peers/sockudo/build.log)"
  fi
fi
IFS=, read -r -a server_list <<<"$servers"
if [ ${#server_list[@]} = 0 ]; then
  echo "bench.sh: no server left to run (each was skipped above)" >&2
  exit 1
fi
bin=$out/bin load=$out/bin/uringcast-load
bun_bin=$root/$bun node_modules_dir=$root/$node_path socketio_modules_dir=$root/$socketio_path
gorilla_server=$root/$gorilla_bin daphne=$root/$channels_venv/bin/daphne
sockudo_server=$root/$sockudo_bin
# The Pusher scenarios' app (both servers get the same).
pusher_app=(--app-id 1 --app-key bench-key --app-secret bench-secret)

certs=$out/certs; mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
  -keyout "$certs/key.pem" -out "$certs/cert.pem" 2>/dev/null

# --- what this run is ---------------------------------------------------------------------
{
  echo "started $(date -u -Is)"
  echo "quick $quick"
  echo "reps $reps"
  echo "scale idle=$idle_n subscribers=$subs sweep=${sweep_ns// /,} secs=$secs sweep_secs=$sweep_secs echo_secs=$echo_secs handshakes=$hs_n"
  echo "uringcast $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src loadgen Cargo.toml || echo '+changes')"
  echo "kernel $(uname -r)"
  echo "cpu $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cpus"
  echo "loadavg_start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rustc $(rustc --version | cut -d' ' -f2)"
  if [ -x "$bun_bin" ]; then echo "bun $("$bun_bin" --version)"; fi
  if command -v node >/dev/null; then echo "node $(node --version)"; fi
  if [ -d "$node_modules_dir/ws" ]; then
    echo "ws $(node -p "require('$node_modules_dir/ws/package.json').version")"
  fi
  if [ -d "$socketio_modules_dir/socket.io" ]; then
    echo "socketio $(node -p "require('$socketio_modules_dir/socket.io/package.json').version")"
  fi
  if [ -x "$gorilla_server" ]; then
    echo "gorilla $(dpkg-query -W -f='${Version}' golang-github-gorilla-websocket-dev 2>/dev/null) (go $(go env GOVERSION 2>/dev/null))"
  fi
  if [[ ,$servers, == *,sockudo,* ]]; then echo "sockudo $sockudo_version"; fi
  if [ -x "$daphne" ]; then
    echo "channels $("$root/$channels_venv/bin/python" -c 'import channels, daphne, django; print(channels.__version__, "daphne", daphne.__version__, "django", django.__version__)')"
  fi
  # The Rust peers' crate versions, when they take part (then their dependencies were fetched
  # to build them; on a fresh clone without them `cargo tree --offline` has nothing to read).
  if [[ ,$servers, == *,fastwebsockets,* || ,$servers, == *,tungstenite,* ]]; then
    if tree=$(cd scripts/peers && cargo tree -e normal --depth 1 --offline 2>"$out/logs/cargo-tree.txt"); then
      sed -n 's/^[├└]── \(tokio\|tokio-tungstenite\|fastwebsockets\|hyper\) v\([^ ]*\).*/crate \1 \2/p' <<<"$tree"
    else
      echo "bench.sh: note: cargo tree in scripts/peers failed (see $out/logs/cargo-tree.txt): run.txt lists no peer crate versions" >&2
    fi
  fi
} >"$out/run.txt"
lscpu >"$out/lscpu.txt"

# --- servers ------------------------------------------------------------------------------
# Servers listen below the ephemeral range (ip_local_port_range), where no client's connect()
# takes a port: a publisher's connections from 127.0.0.1, still open or in TIME_WAIT, held
# ports that a later scenario drew, and its server failed with "Address already in use".
port_lo=$(server_port_floor) port_hi=$(server_port_ceiling)
port=$((port_lo + RANDOM % (port_hi - port_lo))) pid="" src=""
next_port() { # the next port no socket holds, in any state
  port=$((port + 1)); [ "$port" -lt "$port_hi" ] || port=$port_lo
  while [ -n "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; do
    port=$((port + 1)); [ "$port" -lt "$port_hi" ] || port=$port_lo
  done
  src="127.0.0.$((10 + port % 200))"
}
wait_listen() { # port pid
  for _ in $(seq 1 200); do
    ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

# server_cmd NAME MODE VARIANT: the command line, pinned to core 0 (MODE broadcast|echo;
# VARIANT plain|wss|deflate). Printed into commands.txt as well.
server_cmd() {
  local name=$1 mode=$2 variant=$3 env=() flags=()
  case $name in
    uringcast)
      [ "$variant" = wss ] && flags=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")
      [ "$variant" = deflate ] && flags=(--deflate)
      [ "$variant" = history ] && flags=(--history 300 --publish-token T)
      echo "$bin/uringcast --listen 127.0.0.1:$port --mode $mode --workers 1 --ping-interval 0 ${flags[*]}" ;;
    bun|node)
      env=(PORT="$port" MODE="$mode")
      [ "$variant" = wss ] && env+=(CERT="$certs/cert.pem" KEY="$certs/key.pem")
      [ "$variant" = deflate ] && env+=(DEFLATE=1)
      if [ "$name" = bun ]; then
        echo "env ${env[*]} $bun_bin $root/scripts/peers/bun/server.js"
      else
        echo "env ${env[*]} NODE_PATH=$node_modules_dir node $root/scripts/peers/node/server.js"
      fi ;;
    fastwebsockets|tungstenite)
      [ "$variant" = wss ] && flags=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")
      echo "$bin/$name-echo --listen 127.0.0.1:$port --threads 1 --mode $mode ${flags[*]}" ;;
    gorilla) echo "env GOMAXPROCS=1 $gorilla_server -addr 127.0.0.1:$port -mode $mode" ;;
    channels)
      echo "env MODE=$mode PYTHONPATH=$root/scripts/peers/channels $daphne -b 127.0.0.1 -p $port -v 0 --ping-interval 86400 server:application" ;;
    socketio)
      # No pings in a run (as for the others): one a day.
      echo "env PORT=$port MODE=$mode PING_INTERVAL_MS=86400000 NODE_PATH=$socketio_modules_dir node $root/scripts/peers/socketio/server.js" ;;
    uringcast-pusher)
      echo "env URINGCAST_APP_SECRET=bench-secret $bin/uringcast --listen 127.0.0.1:$port --mode pusher --workers 1 --ping-interval 0 --app-id 1 --app-key bench-key" ;;
    sockudo)
      # Configured by environment, as its documentation shows; its rate limiter off (by
      # default an address may open 20 WebSocket connections a minute), and its default app's
      # caps raised to its documentation's "performance tuning" values (by default 100
      # connections and 100 backend events a second per app); single node: local adapter,
      # memory cache and queue, no metrics listener.
      echo "env SOCKUDO_DEFAULT_APP_ID=1 SOCKUDO_DEFAULT_APP_KEY=bench-key SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000 SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=10000 HOST=127.0.0.1 PORT=$port RATE_LIMITER_ENABLED=false ADAPTER_DRIVER=local CACHE_DRIVER=memory QUEUE_DRIVER=memory METRICS_ENABLED=false SOCKUDO_ENABLE_CLIENT_MESSAGES=true $sockudo_server" ;;
    floor) return 1 ;;
  esac
}
# Which servers take part in a variant: compression only where the library has it
# (tungstenite 0.30 and fastwebsockets 0.10 have no permessage-deflate); the peers added last
# (Gorilla, Channels, Socket.IO) run the plain variant only, their TLS and compression not set up.
serves() { # name variant
  case $2 in
    plain) return 0 ;;
    wss) [[ $1 != gorilla && $1 != channels && $1 != socketio ]] ;;
    deflate) [[ $1 == uringcast || $1 == bun || $1 == node ]] ;;
  esac
}
# socketio_args ARGS...: a scenario's arguments for the Socket.IO peer, printed one per line:
# its URLs (/socket.io/?EIO=4&transport=websocket with the topic in the query, publish=1 for the
# publish-only path) and --protocol socketio; its payload is text (a JSON string), so --binary
# goes and a --size below the text stamp's 48 bytes becomes 48.
socketio_args() {
  local a prev="" base="ws://127.0.0.1:$port"
  for a in "$@"; do
    case $a in
      "$base"/publish/*) a="$base/socket.io/?EIO=4&transport=websocket&topic=${a#"$base"/publish/}&publish=1" ;;
      "$base"/*) a="$base/socket.io/?EIO=4&transport=websocket&topic=${a#"$base"/}" ;;
      --binary) prev=$a; continue ;;
    esac
    if [ "$prev" = --size ] && [ "$a" -lt 48 ]; then a=48; fi
    printf '%s\n' "$a"
    prev=$a
  done
  printf '%s\n' --protocol socketio
}
start_server() { # name mode variant log
  local cmd; cmd=$(server_cmd "$1" "$2" "$3")
  echo "rep $rep server $1: taskset -c 0 $cmd" >>"$commands"
  # shellcheck disable=SC2086
  taskset -c 0 $cmd >"$4" 2>&1 &
  pid=$!
  if ! wait_listen "$port" "$pid"; then
    echo "$1 did not start listening on $port:" >&2; tail -5 "$4" >&2
    stop_server; return 1
  fi
}
stop_server() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=""; }

# url VARIANT PATH: where the load generator connects; tls_flags VARIANT: what it adds.
url() { if [ "$1" = wss ]; then echo "wss://localhost:$port$2"; else echo "ws://127.0.0.1:$port$2"; fi; }
tls_flags() { [ "$1" = wss ] && echo "--ca $certs/cert.pem" || true; }

# load SCENARIO NAME REP ARGS...: one load-generator run, its JSON in runs/SCENARIO/NAME-REP.json
# and one line in index.tsv (scenario name rep status).
load() {
  local scenario=$1 name=$2 rep=$3; shift 3
  local dir=$out/runs/$scenario; mkdir -p "$dir"
  local json=$dir/$name-$rep.json status=ok rc=0
  echo "rep $rep load $scenario $name: taskset -c 1 uringcast-load $* --threads 1 --quiet --json $json" >>"$commands"
  timeout 300 taskset -c 1 "$load" "$@" --threads 1 --quiet --json "$json" >"$dir/$name-$rep.txt" 2>&1 || rc=$?
  # A report is kept whatever the exit status (a loss or a server that closes without a close
  # frame, as the floor does, exits non-zero): the report script reads what went wrong from it.
  [ -s "$json" ] || status="failed (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$scenario" "$name" "$rep" "$status" >>"$out/index.tsv"
  printf '  %-18s %-15s rep %s %s\n' "$scenario" "$name" "$rep" "$status" >&2
}
# one SCENARIO NAME REP MODE VARIANT ARGS...: start NAME on $port (the caller moved to a new
# port with next_port and built ARGS with it), run the load against it, stop it.
one() {
  local scenario=$1 name=$2 rep=$3 mode=$4 variant=$5; shift 5
  if ! start_server "$name" "$mode" "$variant" "$out/logs/$scenario-$name-$rep.log"; then
    printf '%s\t%s\t%s\t%s\n' "$scenario" "$name" "$rep" "start-failed" >>"$out/index.tsv"
    return
  fi
  if [ "$name" = socketio ]; then
    local args; mapfile -t args < <(socketio_args "$@")
    set -- "${args[@]}"
  fi
  load "$scenario" "$name" "$rep" "$@" --source "$src" --server-pid "$pid"
  stop_server
}

# --- scenarios ----------------------------------------------------------------------------
# Each takes the repetition number and runs every server once, in rotated order.
rotated() { # rep [pusher]: the WebSocket servers (or with pusher the Pusher servers: uringcast
  # and sockudo) of --servers, starting at (rep - 1) mod n
  local list=() name n k
  for name in "${server_list[@]}"; do
    if [ "${2:-}" = pusher ]; then
      [[ $name == uringcast || $name == sockudo ]] && list+=("$name")
    else
      [[ $name == sockudo ]] || list+=("$name")
    fi
  done
  n=${#list[@]}
  for k in $(seq 0 $((n - 1))); do echo "${list[$(((k + $1 - 1) % n))]}"; done
}

idle() { # rep [variant]
  local variant=${2:-plain} extra=() name
  [ "$variant" = deflate ] && extra=(--deflate)
  for name in $(rotated "$1"); do
    serves "$name" "$variant" || continue
    next_port
    # shellcheck disable=SC2046
    one "idle-$variant" "$name" "$1" broadcast "$variant" connect "$(url "$variant" /idle)" $(tls_flags "$variant") \
      "${extra[@]}" --connections "$idle_n" --rate 5000 --duration 2
  done
}

# fanout SCENARIO REP N SECS VARIANT: N subscribers, 10 publishes/s of 64 B (a 2 KiB JSON
# tick with deflate), one publisher on the publish-only path; and the floor on plain runs.
fanout() {
  local scenario=$1 rep=$2 n=$3 secs=$4 variant=$5 name extra=(--size 64)
  [ "$variant" = deflate ] && extra=(--deflate --payload json --size 2048)
  for name in $(rotated "$rep") floor; do
    if [ "$name" = floor ]; then
      [ "$variant" = plain ] || continue
      floor "$scenario" "$rep" "$n" "$secs"; continue
    fi
    serves "$name" "$variant" || continue
    next_port
    # shellcheck disable=SC2046
    one "$scenario" "$name" "$rep" broadcast "$variant" broadcast "$(url "$variant" /topic)" $(tls_flags "$variant") \
      --publisher-url "$(url "$variant" /publish/topic)" "${extra[@]}" --subscribers "$n" \
      --publishers 1 --rate 10 --duration "$secs" --connect-rate 5000
  done
}
# The write() floor: one pre-encoded frame write()n to each socket; it measures its own CPU
# over its sending period (the load generator's window would not match it).
floor() { # scenario rep n secs
  next_port
  local log=$out/runs/$1/floor-$2.floor.txt; mkdir -p "$out/runs/$1"
  local cmd=("$bin/floor_server" --listen "127.0.0.1:$port" --connections "$3" --rate 10 --size 64
             --start-delay 1 --max-seconds "$(($4 + $3 / 5000 + 4))")
  echo "rep $rep server floor: taskset -c 0 ${cmd[*]}" >>"$commands"
  # Bounded twice: the floor ends itself past --max-seconds, and `timeout` ends it if not.
  timeout $(($4 + $3 / 5000 + 20)) taskset -c 0 "${cmd[@]}" >"$log" 2>&1 &
  pid=$!
  wait_listen "$port" "$pid" || { echo "floor did not start" >&2; stop_server; return; }
  load "$1" floor "$2" broadcast "ws://127.0.0.1:$port/" --subscribers "$3" --publishers 0 \
    --duration "$4" --connect-rate 5000 --source "$src"
  wait "$pid" 2>/dev/null || true; pid=""
}

inflight() { # rep
  local p name
  for p in 1 8; do
    for name in $(rotated "$1"); do
      next_port
      one "inflight-$p" "$name" "$1" broadcast plain broadcast "$(url plain /topic)" \
        --publisher-url "$(url plain /publish/topic)" --subscribers "$subs" --publishers "$p" \
        --inflight "$p" --size 64 --duration "$secs" --connect-rate 5000
    done
  done
}

echo_cpu() { # rep
  local name args=(--connections 100 --size 32 --binary --inflight 1 --duration "$echo_secs")
  for name in $(rotated "$1"); do
    next_port
    one echo "$name" "$1" echo plain echo "$(url plain /echo)" "${args[@]}"
  done
  # The echo floor (loadgen/examples/echo_floor.rs): read, unmask, write back; nothing else.
  next_port
  local cmd=("$bin/echo_floor" --listen "127.0.0.1:$port" --max-seconds "$((echo_secs + 60))")
  echo "rep $rep server floor: taskset -c 0 ${cmd[*]}" >>"$commands"
  taskset -c 0 "${cmd[@]}" >"$out/logs/echo-floor-$1.log" 2>&1 &
  pid=$!
  wait_listen "$port" "$pid" || { echo "echo_floor did not start" >&2; stop_server; return; }
  load echo floor "$1" echo "$(url plain /echo)" "${args[@]}" --source "$src" --server-pid "$pid"
  wait "$pid" 2>/dev/null || true; pid=""
}

handshakes() { # rep
  local name
  for name in $(rotated "$1"); do
    next_port
    one handshakes "$name" "$1" broadcast plain connect "$(url plain /hs)" --connections "$hs_n" \
      --rate 20000 --duration 0.5
  done
}

# The Pusher scenarios: uringcast --mode pusher (runs named uringcast) beside Sockudo, driven
# by `uringcast-load pusher` through each server's signed HTTP API: CPU per delivery of one
# event to N subscribers of one public channel (10/s), deliveries per second (the same channel
# at $pusher_rate triggers/s from 4 HTTP publishers), and idle memory per subscribed
# connection (nobody publishes), and presence churn per server CPU-second (members joining
# and leaving a presence channel of 50, --churn).
pusher_one() { # scenario name rep args...
  local scenario=$1 name=$2 rep=$3 server=$2; shift 3
  [ "$name" = uringcast ] && server=uringcast-pusher
  if ! start_server "$server" broadcast plain "$out/logs/$scenario-$name-$rep.log"; then
    printf '%s\t%s\t%s\t%s\n' "$scenario" "$name" "$rep" "start-failed" >>"$out/index.tsv"
    return
  fi
  load "$scenario" "$name" "$rep" pusher "ws://127.0.0.1:$port" "${pusher_app[@]}" "$@" \
    --source "$src" --server-pid "$pid" --connect-rate 5000
  stop_server
}
pusher_scenarios() { # rep
  local name
  for name in $(rotated "$1" pusher); do
    next_port
    pusher_one "pusher-fanout-$subs" "$name" "$1" --subscribers "$subs" --publishers 1 --rate 10 \
      --size 64 --duration "$secs"
  done
  for name in $(rotated "$1" pusher); do
    next_port
    pusher_one "pusher-rate-$subs" "$name" "$1" --subscribers "$subs" --publishers 4 \
      --rate "$pusher_rate" --size 64 --duration "$secs"
  done
  for name in $(rotated "$1" pusher); do
    next_port
    pusher_one pusher-idle "$name" "$1" --subscribers "$idle_n" --publishers 0 --duration 2
  done
  # Presence churn: 50 members on one presence channel (below both servers' default cap of
  # 100), nobody publishing, members joining and leaving at $pusher_churn/s.
  for name in $(rotated "$1" pusher); do
    next_port
    pusher_one pusher-churn "$name" "$1" --presence --subscribers 50 --publishers 0 \
      --churn "$pusher_churn" --duration "$secs"
  done
}

# Server-Sent Events beside WebSocket, on uringcast alone (the peers have no SSE): the same
# broadcast load, $subs subscribers at 10 publishes/s of 64 B published over HTTP, with
# --history 300, to WebSocket subscribers (runs named ws) and to SSE streams (named sse, each
# event's id checked for order, gaps and duplicates); the two in an order rotated by repetition.
sse_vs_ws() { # rep
  local name order=(ws sse)
  [[ ,$servers, == *,uringcast,* ]] || return 0
  [ $(($1 % 2)) = 0 ] && order=(sse ws)
  for name in "${order[@]}"; do
    next_port
    if ! start_server uringcast broadcast history "$out/logs/sse-$subs-$name-$1.log"; then
      printf '%s\t%s\t%s\t%s\n' "sse-$subs" "$name" "$1" "start-failed" >>"$out/index.tsv"
      continue
    fi
    local args=(--publish-url "http://127.0.0.1:$port/publish/topic" --publish-token T
                --subscribers "$subs" --publishers 1 --rate 10 --size 64 --duration "$secs"
                --connect-rate 5000 --source "$src" --server-pid "$pid")
    if [ "$name" = sse ]; then
      load "sse-$subs" sse "$1" sse "http://127.0.0.1:$port/topic" "${args[@]}"
    else
      load "sse-$subs" ws "$1" broadcast "$(url plain /topic)" "${args[@]}"
    fi
    stop_server
  done
}

# --- the run ------------------------------------------------------------------------------
commands=$out/commands.txt; : >"$commands"; : >"$out/index.tsv"
has() { [[ ",$only," == *",$1,"* ]]; }
started=$(date +%s)
for rep in $(seq 1 "$reps"); do
  echo "repetition $rep of $reps" >&2
  if has idle; then idle "$rep"; fi
  if has broadcast; then fanout "broadcast-$subs" "$rep" "$subs" "$secs" plain; fi
  if has inflight; then inflight "$rep"; fi
  if has sweep; then
    for n in $sweep_ns; do
      # The main broadcast scenario is the sweep's point at its subscriber count.
      [ "$n" = "$subs" ] && has broadcast && continue
      fanout "broadcast-$n" "$rep" "$n" "$sweep_secs" plain
    done
  fi
  if has echo; then echo_cpu "$rep"; fi
  if has handshakes; then handshakes "$rep"; fi
  if has wss; then idle "$rep" wss; fanout "broadcast-wss" "$rep" "$subs" "$secs" wss; fi
  if has deflate; then idle "$rep" deflate; fanout "broadcast-deflate" "$rep" "$subs" "$secs" deflate; fi
  if has pusher; then pusher_scenarios "$rep"; fi
  if has sse; then sse_vs_ws "$rep"; fi
done
{
  echo "loadavg_end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "seconds $(($(date +%s) - started))"
} >>"$out/run.txt"
echo "runs done in $(($(date +%s) - started)) s; results in $out" >&2

python3 scripts/bench_report.py "$out" --page "$page" --load "$load"
# A run that left no report is an error of the benchmark itself (a loss is a result, and the
# page shows it).
if grep -v $'\tok$' "$out/index.tsv" >&2; then
  echo "bench.sh: the runs above left no report (see $out/runs and $out/logs)" >&2
  exit 1
fi
