#!/usr/bin/env bash
# wss:// figures, interleaved within each run, the server pinned to core 0 and its client to
# core 1 (docs/PERFORMANCE.md, "wss"):
#   broadcast   uringcast --workers 1, ws:// and wss://: 10,000 subscribers, 10 publishes/s,
#               64 B; server CPU µs per delivery (the load generator reads /proc)
#   burst       the most deliveries/s: the same with 8 publishers keeping 8 publishes in
#               flight (a closed loop: each publishes again once every subscriber has its last)
#   idle        RSS per idle connection at 10,000 wss:// connections: uringcast and Bun
#   handshakes  full TLS handshakes (and upgrades) per server CPU-second, ECDSA P-256 and
#               RSA 2048 certificates: uringcast and Bun
# Usage: scripts/bench_wss.sh [RUNS=3] [WHAT=broadcast,burst,idle,handshakes]
# Installs Bun from npm into target/peers/bun (once). Loopback only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
what=${2:-broadcast,burst,idle,handshakes}
out=${OUT:-$(mktemp -d /tmp/bench_wss.XXXX)}
cargo build --release -q --workspace
load=target/release/uringcast-load
server=target/release/uringcast
certs="$out/certs"; mkdir -p "$certs"
leaf=(-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE
      -addext keyUsage=digitalSignature,keyEncipherment -addext extendedKeyUsage=serverAuth)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  "${leaf[@]}" -keyout "$certs/ecdsa.key" -out "$certs/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  "${leaf[@]}" -keyout "$certs/rsa.key" -out "$certs/rsa.pem" 2>/dev/null
# shellcheck source=peers/install.sh
. scripts/peers/install.sh
if [[ $what == *idle* || $what == *handshakes* ]]; then peer_install bun; fi
port=9500
next() { port=$((port + 1)); src="127.0.0.$((130 + port % 100))"; }
wait_listen() { for _ in $(seq 1 100); do ss -ltn "sport = :$1" | grep -q LISTEN && return; sleep 0.1; done; }

start_uringcast() { # mode tls(0/1) cert
  local tls=(); [ "$2" = 1 ] && tls=(--tls-cert "$certs/$3.pem" --tls-key "$certs/$3.key")
  taskset -c 0 "$server" --listen "127.0.0.1:$port" --mode "$1" --workers 1 --ping-interval 0 \
    "${tls[@]}" >"$out/server.log" 2>&1 &
  pid=$!; wait_listen "$port"
}
start_bun() { # cert
  CERT="$certs/$1.pem" KEY="$certs/$1.key" PORT=$port MODE=echo taskset -c 0 "$bun" scripts/peers/bun/server.js \
    >"$out/bun.log" 2>&1 &
  pid=$!; wait_listen "$port"
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
url() { if [ "$1" = 1 ]; then echo "wss://localhost:$port/$2"; else echo "ws://127.0.0.1:$port/$2"; fi; }
ca() { [ "$1" = 1 ] && echo "--ca $certs/ecdsa.pem" || true; }

# One broadcast run over ws:// (tls 0) or wss:// (1): 10,000 subscribers, 64-byte messages.
fanout() { # name tls publishers pace duration (pace: --rate R in all, or --inflight P)
  next; start_uringcast broadcast "$2" ecdsa
  # $4 is split on purpose (a flag and its value).
  # shellcheck disable=SC2046,SC2086
  timeout 180 taskset -c 1 "$load" broadcast "$(url "$2" topic)" $(ca "$2") --subscribers 10000 \
    --publishers "$3" $4 --size 64 --duration "$5" --server-pid "$pid" --source "$src" \
    --connect-rate 3000 --quiet --json "$out/$1-$2-$run.json" >/dev/null 2>&1 || true
  stop
  python3 - "$out/$1-$2-$run.json" "$1" "$run" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}; c = d.get("client") or {}
print(f"{sys.argv[2]} run {sys.argv[3]} {'wss' if sys.argv[4] == '1' else 'ws '} received {d['received']}/{d['expected']} "
      f"missing {d['missing']} deliveries_per_s {d['throughput_per_s']:.0f} "
      f"server_us_per_delivery {s.get('cpu_per_message_us') or 0:.2f} "
      f"client_us_per_delivery {c.get('cpu_per_message_us') or 0:.2f} "
      f"p50_ms {d['latency_us']['p50']/1000:.1f} p99_ms {d['latency_us']['p99']/1000:.1f}")
PY
}

for run in $(seq 1 "$runs"); do
  if [[ $what == *broadcast* ]]; then
    for tls in 0 1; do fanout broadcast "$tls" 1 "--rate 10" 8; done
  fi
  if [[ $what == *burst* ]]; then
    for tls in 0 1; do fanout burst "$tls" 8 "--inflight 8" 5; done
  fi
  if [[ $what == *idle* ]]; then
    for peer in uringcast bun; do
      next
      if [ "$peer" = uringcast ]; then start_uringcast echo 1 ecdsa; else start_bun ecdsa; fi
      echo -n "idle run $run $peer "
      TLS_CA="$certs/ecdsa.pem" timeout 170 python3 scripts/idle_memory.py "$port" "$pid" 10000 2 \
        | sed 's/rss_before=[0-9]* rss_after=[0-9]* //' || echo failed
      stop
    done
  fi
  if [[ $what == *handshakes* ]]; then
    for cert in ecdsa rsa; do
      for peer in uringcast bun; do
        next
        if [ "$peer" = uringcast ]; then start_uringcast echo 1 "$cert"; else start_bun "$cert"; fi
        timeout 120 taskset -c 1 "$load" connect "wss://localhost:$port/" --ca "$certs/$cert.pem" \
          --connections 6000 --rate 20000 --duration 0.5 --threads 1 --server-pid "$pid" \
          --source "$src" --quiet --json "$out/hs-$cert-$peer-$run.json" >/dev/null 2>&1 || true
        stop
        python3 - "$out/hs-$cert-$peer-$run.json" "$run" "$cert" "$peer" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}
n = d["connections"]["established"]; cpu = s.get("cpu_s") or float("nan")
tls = d.get("tls_handshake_latency_us") or {}
print(f"handshakes run {sys.argv[2]} {sys.argv[3]:5s} {sys.argv[4]:9s} established {n} failed "
      f"{sum(v for v in d['connections']['failed'].values() if isinstance(v, int))} server_cpu_s {cpu:.2f} "
      f"handshakes_per_cpu_s {n / cpu:.0f} tls_p50_ms {tls.get('p50', 0)/1000:.1f}")
PY
      done
    done
  fi
done
echo "results in $out"
