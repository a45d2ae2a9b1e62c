#!/usr/bin/env bash
# Which kernel caches an idle WebSocket connection occupies, per server: the benchmark's idle
# scenario (scripts/bench.sh) reports the kernel slab's growth per connection as one number;
# this splits it by slab cache, from /proc/slabinfo before and while N connections are held.
#
#   scripts/bench_slab.sh [--server uringcast|bun|node] [--connections N] [--out DIR]
#
# Writes DIR/summary.txt: the caches that grew by at least 16 bytes per connection, in bytes
# per connection (objects × object size; both ends of each loopback connection, since the
# load generator's sockets are on this machine too). Needs root for /proc/slabinfo. Uses the
# release binaries and the peers scripts/bench.sh built and installed. Loopback only;
# everything is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
server=uringcast n=10000 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --server) server=$2; shift ;;
    --connections) n=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_slab.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -r /proc/slabinfo ] || { echo "SKIP bench_slab: a readable /proc/slabinfo missing" >&2; exit 0; }
out=${out:-target/bench/slab-$server}
mkdir -p "$out"
load=$root/target/release/uringcast-load
[ -x "$load" ] || timeout 1800 cargo build --release -q --workspace --bins
case $server in uringcast|bun|node) ;; *) echo "bench_slab.sh: --server takes uringcast, bun or node" >&2; exit 2 ;; esac
# shellcheck source=bench_server.sh
. scripts/bench_server.sh
port=$(free_server_port)
start_pinned_server "$server" "$port" "$out/server.log"
slab() { awk 'NR > 2 { print $1, $2 * $4 }' /proc/slabinfo | sort; }
slab >"$out/before.txt"
hold=$((n / 5000 + 30))
timeout 300 taskset -c 1 "$load" connect "ws://127.0.0.1:$port/idle" --connections "$n" --rate 5000 \
  --duration "$hold" --threads 1 --quiet --source 127.0.0.9 >"$out/load.txt" 2>&1 &
lpid=$!
# Held: every connection established at the server's end (the upgrade follows within
# milliseconds; the second look, a second on, is what the server settled to).
for _ in $(seq 1 600); do
  [ "$(ss -Htn state established "sport = :$port" | wc -l)" -ge "$n" ] && break
  kill -0 "$lpid" 2>/dev/null || { echo "the load generator stopped early:" >&2; cat "$out/load.txt" >&2; exit 1; }
  sleep 0.1
done
sleep 1
slab >"$out/held.txt"
open=$(ss -Htn state established "sport = :$port" | wc -l)
{
  echo "# scripts/bench_slab.sh --server $server --connections $n"
  echo "server: $server_line"
  echo "kernel $(uname -r); $open connections open at the server when sampled"
  echo
  echo "slab cache                        bytes per connection"
  join "$out/before.txt" "$out/held.txt" |
    awk -v n="$open" '{ d = ($3 - $2) / n; if (d >= 16) printf "%-32s %8.0f\n", $1, d }' | sort -k2 -rn
  join "$out/before.txt" "$out/held.txt" |
    awk -v n="$open" '{ t += ($3 - $2) / n } END { printf "%-32s %8.0f\n", "all caches (net)", t }'
} >"$out/summary.txt"
cat "$out/summary.txt"
