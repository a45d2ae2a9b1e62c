#!/usr/bin/env bash
# Broadcast to 10,000 subscribers at 10 publishes/s, 64-byte messages: uringcast (one worker)
# against the floor (loadgen/examples/floor_server.rs: a plain loop write()ing one pre-encoded
# frame to each socket) and the same loop with one io_uring send per socket instead of write()
# ("uring-floor", floor_server --io-uring), interleaved within each run. Each server is pinned to core 0, the load
# generator to core 1. uringcast's CPU (utime+stime) is read by the load generator over its
# traffic window; the floor reports its own CPU over its sending period (it stops by itself
# after 12 s; it sends whether or not anyone measures, so the load generator's window would
# not match its deliveries). Usage: scripts/bench_broadcast.sh [RUNS=3] [SUBSCRIBERS=10000] [PUBLISHES_PER_S=10]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; subs=${2:-10000}; rate=${3:-10}
out=${OUT:-$(mktemp -d /tmp/bench_broadcast.XXXX)}
cargo build --release -q --workspace --bins --examples
load=target/release/uringcast-load
port=9311
for run in $(seq 1 "$runs"); do
  for server in floor uring-floor uringcast; do
    port=$((port + 1))
    src="127.0.0.$((120 + port % 100))"
    if [ "$server" != uringcast ]; then
      flags=(); [ "$server" = uring-floor ] && flags=(--io-uring)
      taskset -c 0 target/release/examples/floor_server --listen "127.0.0.1:$port" --connections "$subs" \
        --rate "$rate" --size 64 --start-delay 1 --max-seconds 12 "${flags[@]}" >"$out/$server-$run.server" 2>&1 &
      publishers=0
    else
      taskset -c 0 target/release/uringcast --listen "127.0.0.1:$port" --mode broadcast --workers 1 \
        --ping-interval 0 >"$out/$server-$run.server" 2>&1 &
      publishers=1
    fi
    pid=$!
    for _ in $(seq 1 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
    timeout 120 taskset -c 1 "$load" broadcast "ws://127.0.0.1:$port/topic" --subscribers "$subs" \
      --publishers "$publishers" --rate "$rate" --size 64 --duration 8 --server-pid "$pid" \
      --source "$src" --quiet --json "$out/$server-$run.json" >/dev/null 2>&1 &
    loadgen=$!
    # Core 0's busy time and the server's own CPU over a 4 s window of steady traffic, once
    # every subscriber is connected: io_uring may move send work to kernel threads, which
    # the process's utime+stime would not show, but core 0's busy time does.
    for _ in $(seq 1 300); do
      [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge "$subs" ] && break; sleep 0.1
    done
    sleep 2
    python3 - "$pid" "$subs" "$rate" >"$out/$server-$run.window" <<'PY'
import sys, time, os
pid, subs, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
def core0():
    f = open("/proc/stat").read().split("\n")
    v = [int(x) for x in next(l for l in f if l.startswith("cpu0 ")).split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait
def proc():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
c0, p0, t0 = core0(), proc(), time.time()
time.sleep(4)
c1, p1, t1 = core0(), proc(), time.time()
deliveries = subs * rate * (t1 - t0)
print(f"window_core0_us_per_delivery {(c1 - c0) / hz * 1e6 / deliveries:.2f} "
      f"window_process_us_per_delivery {(p1 - p0) / hz * 1e6 / deliveries:.2f}")
PY
    wait "$loadgen" || true
    if [ "$server" != uringcast ]; then wait "$pid" 2>/dev/null || true; else kill "$pid"; wait "$pid" 2>/dev/null || true; fi
    python3 - "$out/$server-$run.json" "$server" "$run" "$out/$server-$run.server" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
cpu = (d.get("server") or {}).get("cpu_per_message_us") or 0
if sys.argv[2] != "uringcast":
    m = re.search(r"\(([\d.]+) µs per frame\)", open(sys.argv[4]).read())
    cpu = float(m.group(1)) if m else float("nan")
lat = d["latency_us"]
window = open(sys.argv[4].rsplit(".", 1)[0] + ".window").read().strip()
print(f"run {sys.argv[3]} {sys.argv[2]:11s} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"server_cpu_per_delivery_us {cpu:.2f} p50_ms {lat['p50']/1000:.1f} p99_ms {lat['p99']/1000:.1f} {window}")
PY
  done
done
echo "results in $out"
