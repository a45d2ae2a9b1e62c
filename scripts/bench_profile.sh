#!/usr/bin/env bash
# Where the time goes in the benchmark's broadcast scenarios: one server pinned to core 0 and
# uringcast-load on core 1, as scripts/bench.sh runs them, with `perf record` (software clock,
# call graphs) over both cores for a few seconds in the middle of the run.
#
#   scripts/bench_profile.sh [--server uringcast|bun|floor] [--inflight P | --rate R] [--wss]
#                            [--subscribers N] [--seconds S] [--out DIR]
#
# --inflight P (8 unless --rate): P publishers, P publishes in flight (the "in flight"
# scenarios). --rate R: one publisher at R publishes/s (the broadcast scenario is --rate 10);
# the floor (loadgen/examples/floor_server.rs, one write() per socket) takes only --rate.
# --wss: over TLS 1.3 (a fresh ECDSA P-256 certificate), as the benchmark's wss variant.
#
# Writes DIR/summary.txt: each core's busy share (from /proc/stat), the load generator's
# report of the run, and the top symbols per core (self time, kernel and user alike), plus
# perf.data for a closer look (`perf report -i DIR/perf.data`). Uses the release binaries and
# the Bun that scripts/bench.sh built and installed. Loopback only; everything is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
server=uringcast inflight="" rate="" wss=0 subs=10000 secs=4 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --server) server=$2; shift ;;
    --inflight) inflight=$2; shift ;;
    --rate) rate=$2; shift ;;
    --wss) wss=1 ;;
    --subscribers) subs=$2; shift ;;
    --seconds) secs=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_profile.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v perf >/dev/null || { echo "SKIP bench_profile: perf missing" >&2; exit 0; }
[ -n "$inflight" ] && [ -n "$rate" ] && { echo "bench_profile.sh: --inflight or --rate, not both" >&2; exit 2; }
[ -z "$rate" ] && inflight=${inflight:-8}
[ "$server" = floor ] && [ -z "$rate" ] && { echo "bench_profile.sh: the floor takes --rate" >&2; exit 2; }
shape=${rate:+rate-$rate}${inflight:+inflight-$inflight}
[ "$wss" = 1 ] && shape+=-wss
out=${out:-target/bench/profile-$server-$shape}
mkdir -p "$out"
base="ws://127.0.0.1" tls_load=()
if [ "$wss" = 1 ]; then
  [ "$server" = floor ] && { echo "bench_profile.sh: the floor has no wss" >&2; exit 2; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
  tls_cert=$out/cert.pem tls_key=$out/key.pem base="wss://localhost" tls_load=(--ca "$out/cert.pem")
fi
load=$root/target/release/uringcast-load
[ -x "$load" ] || timeout 1800 cargo build --release -q --workspace --bins --examples
connect=$((subs / 5000 + 2))
case $server in uringcast|bun|floor) ;; *) echo "bench_profile.sh: --server takes uringcast, bun or floor" >&2; exit 2 ;; esac
# shellcheck source=bench_server.sh
. scripts/bench_server.sh
port=$(free_server_port)
start_pinned_server "$server" "$port" "$out/server.log" --connections "$subs" --rate "${rate:-0}" \
  --size 64 --start-delay 1 --max-seconds $((secs + connect + 4))
if [ "$server" = floor ]; then
  publish=(--publishers 0)  # the floor publishes by itself
elif [ -n "$rate" ]; then
  publish=(--publisher-url "$base:$port/publish/topic" --publishers 1 --rate "$rate")
else
  publish=(--publisher-url "$base:$port/publish/topic" --publishers "$inflight" --inflight "$inflight")
fi
timeout 300 taskset -c 1 "$load" broadcast "$base:$port/topic" "${tls_load[@]}" "${publish[@]}" \
  --subscribers "$subs" --size 64 --duration $((secs + 4)) --connect-rate 5000 --threads 1 --quiet \
  --source 127.0.0.9 --server-pid "$pid" --json "$out/load.json" >"$out/load.txt" 2>&1 &
lpid=$!
# The subscribers connect at 5,000/s, then the publishers start; record in the middle.
sleep $((connect + 2))
cpu() { awk '/^cpu[01] /{print $1, $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
before=$(cpu)
perf record -q -a -C 0,1 -g -F 1999 -o "$out/perf.data" -- sleep "$secs" 2>"$out/perf.log"
after=$(cpu)
wait "$lpid" || true; lpid=""
{
  echo "# scripts/bench_profile.sh --server $server --${rate:+rate $rate}${inflight:+inflight $inflight}$([ "$wss" = 1 ] && echo " --wss") --subscribers $subs --seconds $secs"
  echo "server: $server_line"
  echo "load:   taskset -c 1 uringcast-load broadcast $base:$port/topic ${tls_load[*]} ${publish[*]} --subscribers $subs --size 64"
  echo "kernel $(uname -r); $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo
  echo "busy share of each core while perf recorded:"
  paste <(echo "$before") <(echo "$after") |
    awk '{printf "  %s %.0f%%\n", $1, 100 * ($5 - $2) / ($6 - $3)}'
  echo
  echo "the load generator's report (the whole run, not only the recorded seconds):"
  sed 's/^/  /' "$out/load.txt"
  echo
  echo "the server's own samples on core 0 (its threads, not the idle loop or kernel threads):"
  perf report -q -i "$out/perf.data" --no-children --cpu 0 --sort comm,dso,sym --stdio -g none 2>/dev/null |
    awk '$2 != "swapper" && $2 != "perf" && $2 !~ /^(kdamond|ksoftirqd|kworker|rcu|migration)/ {
           t += $1; if ($0 ~ /\[k\] (__)?io_/) io += $1; if ($0 ~ /\[\.\]/) u += $1 }
         END { if (t) printf "  own code %.1f%%, io_uring %.1f%%, the rest of the kernel (TCP, loopback, scheduler) %.1f%%\n",
                             100 * u / t, 100 * io / t, 100 * (t - u - io) / t }'
  for c in 0 1; do
    echo
    echo "core $c: top symbols by self time (perf report --no-children --cpu $c --sort dso,sym)"
    perf report -q -i "$out/perf.data" --no-children --cpu "$c" --sort dso,sym --stdio -g none \
      --percent-limit 1.5 2>/dev/null | sed 's/[[:space:]]*$//' | grep -v '^$' | head -25
    echo
    echo "core $c: by component (perf report --no-children --cpu $c --sort comm,dso)"
    perf report -q -i "$out/perf.data" --no-children --cpu "$c" --sort comm,dso --stdio -g none \
      --percent-limit 2 2>/dev/null | sed 's/[[:space:]]*$//' | grep -v '^$' | head -8
  done
} >"$out/summary.txt"
cat "$out/summary.txt"
