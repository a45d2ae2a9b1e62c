#!/usr/bin/env bash
# A bounded soak of the broadcast server on loopback: good clients that check every message,
# hostile clients at the same time, and the server's RSS sampled each second
# (scripts/peers/src/bin/soak.rs says what each client does).
#
# Usage: scripts/soak.sh MINUTES [JSON_PATH]
#   MINUTES    traffic time, 1 to 120 (the whole run takes about MINUTES + 1 minute)
#   JSON_PATH  where the summary goes as JSON [target/soak/soak-<UTC time>.json]
# Environment:
#   SOAK_MAX_PENDING_BYTES  passed as --max-pending-bytes if the server lists that flag
#                           [33554432]
#   CARGO_BUILD_JOBS        as for cargo (e.g. 1 on a shared machine)
#
# Exits 0 if every good client saw every message complete and in order with no unexpected
# close, 1 if not, 2 on bad arguments or if the server cannot be started. Traffic goes only to
# the server's loopback address; the server and the client stop by themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-}
if ! [[ $minutes =~ ^[0-9]+$ ]] || ((minutes < 1 || minutes > 120)); then
  echo "usage: scripts/soak.sh MINUTES [JSON_PATH]  (MINUTES from 1 to 120)" >&2
  exit 2
fi
json=${2:-target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$json")" target/soak

cargo build --release -q
cargo build --release -q --manifest-path scripts/peers/Cargo.toml --bin soak

# Good subscribers and echo clients publish to their rooms: subscribers' messages are
# allowed explicitly (a publish token alone makes them read-only).
server_flags=(--listen 127.0.0.1:0 --mode broadcast --publish-token soaktoken --client-publish all)
# Caps the hostile clients from 127.0.0.2 run into, far above what the good ones (and the
# other hostile ones, all on 127.0.0.1) use: ~60 connections, 200 messages/s per publisher.
if target/release/uringcast --help | grep -q -- '--max-connections-per-ip'; then
  server_flags+=(--max-connections-per-ip 256 --max-messages-per-second 1000)
fi
if target/release/uringcast --help | grep -q -- '--max-pending-bytes'; then
  server_flags+=(--max-pending-bytes "${SOAK_MAX_PENDING_BYTES:-33554432}")
fi

out=$(mktemp)
log=target/soak/server.log
secs=$((minutes * 60))
# The server is bounded too: the soak, its drain and closes, and a margin.
timeout --signal=TERM --kill-after=10 $((secs + 120)) \
  target/release/uringcast "${server_flags[@]}" >"$out" 2>"$log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$out"
}
trap cleanup EXIT

addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^listening on \(.*\)$/\1/p' "$out")
  [[ -n $addr ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $addr ]]; then
  echo "soak: the server did not report its address; its log:" >&2
  cat "$log" >&2
  exit 2
fi
case $addr in
  127.*) ;;
  *) echo "soak: the server listens on $addr, not on loopback" >&2; exit 2 ;;
esac
# timeout(1) runs the server as its child: sample the server itself.
pid=$(pgrep -P "$server" -x uringcast || echo "$server")

echo "soak: server pid $pid on $addr (${server_flags[*]}), $minutes min of traffic"
status=0
timeout --signal=TERM --kill-after=10 $((secs + 90)) \
  scripts/peers/target/release/soak --connect "$addr" --server-pid "$pid" --secs "$secs" \
  --token soaktoken --json "$json" || status=$?
echo "soak: summary written to $json; server log in $log"
exit "$status"
