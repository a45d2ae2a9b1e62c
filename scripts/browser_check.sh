#!/usr/bin/env bash
# Opens wss:// from headless Chromium (Debian's package, installed here if missing) against
# uringcast over TLS, with a certificate made here and trusted by its public key
# (--ignore-certificate-errors-spki-list trusts exactly that key, nothing else): the page
# connects (negotiating permessage-deflate, which Chromium offers by default and the server
# accepts with --deflate), sends a compressible message, reads the echo, closes with 1000 and
# reports what it saw in the DOM; the server's counters then show the message went compressed
# both ways.
#
# Usage: scripts/browser_check.sh [--no-build]
# Prints `SKIP browser_check: chromium missing` and exits 0 when Chromium cannot be installed;
# exits 1 when the page does not see its echo and a clean close.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "${1:-}" = --no-build ] || cargo build --release -q
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ] && command -v apt-get >/dev/null; then
    echo "[browser] installing chromium from Debian's packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/tmp/uringcast-chromium-install.log 2>&1 || true
    CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "SKIP browser_check: chromium missing"
    exit 0
fi
work=$(mktemp -d /tmp/uringcast-browser.XXXX)
server_pid=
chromium_pid=
cleanup() {
    [ -n "$chromium_pid" ] && kill "$chromium_pid" 2>/dev/null && wait "$chromium_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
spki=$(openssl x509 -pubkey -noout -in "$work/cert.pem" | openssl pkey -pubin -outform der \
    | openssl dgst -sha256 -binary | base64)
timeout 120 target/release/uringcast --listen 127.0.0.1:0 --tls-cert "$work/cert.pem" \
    --tls-key "$work/key.pem" --workers 1 --deflate >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do grep -q '^listening on' "$work/server.out" && break; sleep 0.1; done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$work/server.out")
[ -n "$port" ] || { echo "browser_check: the server did not start" >&2; cat "$work/server.err" >&2; exit 1; }
cat >"$work/page.html" <<HTML
<!doctype html>
<title>pending</title>
<script>
const ws = new WebSocket("wss://localhost:$port/");
const message = "hello from chromium, ".repeat(20);
let echo = "none";
ws.onopen = () => ws.send(message);
ws.onmessage = (e) => {
  echo = e.data === message ? "same" : "different(" + e.data.length + ")";
  ws.close(1000, "done");
};
ws.onclose = (e) => {
  document.title = "echo=" + echo + ";extensions=" + ws.extensions + ";close=" + e.code +
    ";clean=" + e.wasClean;
};
</script>
HTML
# The page reports in its title, read through the DevTools HTTP endpoint: a real signal that
# the close handshake finished, rather than a fixed wait.
debug_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$work/profile" --ignore-certificate-errors-spki-list="$spki" \
    --remote-debugging-address=127.0.0.1 --remote-debugging-port="$debug_port" \
    "file://$work/page.html" >"$work/chromium.out" 2>"$work/chromium.err" &
chromium_pid=$!
result=pending
for _ in $(seq 1 300); do
    result=$(curl -s "http://127.0.0.1:$debug_port/json" 2>/dev/null | python3 -c '
import json, sys
try:
    titles = [t.get("title", "") for t in json.load(sys.stdin) if t.get("type") == "page"]
    done = [t for t in titles if t.startswith("echo=")]
    print(done[0] if done else "pending")
except Exception:
    print("pending")') || result=pending
    [ "$result" != pending ] && break
    sleep 0.1
done
kill "$chromium_pid" 2>/dev/null || true
wait "$chromium_pid" 2>/dev/null || true
chromium_pid=
echo "browser_check: $("$CHROMIUM" --version 2>/dev/null | head -1): $result"
expected="echo=same;extensions=permessage-deflate; server_no_context_takeover; client_no_context_takeover;close=1000;clean=true"
if [ "$result" != "$expected" ]; then
    echo "browser_check: FAILED (expected the echo, permessage-deflate and a clean close 1000)" >&2
    grep -v dbus "$work/chromium.err" | tail -20 >&2 || true
    exit 1
fi
# The server's side: Chromium's message arrived compressed and the echo left compressed.
metrics=$(curl -sk "https://127.0.0.1:$port/metrics")
count() { echo "$metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {print s + 0}'; }
inflated=$(count uringcast_deflate_inflations_total)
compressed=$(count uringcast_deflate_frames_out_total)
echo "browser_check: server inflated $inflated message(s), sent $compressed compressed"
if [ "$inflated" -lt 1 ] || [ "$compressed" -lt 1 ]; then
    echo "browser_check: FAILED (the message did not go compressed both ways)" >&2
    exit 1
fi
