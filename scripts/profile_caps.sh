#!/usr/bin/env bash
# What the per-connection rate check costs, read from a profile rather than an A/B: the echo
# server (one worker, core 0) with --max-messages-per-second and --max-bytes-per-second set too
# high to trip, driven by scripts/peers' echo-client (core 1, 100 connections, 32-byte
# messages) for 10 s, under `perf record` (software clock, call graphs). Prints the flat
# profile's lines for the check's functions and who calls clock_gettime; the full profile is
# in target/profile_caps/. Loopback only, bounded (12 s of recording).
#
# Usage: scripts/profile_caps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/profile_caps
mkdir -p "$OUT"
cargo build --release -q -p uringcast
cargo build --release -q --manifest-path scripts/peers/Cargo.toml --bin echo-client
taskset -c 0 target/release/uringcast --listen 127.0.0.1:0 --workers 1 --ping-interval 0 \
    --mode echo --max-messages-per-second 1000000000 --max-bytes-per-second 1000000000000 \
    >"$OUT/server.out" 2>"$OUT/server.err" &
spid=$!
trap 'kill "$spid" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^listening on //p' "$OUT/server.out")
    [[ -n $addr ]] && break
    sleep 0.1
done
[[ -n $addr ]] || { cat "$OUT/server.err" >&2; exit 1; }
perf record -F 4999 -e cpu-clock -g -p "$spid" -o "$OUT/perf.data" -- sleep 12 >"$OUT/perf.log" 2>&1 &
perf_pid=$!
taskset -c 1 scripts/peers/target/release/echo-client --connect "$addr" --connections 100 \
    --size 32 --warmup-secs 1 --secs 10 --server-pid "$spid" >"$OUT/echo.txt" 2>&1
wait "$perf_pid"
grep '^msgs=' "$OUT/echo.txt" | tail -n1
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$OUT/flat.txt"
echo "# the check's functions (share of all the server's samples):"
grep -E 'hash_one|sip::Hasher|Instant|Bucket|within_budget|on_message|clock_gettime' "$OUT/flat.txt" |
    sed -E 's/ +- +- *$//'
echo "# callers of clock_gettime:"
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -S __vdso_clock_gettime \
    -g caller,0.5,callee --percent-limit 0.01 2>/dev/null | grep -E -- '--[0-9.]+%--' || true
