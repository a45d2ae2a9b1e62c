#!/usr/bin/env bash
# Whole-system echo comparison: server CPU seconds per million messages.
#
# Echo, CONNS connections (100), SIZE-byte binary messages (32), closed loop with one message
# in flight per connection, against uringcast and two echo servers built from crates.io in
# scripts/peers (fastwebsockets, tokio-tungstenite), all measured in the same run.
#
# Each server runs with one worker/thread pinned to SERVER_CPU (taskset -c 0); the load client
# (scripts/peers echo-client: one epoll thread, hand-parsed frames, every echo checked byte for
# byte) is pinned to CLIENT_CPU (taskset -c 1). After WARMUP seconds the client reads the
# server's utime+stime (/proc/PID/stat fields 14 and 15; also the sum of the threads'
# schedstat run time as a cross-check), counts echoes for SECS seconds and reads them again.
# Servers are interleaved within each run, and the order is rotated from run to run
# (A B C, B C A, C A B, ...) so machine noise and position effects fall on all alike.
#
# Usage: scripts/bench_echo.sh [RUNS]
# Environment: RUNS (5) SECS (10) WARMUP (2) CONNS (100) SIZE (32) SERVER_CPU (0)
#   CLIENT_CPU (1) SERVERS ("uringcast fastwebsockets tungstenite") OUT (results dir)
#   UC_REV=<commit> builds uringcast from that commit (git archive into OUT) instead of the
#   work tree; NO_BUILD=1 skips the work-tree builds (uses the binaries already there).
# Only 127.0.0.1 is used; every process is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-${RUNS:-5}}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-100}
SIZE=${SIZE:-32}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
read -r -a SERVERS <<<"${SERVERS:-uringcast fastwebsockets tungstenite}"
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/bench_echo.XXXXXX")}
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
: >"$RESULTS"
BIN=$OUT/bin
LIMIT=$((WARMUP + SECS + 60))

UC_BIN=$ROOT/target/release/uringcast
if [[ -n ${UC_REV:-} ]]; then
    # uringcast from a commit, not the work tree: `git archive` into $OUT, own target dir.
    echo "building uringcast at $UC_REV (release)..." >&2
    mkdir -p "$OUT/uringcast-src"
    git -C "$ROOT" archive "$UC_REV" | tar -x -C "$OUT/uringcast-src"
    (cd "$OUT/uringcast-src" && CARGO_TARGET_DIR=$OUT/uringcast-target \
        timeout 1800 cargo build --release -q -p uringcast --bin uringcast)
    UC_BIN=$OUT/uringcast-target/release/uringcast
    UC_DESC="commit $(git -C "$ROOT" rev-parse --short "$UC_REV")"
elif [[ -z ${NO_BUILD:-} ]]; then
    echo "building uringcast from the work tree (release)..." >&2
    timeout 1800 cargo build --release -q -p uringcast --bin uringcast
fi
if [[ -z ${NO_BUILD:-} ]]; then
    echo "building scripts/peers (release)..." >&2
    (cd scripts/peers && timeout 1800 cargo build --release -q)
fi
UC_DESC=${UC_DESC:-"work tree at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml || echo ' + uncommitted changes in src/'), binary built $(date -r "$UC_BIN" -Is)"}
# Run copies, so a rebuild of the tree during the run cannot swap a binary mid-way.
mkdir -p "$BIN"
cp "$UC_BIN" "$BIN/uringcast"
for b in fastwebsockets-echo tungstenite-echo echo-client; do
    cp "$ROOT/scripts/peers/target/release/$b" "$BIN/"
done

server_cmd() {
    case $1 in
        uringcast) echo "$BIN/uringcast --listen 127.0.0.1:0 --mode echo --workers 1 --ping-interval 0" ;;
        fastwebsockets) echo "$BIN/fastwebsockets-echo --listen 127.0.0.1:0 --threads 1" ;;
        tungstenite) echo "$BIN/tungstenite-echo --listen 127.0.0.1:0 --threads 1" ;;
        *) echo "unknown server $1" >&2; return 1 ;;
    esac
}

# run_one RUN SERVER: one measurement; appends one line to $RESULTS.
run_one() {
    local run=$1 name=$2 sout serr cout tpid spid addr="" rc=0 i
    sout=$OUT/$run-$name.server.out
    serr=$OUT/$run-$name.server.err
    cout=$OUT/$run-$name.client.out
    # shellcheck disable=SC2046
    RUST_LOG=${RUST_LOG:-warn} timeout --kill-after=5 "$LIMIT" \
        taskset -c "$SERVER_CPU" $(server_cmd "$name") >"$sout" 2>"$serr" &
    tpid=$!
    for i in $(seq 200); do
        addr=$(sed -n 's/^listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$sout" 2>/dev/null | head -n1 || true)
        [[ -n $addr ]] && break
        kill -0 "$tpid" 2>/dev/null || break
        sleep 0.1
    done
    spid=$(pgrep -P "$tpid" | head -n1 || true)
    if [[ -z $addr || -z $spid ]]; then
        echo "run=$run server=$name rc=start-failed" | tee -a "$RESULTS" >&2
        cat "$serr" >&2
        [[ -n $spid ]] && kill "$spid" 2>/dev/null
        wait "$tpid" 2>/dev/null || true
        return
    fi
    local threads
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$spid/status")
    timeout --kill-after=5 "$LIMIT" taskset -c "$CLIENT_CPU" "$BIN/echo-client" \
        --connect "$addr" --connections "$CONNS" --size "$SIZE" \
        --warmup-secs "$WARMUP" --secs "$SECS" --server-pid "$spid" >"$cout" 2>&1 || rc=$?
    local alive=yes
    kill -0 "$spid" 2>/dev/null || alive=no
    kill -TERM "$spid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    # Lines the server logged at WARN or above (uringcast) or at all (the peers print errors only).
    local errlines
    errlines=$(grep -c -E 'WARN|ERROR|error|panick' "$serr" || true)
    local line
    line="run=$run server=$name rc=$rc alive_after=$alive threads=$threads server_err_lines=$errlines"
    line+=" $(grep '^msgs=' "$cout" | tail -n1) load1=$(cut -d' ' -f1 /proc/loadavg)"
    echo "$line" | tee -a "$RESULTS" >&2
    if [[ $rc != 0 ]]; then
        grep -v '^msgs=' "$cout" | head -n 20 >&2 || true
    fi
}

{
    echo "# bench_echo $(date -Is) runs=$RUNS secs=$SECS warmup=$WARMUP conns=$CONNS size=$SIZE"
    echo "# uringcast: $UC_DESC, sha256 $(sha256sum "$BIN/uringcast" | cut -c1-16)"
    echo "# $(uname -r), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "# rustc $(rustc --version | cut -d' ' -f2); peers: $(cd scripts/peers && cargo tree -e normal --depth 1 2>/dev/null | grep -E '^[├└]── (tokio|tokio-tungstenite|fastwebsockets|hyper) ' | sed 's/^[├└]── //' | tr '\n' ' ')"
} | tee "$OUT/header.txt" >&2

n=${#SERVERS[@]}
for run in $(seq "$RUNS"); do
    for k in $(seq 0 $((n - 1))); do
        run_one "$run" "${SERVERS[$(((k + run - 1) % n))]}"
    done
done

# Summary: median (min-max) per server, ratio of medians to uringcast.
summarize() {
    awk -v order="${SERVERS[*]}" '
    function median(s, n,   a, i, j, t) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        mn = a[1]; mx = a[n]
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        delete kv
        for (i = 1; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        s = kv["server"]
        if (kv["rc"] != "0" || kv["server_cpu_s_per_million"] == "") { bad[s]++; next }
        cpm[s] = cpm[s] " " kv["server_cpu_s_per_million"]
        spm[s] = spm[s] " " kv["server_sched_s_per_million"]
        rate[s] = rate[s] " " kv["msgs_per_s"]
        sutil[s] = sutil[s] " " kv["server_cpu_s"] / kv["secs"]
        cutil[s] = cutil[s] " " kv["client_cpu_s"] / kv["secs"]
        ok[s]++
    }
    END {
        ns = split(order, names, " ")
        printf "%-15s %4s  %-22s %-8s %-10s %-22s %-8s %-8s\n", "server", "runs", "cpu s/M msgs med (min-max)", "ratio", "sched s/M", "msgs/s med (min-max)", "srv cpu", "cli cpu"
        base = ok["uringcast"] ? median(cpm["uringcast"]) : ""
        for (k = 1; k <= ns; k++) {
            s = names[k]
            if (!ok[s]) { printf "%-15s %4d  (no valid runs; %d failed)\n", s, 0, bad[s]; continue }
            m = median(cpm[s]); lo = mn; hi = mx
            sm = median(spm[s])
            r = median(rate[s]); rlo = mn; rhi = mx
            su = median(sutil[s]); cu = median(cutil[s])
            ratio = (base != "" && base > 0) ? sprintf("%.2fx", m / base) : "-"
            printf "%-15s %4d  %-22s %-8s %-10s %-22s %-8s %-8s%s\n", s, ok[s], sprintf("%.2f (%.2f-%.2f)", m, lo, hi), ratio, sprintf("%.2f", sm), sprintf("%.0f (%.0f-%.0f)", r, rlo, rhi), sprintf("%.0f%%", su * 100), sprintf("%.0f%%", cu * 100), (bad[s] ? sprintf("  [%d failed runs]", bad[s]) : "")
        }
    }' "$RESULTS"
}
summarize | tee "$OUT/summary.txt"
echo "results: $OUT" >&2
