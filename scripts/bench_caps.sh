#!/usr/bin/env bash
# What the access checks and the caps cost, on loopback, in short interleaved runs:
#
# 1. handshakes: `uringcast-load connect` opens CONNECTIONS connections at RATE per second to
#    `--mode broadcast --workers 1` with no key, with --jwt-secret (HS256) and with
#    --jwt-public-key (RS256, 2048-bit), every URL carrying the same ?token=; the server's CPU
#    per handshake (utime + stime from /proc, as the load generator reports it) and the
#    handshake latency.
# 2. echo: `scripts/peers` echo-client (100 connections, 32-byte messages, one in flight each)
#    against `--mode echo --workers 1` with no caps and with --max-messages-per-second and
#    --max-bytes-per-second set too high to trip, so every message pays the check; the server's
#    CPU per million messages.
#
# Usage: scripts/bench_caps.sh [RUNS]   (default 3; each run is about 40 s of both cores)
# Environment: CONNECTIONS (3000) and RATE (3000) for the handshakes, SECS (5) per echo run,
# ECHO=0 to skip the echo runs.
# Server pinned to CPU 0, clients to CPU 1. Results in target/bench_caps/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
CONNECTIONS=${CONNECTIONS:-3000}
RATE=${RATE:-3000}
SECS=${SECS:-5}
OUT=target/bench_caps
mkdir -p "$OUT"
cargo build --release -q -p uringcast -p uringcast-loadgen
cargo build --release -q --manifest-path scripts/peers/Cargo.toml --bin echo-client
BIN=target/release
openssl genrsa -out "$OUT/rsa.pem" 2048 2>/dev/null
openssl rsa -in "$OUT/rsa.pem" -pubout -out "$OUT/rsa_public.pem" 2>/dev/null
secret=bench-secret-0123456789abcdef
# One HS256 token and one RS256 token for topic `prices`, an hour long.
read -r hs rs < <(python3 - "$secret" "$OUT/rsa.pem" <<'PY'
import base64, hashlib, hmac, json, subprocess, sys, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
claims = b64(json.dumps({"exp": int(time.time()) + 3600, "subscribe": ["prices"]}).encode())
def signed(alg, sign):
    body = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{claims}"
    return f"{body}.{b64(sign(body.encode()))}"
hs = signed("HS256", lambda m: hmac.new(sys.argv[1].encode(), m, hashlib.sha256).digest())
rs = signed("RS256", lambda m: subprocess.run(["openssl", "dgst", "-sha256", "-sign", sys.argv[2]],
                                              input=m, capture_output=True, check=True).stdout)
print(hs, rs)
PY
)

start_server() { # args...; sets $spid $addr
    taskset -c 0 "$BIN/uringcast" --listen 127.0.0.1:0 --workers 1 --ping-interval 0 "$@" \
        >"$OUT/server.out" 2>"$OUT/server.err" &
    spid=$!
    addr=
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/^listening on //p' "$OUT/server.out")
        [[ -n $addr ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || { cat "$OUT/server.err" >&2; exit 1; }
}
stop_server() { kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }

handshakes() { # name token args...
    local name=$1 token=$2
    shift 2
    start_server --mode broadcast "$@"
    taskset -c 1 "$BIN/uringcast-load" connect "ws://$addr/prices?token=$token" \
        --connections "$CONNECTIONS" --rate "$RATE" --duration 1 --threads 1 --quiet \
        --server-pid "$spid" --json "$OUT/connect-$name-$run.json" >"$OUT/connect-$name-$run.txt" 2>&1 || true
    stop_server
    python3 - "$OUT/connect-$name-$run.json" "$name" "$run" <<'PY' | tee -a "$OUT/results.txt"
import json, sys
r = json.load(open(sys.argv[1]))
n = r["connections"]["established"]
cpu = r["server"]["cpu_s"]
lat = r.get("latency_us") or {}
print(f"handshakes run={sys.argv[3]} {sys.argv[2]}: established={n} server_cpu_s={cpu} "
      f"server_cpu_us_per_handshake={cpu / max(n, 1) * 1e6:.1f} "
      f"handshake_p50_us={lat.get('p50')} p99_us={lat.get('p99')}")
PY
}

echo_run() { # name args...
    local name=$1
    shift
    start_server --mode echo "$@"
    taskset -c 1 scripts/peers/target/release/echo-client --connect "$addr" --connections 100 \
        --size 32 --warmup-secs 1 --secs "$SECS" --server-pid "$spid" >"$OUT/echo-$name-$run.txt" 2>&1 || true
    stop_server
    echo "echo run=$run $name: $(grep '^msgs=' "$OUT/echo-$name-$run.txt" | tail -n1)" | tee -a "$OUT/results.txt"
}

echo "# bench_caps $(date -Is) $(git rev-parse --short HEAD) runs=$RUNS load1=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/results.txt"
for run in $(seq "$RUNS"); do
    handshakes none "$hs"
    handshakes hs256 "$hs" --jwt-secret "$secret"
    handshakes rs256 "$rs" --jwt-public-key "$OUT/rsa_public.pem"
    if [[ ${ECHO:-1} == 1 ]]; then
        echo_run none
        echo_run caps --max-messages-per-second 1000000000 --max-bytes-per-second 1000000000000
    fi
done
