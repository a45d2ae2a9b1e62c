#!/usr/bin/env bash
# Capacity: hold N concurrent idle WebSocket connections to one uringcast process and report
# the server's RSS and the kernel's slab memory per connection (docs/PERFORMANCE.md, "the most
# concurrent idle connections").
#
# Both sides go past the process descriptor limit (RLIMIT_NOFILE, 20,000 here) the same way:
# connections are direct descriptors in io_uring fixed file tables, one table per server worker
# and per load-generator thread, each holding up to the limit. The script sizes both from N,
# and spreads the clients over enough source addresses (127.0.0.2, ...) to stay clear of the
# ~28,000 ephemeral ports of one address pair (12,500 connections per pair).
#
# Usage: scripts/capacity.sh [N=100000] [RUNS=1] [RATE=5000] [HOLD_SECONDS=10]
# Loopback only; every run is bounded (ramp at RATE/s, then HOLD_SECONDS, then close). Exits 1
# if a run did not hold all N connections (or left no report).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
runs=${2:-1}
rate=${3:-5000}
hold=${4:-10}
cargo build --release -q -p uringcast -p uringcast-loadgen
server=target/release/uringcast
load=target/release/uringcast-load

limit=$(ulimit -Hn)
[ "$limit" = unlimited ] && limit=1048576
# A table of `limit` slots per worker and per thread; a little headroom for the rest.
per_table=$((limit - 1000))
tables=$(((n + per_table - 1) / per_table))
# 12,500 connections per (source, target) pair at most: the port range is about 28,000, and
# here 25,000 per pair (4 sources for 100,000) stalled at 62,000 (handshake timeouts) where
# 8 sources reached all 100,000.
sources=$(((n + 12499) / 12500))
[ "$sources" -gt 200 ] && { echo "capacity: N=$n needs more than 200 source addresses" >&2; exit 2; }
first=$((2 + RANDOM % 40)) # fresh addresses per invocation: less TIME_WAIT left from the last
source="127.0.0.$first-127.0.0.$((first + sources - 1))"
timeout_s=$((n / rate + hold + 120))
status=0
echo "capacity: $n connections; server --workers $tables, load generator --threads $tables, sources $source; RLIMIT_NOFILE $limit"

for run in $(seq 1 "$runs"); do
  out=$(mktemp)
  "$server" --listen 127.0.0.1:0 --workers "$tables" --ping-interval 0 --handshake-timeout 60 \
    >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 1 100); do grep -q '^listening on' "$out" && break; sleep 0.1; done
  port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
  json=$(mktemp)
  set +e
  timeout "$timeout_s" "$load" connect "ws://127.0.0.1:$port/" --connections "$n" --rate "$rate" \
    --duration "$hold" --threads "$tables" --source "$source" --server-pid "$pid" --quiet \
    --json "$json" >/dev/null 2>&1
  rc=$?
  set -e
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$json" "$run" "$rc" <<'PY' || status=1
import json, sys
path, run, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    d = json.load(open(path))
except (OSError, ValueError):
    print(f"run {run}: no report (load generator exit {rc})"); sys.exit(1)
c, s = d["connections"], d.get("server") or {}
failed = sum(c["failed"].values()) if isinstance(c["failed"], dict) else c["failed"]
fmt = lambda v: "-" if v is None else f"{v:,.0f}"
kinds = {k: v for k, v in c["failed"].items() if v} if isinstance(c["failed"], dict) else {}
print(f"run {run}: reached {c['reached']:,} of {d['settings']['connections']:,}, failed {failed}; "
      f"server RSS {s.get('rss_before_bytes', 0) / 2**20:.1f} -> {s.get('rss_bytes', 0) / 2**20:.1f} MiB, "
      f"{fmt(s.get('rss_per_conn_bytes'))} B per connection; kernel slab "
      f"{fmt(s.get('slab_per_conn_bytes'))} B per connection (both ends); load generator exit {rc}"
      + (f"; failures {kinds} {c.get('failure_details')}" if kinds else ""))
sys.exit(0 if c["reached"] == d["settings"]["connections"] else 1)
PY
  rm -f "$out" "$json"
done
exit "$status"
