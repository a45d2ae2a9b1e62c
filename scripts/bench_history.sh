#!/usr/bin/env bash
# History on against off, and SSE against WebSocket: broadcast to SUBSCRIBERS subscribers at
# PUBLISHES_PER_S publishes/s of 64-byte messages, one worker pinned to core 0, the load
# generator on core 1, the variants interleaved within each run so that the machine's drift
# hits them alike:
#   ws          --mode broadcast, WebSocket subscribers (the reference)
#   ws-history  the same with --history 300
#   sse-history the same with --history 300, SSE subscribers (`uringcast-load sse`), when the
#               load generator has the sse scenario
#   pusher      --mode pusher, one public channel, `uringcast-load pusher` triggering through
#               the signed HTTP API (issue 24's "CPU per delivery at most 1.10x broadcast")
# VARIANTS="ws pusher" (in the environment) picks some.
# Each line gives the server's CPU per delivery over a 4 s window of steady traffic (core 0's
# busy time, which also shows kernel work done on the server's behalf, and the process's own
# utime+stime), and every run's deliveries are checked (received/expected, missing).
# Publishes go over HTTP (POST /publish) in every variant.
# Usage: scripts/bench_history.sh [RUNS=5] [SUBSCRIBERS=10000] [PUBLISHES_PER_S=10]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; subs=${2:-10000}; rate=${3:-10}
out=${OUT:-$(mktemp -d /tmp/bench_history.XXXX)}
mkdir -p "$out"
cargo build --release -q --workspace --bins
load=target/release/uringcast-load
variants=(ws ws-history)
if "$load" sse --help >/dev/null 2>&1; then variants+=(sse-history); else
    echo "bench_history: this uringcast-load has no sse scenario; SSE left out" >&2; fi
if [ -n "${VARIANTS:-}" ]; then read -r -a variants <<<"$VARIANTS"; fi
port=9411
for run in $(seq 1 "$runs"); do
  for variant in "${variants[@]}"; do
    port=$((port + 1))
    src="127.0.0.$((120 + port % 100))"
    history=(); [[ $variant == *history ]] && history=(--history 300)
    mode=(--mode broadcast --publish-token T)
    [ "$variant" = pusher ] && mode=(--mode pusher --app-id 1 --app-key K)
    URINGCAST_APP_SECRET=S taskset -c 0 target/release/uringcast --listen "127.0.0.1:$port" \
      --workers 1 --ping-interval 0 "${mode[@]}" "${history[@]}" >"$out/$variant-$run.server" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
    # Every variant publishes the same way, over HTTP (10/s: nothing beside the fan-out).
    publish=(--publish-url "http://127.0.0.1:$port/publish/topic" --publish-token T)
    if [ "$variant" = pusher ]; then
      scenario=(pusher "ws://127.0.0.1:$port" --app-key K --app-secret S --app-id 1)
    elif [ "$variant" = sse-history ]; then
      scenario=(sse "http://127.0.0.1:$port/topic" "${publish[@]}")
    else
      scenario=(broadcast "ws://127.0.0.1:$port/topic" "${publish[@]}")
    fi
    timeout 120 taskset -c 1 "$load" "${scenario[@]}" --subscribers "$subs" --publishers 1 \
      --rate "$rate" --size 64 --duration 8 --server-pid "$pid" --source "$src" --quiet \
      --json "$out/$variant-$run.json" >"$out/$variant-$run.load" 2>&1 &
    loadgen=$!
    for _ in $(seq 1 300); do
      [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge "$subs" ] && break; sleep 0.1
    done
    sleep 2  # into the traffic window: the load generator starts publishing once all are in
    python3 - "$pid" "$subs" "$rate" >"$out/$variant-$run.window" <<'PY'
import sys, time, os
pid, subs, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
def core0():
    f = open("/proc/stat").read().split("\n")
    v = [int(x) for x in next(l for l in f if l.startswith("cpu0 ")).split()[1:]]
    return sum(v) - v[3] - v[4]
def proc():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
c0, p0, t0 = core0(), proc(), time.time()
time.sleep(4)
c1, p1, t1 = core0(), proc(), time.time()
deliveries = subs * rate * (t1 - t0)
print(f"{(c1 - c0) / hz * 1e6 / deliveries:.3f} {(p1 - p0) / hz * 1e6 / deliveries:.3f}")
PY
    wait "$loadgen" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$out/$variant-$run.json" "$variant" "$run" "$out/$variant-$run.window" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
core, proc = open(sys.argv[4]).read().split()
print(f"run {sys.argv[3]} {sys.argv[2]:12s} received {d['received']}/{d['expected']} missing {d['missing']} "
      f"core0_us_per_delivery {core} process_us_per_delivery {proc}")
PY
  done
done | tee "$out/runs.txt"
python3 - "$out/runs.txt" <<'PY'
import statistics, sys, collections
core, proc = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    core[f[2]].append(float(f[f.index("core0_us_per_delivery") + 1]))
    proc[f[2]].append(float(f[f.index("process_us_per_delivery") + 1]))
ref_c, ref_p = statistics.median(core["ws"]), statistics.median(proc["ws"])
for v in core:
    c, p = statistics.median(core[v]), statistics.median(proc[v])
    print(f"median {v:12s} core0 {c:.3f} us ({c / ref_c:.3f}x ws)  process {p:.3f} us ({p / ref_p:.3f}x ws)  n={len(core[v])}")
PY
echo "results in $out"
