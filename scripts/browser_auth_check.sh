#!/usr/bin/env bash
# Opens two WebSockets from headless Chromium (Debian's package, installed here if missing)
# against `uringcast --mode broadcast --jwt-secret`: one to ws://.../prices?token=<JWT> (the
# only way a browser can send a token on a WebSocket), which must open, publish into its room
# and read its own message back, then close with 1000; and one to ws://.../prices without a
# token, which the server refuses with 401 before the upgrade, so the page sees it fail (1006)
# without ever opening. The server's /metrics must then count one `token_missing` refusal.
#
# Usage: scripts/browser_auth_check.sh [--no-build]
# URINGCAST_BIN picks the server binary (default target/release/uringcast).
# Prints `SKIP browser_auth_check: chromium missing` and exits 0 when Chromium cannot be
# installed; exits 1 when the page does not see what it should.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${URINGCAST_BIN:-target/release/uringcast}
[ "${1:-}" = --no-build ] || [ -n "${URINGCAST_BIN:-}" ] || cargo build --release -q
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ] && command -v apt-get >/dev/null; then
    echo "[browser] installing chromium from Debian's packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/tmp/uringcast-chromium-install.log 2>&1 || true
    CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "SKIP browser_auth_check: chromium missing"
    exit 0
fi
work=$(mktemp -d /tmp/uringcast-browser-auth.XXXX)
server_pid=
chromium_pid=
cleanup() {
    [ -n "$chromium_pid" ] && kill "$chromium_pid" 2>/dev/null && wait "$chromium_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
secret=$(head -c 24 /dev/urandom | base64)
timeout 120 "$BIN" --listen 127.0.0.1:0 --mode broadcast --workers 1 --jwt-secret "$secret" \
    >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do grep -q '^listening on' "$work/server.out" && break; sleep 0.1; done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$work/server.out")
[ -n "$port" ] || { echo "browser_auth_check: the server did not start" >&2; cat "$work/server.err" >&2; exit 1; }
# What a backend does: an HS256 token for this user, its topics and five minutes.
token=$(SECRET="$secret" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "browser", "exp": int(time.time()) + 300,
                         "subscribe": ["prices"], "publish": ["prices"]}).encode())
mac = hmac.new(os.environ["SECRET"].encode(), f"{header}.{claims}".encode(), hashlib.sha256)
print(f"{header}.{claims}.{b64(mac.digest())}")
PY
)
cat >"$work/page.html" <<HTML
<!doctype html>
<title>pending</title>
<script>
const results = {};
function report() {
  if (results.with && results.without) {
    document.title = "with=" + results.with + ";without=" + results.without;
  }
}
const good = new WebSocket("ws://127.0.0.1:$port/prices?token=$token");
let echo = "none";
good.onopen = () => good.send("tick 42");
good.onmessage = (e) => { echo = e.data === "tick 42" ? "same" : "different"; good.close(1000, "done"); };
good.onclose = (e) => { results.with = "echo:" + echo + ",close:" + e.code; report(); };
const bad = new WebSocket("ws://127.0.0.1:$port/prices");
let opened = false;
bad.onopen = () => { opened = true; };
bad.onclose = (e) => { results.without = "opened:" + opened + ",close:" + e.code; report(); };
</script>
HTML
debug_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$work/profile" \
    --remote-debugging-address=127.0.0.1 --remote-debugging-port="$debug_port" \
    "file://$work/page.html" >"$work/chromium.out" 2>"$work/chromium.err" &
chromium_pid=$!
# The page reports in its title, read through the DevTools HTTP endpoint: a real signal that
# both connections ended, rather than a fixed wait.
result=pending
for _ in $(seq 1 300); do
    result=$(curl -s "http://127.0.0.1:$debug_port/json" 2>/dev/null | python3 -c '
import json, sys
try:
    titles = [t.get("title", "") for t in json.load(sys.stdin) if t.get("type") == "page"]
    done = [t for t in titles if t.startswith("with=")]
    print(done[0] if done else "pending")
except Exception:
    print("pending")') || result=pending
    [ "$result" != pending ] && break
    sleep 0.1
done
kill "$chromium_pid" 2>/dev/null || true
wait "$chromium_pid" 2>/dev/null || true
chromium_pid=
echo "browser_auth_check: $("$CHROMIUM" --version 2>/dev/null | head -1): $result"
expected="with=echo:same,close:1000;without=opened:false,close:1006"
if [ "$result" != "$expected" ]; then
    echo "browser_auth_check: FAILED (expected $expected)" >&2
    grep -v dbus "$work/chromium.err" | tail -20 >&2 || true
    exit 1
fi
missing=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "uringcast_refusals_total{reason=\"token_missing\"}" {print $2}')
echo "browser_auth_check: server refused ${missing:-0} upgrade(s) for a missing token"
if [ "${missing:-0}" != 1 ]; then
    echo "browser_auth_check: FAILED (expected exactly one token_missing refusal)" >&2
    exit 1
fi
