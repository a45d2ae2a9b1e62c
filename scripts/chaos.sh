#!/usr/bin/env bash
# Chaos, scripted (issue 25): faults while publishing, on 3 nodes per broker, and a table of
# what every subscriber got. For each broker named (default: all four):
#
#   - brokers from `scripts/brokers.sh start` (started once, under target/chaos/brokers);
#   - two trios of nodes on it, `--broker URL --history N --ping-interval 2 --workers 1`:
#     three `--mode broadcast` (WebSocket rooms and Server-Sent Events) and three
#     `--mode pusher`, each on a 127.0.0.1 port the kernel picks;
#   - a publisher on every node ({"p","s"} payloads: a publish-only WebSocket, or the signed
#     Pusher HTTP API) and subscribers on every node (WebSocket rooms, SSE with Last-Event-ID,
#     Pusher with the resume extension when its events carry positions);
#   - while publishing, one after the other: the broker restarted (brokers.sh restart; on the
#     cluster, the master owning the topic), a node of each trio SIGKILLed and a new one
#     started, a node of each trio frozen with SIGSTOP for 6 s (3 heartbeats) then SIGCONT,
#     and one subscriber of each kind cut off for 10 s, then back on another node with its
#     last position;
#   - the table: publications made, deliveries, reconnects, recovered, reported "not
#     recovered", missed but told, lost at publish, duplicates and silent gaps (which must
#     be 0). scripts/chaos.py says exactly how each is counted.
#
# Usage: scripts/chaos.sh [--short] [--no-build] [--release] [redis|cluster|nats|kafka]...
#   --short      fewer subscribers, 3 s between faults, a 4 s cut: about 40 s per broker
#                (what .ci/run runs)
#   --no-build   use the binary as it is (target/debug/uringcast, or target/release with
#                --release, or $URINGCAST_BIN)
#   --release    build and use the release binary (default: debug; the load is small)
#
# A broker that brokers.sh cannot give (no KAFKA_URL, nats-server missing), or that the node
# refuses (exit 2) or serves with positions per node only, prints
# `SKIP chaos BROKER: reason` and the run goes on. Node logs and report.json per broker go
# to target/chaos/BROKER/. Exit status: 0 when every broker run passed or skipped, 1 if any
# had a silent gap, a duplicate or a failure. Everything listens on 127.0.0.1 only, every
# loop is bounded, and everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SHORT=0
BUILD=1
PROFILE=debug
WHICH=()
for arg in "$@"; do
    case "$arg" in
        --short) SHORT=1 ;;
        --no-build) BUILD=0 ;;
        --release) PROFILE=release ;;
        redis|cluster|nats|kafka) WHICH+=("$arg") ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "chaos: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#WHICH[@]} -gt 0 ] || WHICH=(redis cluster nats kafka)

log() { printf '[chaos] %s\n' "$*" >&2; }

BIN=${URINGCAST_BIN:-target/$PROFILE/uringcast}
if [ "$BUILD" = 1 ] && [ -z "${URINGCAST_BIN:-}" ]; then
    if [ "$PROFILE" = release ]; then cargo build --release --bin uringcast >&2
    else cargo build --bin uringcast >&2
    fi
fi
[ -x "$BIN" ] || { log "no binary at $BIN (build it, or drop --no-build)"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP chaos: python3 missing"; exit 0; }

WORK=target/chaos
# Absolute: a restarted cluster master finds its nodes.conf by this path after redis-server
# has changed into its data directory.
BROKERS="$PWD/$WORK/brokers"
mkdir -p "$WORK"
cleanup() { scripts/brokers.sh stop "$BROKERS" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/brokers.sh install >&2
scripts/brokers.sh stop "$BROKERS" >/dev/null 2>&1 || true
scripts/brokers.sh start "$BROKERS" >"$WORK/brokers.out"
grep '^SKIP' "$WORK/brokers.out" >&2 || true
env_of() { sed -n "s/^$1=//p" "$BROKERS/env" | head -n 1; }

if [ "$SHORT" = 1 ]; then
    PACE=(--subscribers 1 --gap 3 --freeze 5 --cut 4 --max-seconds 120)
else
    PACE=(--subscribers 2 --gap 8 --freeze 6 --cut 10 --max-seconds 300)
fi

status=0
for broker in "${WHICH[@]}"; do
    case "$broker" in
        redis) url=$(env_of REDIS_URL); restart=redis ;;
        cluster) url=$(env_of REDIS_CLUSTER_URL); restart=cluster-owner ;;
        nats) url=$(env_of NATS_URL); restart=nats ;;
        kafka) url=$(env_of KAFKA_URL); restart=kafka ;;
    esac
    if [ -z "$url" ]; then
        echo "SKIP chaos $broker: scripts/brokers.sh gave no URL for it here (see $WORK/brokers.out)"
        continue
    fi
    out="$WORK/$broker"
    rm -rf "$out"
    mkdir -p "$out"
    log "$broker: $url"
    rc=0
    python3 scripts/chaos.py --broker "$broker" --broker-url "$url" --brokers-dir "$BROKERS" \
        --restart-name "$restart" --bin "$BIN" --out "$out" "${PACE[@]}" 2>"$out/chaos.log" || rc=$?
    case "$rc" in
        0|3) ;;
        *) status=1; log "$broker failed; the run's log: $out/chaos.log"; tail -n 15 "$out/chaos.log" >&2 ;;
    esac
done
exit "$status"
