#!/usr/bin/env bash
# A whole scale-out deployment on one machine, driven through its load balancer:
#
#   uringcast-load --(8 source addresses)--> nginx 127.0.0.1:LB --(hash $remote_addr)--> node 1..3
#                                                                                       \  |  /
#                                                                          broker (Redis, Redis Cluster or NATS)
#
# nginx proxies the WebSocket upgrade and keeps each client address on one node; the nodes
# share topics through the broker. The load generator's publishers and subscribers come from
# different addresses, so they land on different nodes: every delivery it checks (none
# missing, none twice, in order) crossed the broker unless publisher and subscriber share a
# node. The run fails unless the load generator reports a clean run, at least two nodes held
# subscribers, and messages crossed the broker.
#
# Usage: scripts/cluster-demo.sh [--no-build] [redis|cluster|nats|all]   (default: all)
# Installs nginx, redis-server and nats-server from Debian's packages when missing (root or
# passwordless sudo); prints `SKIP cluster-demo: <what> missing` and exits 0 when it cannot.
# Everything listens on 127.0.0.1 ports chosen free; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=1
WHICH=all
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        redis|cluster|nats|all) WHICH=$arg ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "cluster-demo: unknown argument $arg" >&2; exit 2 ;;
    esac
done

NODES=3
SUBSCRIBERS=${DEMO_SUBSCRIBERS:-600}
PUBLISHERS=${DEMO_PUBLISHERS:-4}
RATE=${DEMO_RATE:-400}
SECONDS_OF_TRAFFIC=${DEMO_SECONDS:-5}
TOKEN=demo-token

log() { printf '[cluster-demo] %s\n' "$*" >&2; }
skip() { printf 'SKIP cluster-demo: %s\n' "$*"; exit 0; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1
    fi
}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ]; then
    command -v apt-get >/dev/null || skip "nginx missing (no apt-get)"
    as_root true || skip "nginx missing (installing needs root or passwordless sudo)"
    log "apt-get install nginx-light (log: /tmp/uringcast-nginx-install.log)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
        -o DPkg::Lock::Timeout=120 install nginx-light >/tmp/uringcast-nginx-install.log 2>&1 \
        || as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
            -o DPkg::Lock::Timeout=120 install nginx >>/tmp/uringcast-nginx-install.log 2>&1 \
        || skip "nginx missing (apt-get install failed, see /tmp/uringcast-nginx-install.log)"
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    [ -x "$NGINX" ] || skip "nginx missing"
fi
scripts/brokers.sh install >&2

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (uringcast, uringcast-load)"
    cargo build --release --quiet -p uringcast -p uringcast-loadgen
fi
SERVER=target/release/uringcast
LOAD=target/release/uringcast-load
for bin in "$SERVER" "$LOAD"; do
    [ -x "$bin" ] || { echo "cluster-demo: $bin missing (run without --no-build)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/uringcast-cluster-demo.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    scripts/brokers.sh stop "$WORK/brokers" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

log "starting brokers under $WORK/brokers"
scripts/brokers.sh start "$WORK/brokers" >"$WORK/brokers.env"
grep '^SKIP' "$WORK/brokers.env" || true
# shellcheck disable=SC1091
. <(grep -v '^SKIP' "$WORK/brokers.env")

case "$WHICH" in
    all) KINDS=(redis cluster nats) ;;
    *) KINDS=("$WHICH") ;;
esac

metric() { # node-port name: the sum of a metric's samples on a node
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" { s += $2 } END { print s+0 }'
}

run_one() { # kind url
    local kind=$1 url=$2 i port ports=() lb out rc
    log "== $kind: $url"
    for i in $(seq 1 $NODES); do
        port=$(free_port)
        # The load generator's publishers are members of the room they publish to: allowed
        # explicitly, since a publish token alone makes subscribers read-only.
        "$SERVER" --listen "127.0.0.1:$port" --mode broadcast --workers 1 \
            --publish-token "$TOKEN" --client-publish all \
            --broker "$url" >"$WORK/node-$kind-$i.out" 2>"$WORK/node-$kind-$i.log" &
        PIDS+=($!)
        for _ in $(seq 1 100); do
            grep -q '^listening on' "$WORK/node-$kind-$i.out" 2>/dev/null && break
            sleep 0.05
        done
        grep -q '^listening on' "$WORK/node-$kind-$i.out" || { cat "$WORK/node-$kind-$i.log" >&2; exit 1; }
        ports+=("$port")
    done
    lb=$(free_port)
    {
        echo "worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx-error.log warn;"
        echo "events { worker_connections 4096; }"
        echo "http {"
        echo "  access_log off;"
        echo "  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }"
        echo "  upstream uringcast { hash \$remote_addr consistent;"
        for port in "${ports[@]}"; do echo "    server 127.0.0.1:$port;"; done
        echo "  }"
        echo "  server { listen 127.0.0.1:$lb;"
        echo "    location / { proxy_pass http://uringcast; proxy_http_version 1.1;"
        echo "      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade;"
        echo "      proxy_set_header Host \$host; proxy_read_timeout 1h; proxy_buffering off; }"
        echo "  }"
        echo "}"
    } >"$WORK/nginx.conf"
    "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
    for _ in $(seq 1 100); do [ -s "$WORK/nginx.pid" ] && break; sleep 0.05; done

    log "uringcast-load broadcast through nginx 127.0.0.1:$lb: $SUBSCRIBERS subscribers, $PUBLISHERS publishers, $RATE/s, ${SECONDS_OF_TRAFFIC}s"
    set +e
    out=$("$LOAD" broadcast "ws://127.0.0.1:$lb/demo" --subscribers "$SUBSCRIBERS" \
        --publishers "$PUBLISHERS" --rate "$RATE" --duration "$SECONDS_OF_TRAFFIC" \
        --source 127.0.0.2-127.0.0.9 --quiet --json "$WORK/report-$kind.json" 2>&1)
    rc=$?
    set -e
    echo "$out"
    local held=0 crossed=0 subs
    for port in "${ports[@]}"; do
        subs=$(metric "$port" uringcast_connections_accepted_total)
        [ "${subs%.*}" -gt 1 ] && held=$((held + 1)) # 1: this curl itself
        crossed=$((crossed + $(metric "$port" uringcast_broker_received_total | cut -d. -f1)))
    done
    log "$kind: load generator exit $rc; nodes that served clients: $held of $NODES; messages received from the broker: $crossed"
    kill "$(cat "$WORK/nginx.pid")"; rm -f "$WORK/nginx.pid"
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    [ "$rc" = 0 ] || { log "FAIL $kind: the load generator did not report a clean run"; return 1; }
    [ "$held" -ge 2 ] || { log "FAIL $kind: clients reached only $held node(s)"; return 1; }
    [ "$crossed" -gt 0 ] || { log "FAIL $kind: nothing crossed the broker"; return 1; }
    log "PASS $kind"
}

failed=0
for kind in "${KINDS[@]}"; do
    case "$kind" in
        redis) url=${REDIS_URL:-} ;;
        cluster) url=${REDIS_CLUSTER_URL:-} ;;
        nats) url=${NATS_URL:-} ;;
    esac
    if [ -z "$url" ]; then
        echo "SKIP cluster-demo $kind: broker missing"
        continue
    fi
    run_one "$kind" "$url" || failed=1
done
exit $failed
