#!/usr/bin/env bash
# Server-Sent Events with real clients, each against a uringcast started here with
# --history, every stream made to drop and come back:
#   1. headless Chromium's EventSource, on a page from another origin (CORS exercised),
#      through a cutting proxy: the stream is cut while publications are made, the browser
#      reconnects by itself with Last-Event-ID, and must end with every publication exactly
#      once and in order;
#   2. Python's sseclient-py (PyPI) through nginx (proxy_buffering off), and
#   3. the same Python client over https:// (TLS in uringcast's loop), reconnecting with
#      Last-Event-ID: exactly what it missed, then live.
# Each part prints PASS, or SKIP with the reason when its component cannot be installed.
#
# Usage: scripts/sse_check.sh [--no-build]
# Exits 1 when a part that ran failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "${1:-}" = --no-build ] || cargo build --release -q
BIN=target/release/uringcast
work=$(mktemp -d /tmp/uringcast-sse.XXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
failed=0
log() { echo "[sse] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server NAME ARGS...: starts uringcast on a free port; sets $port.
start_server() {
    local name=$1; shift
    timeout 300 "$BIN" --listen 127.0.0.1:0 --workers 2 --publish-token T --history 100 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    for _ in $(seq 1 150); do grep -q '^listening on' "$work/$name.out" && break; sleep 0.1; done
    port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$work/$name.out")
    [ -n "$port" ] || { log "$name: the server did not start"; cat "$work/$name.err" >&2; exit 1; }
}
publish() { # publish SCHEME PORT TOPIC TEXT
    curl -sfk -X POST -H 'Authorization: Bearer T' -H 'Content-Type: text/plain' \
        --data "$4" "$1://127.0.0.1:$2/publish/$3" >/dev/null
}

# ---------------------------------------------------------------------------------------
# The Python client (sseclient-py), used through nginx and over TLS.
# ---------------------------------------------------------------------------------------
PYTHON_OK=1
if ! python3 -c 'import sseclient' 2>/dev/null; then
    pip install -q sseclient-py >"$work/pip.log" 2>&1 || PYTHON_OK=0
fi
cat >"$work/client.py" <<'PY'
"""Reads N events from an SSE URL with sseclient-py; prints `id data` per event."""
import sys, requests, sseclient
url, count = sys.argv[1], int(sys.argv[2])
headers = {"Accept": "text/event-stream"}
if len(sys.argv) > 3:
    headers["Last-Event-ID"] = sys.argv[3]
with requests.get(url, stream=True, headers=headers, timeout=120, verify=False) as response:
    assert response.status_code == 200, response.status_code
    seen = 0
    for event in sseclient.SSEClient(response).events():
        if not event.data:
            continue
        print(event.event, event.id, event.data, flush=True)
        seen += 1
        if seen == count:
            break
PY
# python_round SCHEME PORT NAME: 3 events, cut, 3 published while away, reconnect, 4 events.
python_round() {
    local scheme=$1 port=$2 name=$3
    python3 "$work/client.py" "$scheme://127.0.0.1:$port/feed" 3 >"$work/$name.first" 2>"$work/$name.err" &
    local client=$!
    # The client is subscribed once the server counts its stream (up to 60 s: a busy
    # machine can take long to start Python and make a TLS handshake); publishing before
    # that would publish to nobody.
    local subscribed=0
    for _ in $(seq 1 600); do
        if curl -sk "$4/metrics" | grep -q '^uringcast_subscriptions{worker="[01]"} [1-9]'; then
            subscribed=1; break
        fi
        sleep 0.1
    done
    [ "$subscribed" = 1 ] || { log "$name: the client's stream never subscribed"; cat "$work/$name.err" >&2; return 1; }
    for i in 1 2 3; do publish "$scheme" "$port" feed "m$i"; done
    wait "$client" || { log "$name: the first stream failed"; cat "$work/$name.err" >&2; return 1; }
    local last
    last=$(tail -1 "$work/$name.first" | awk '{print $2}')
    for i in 4 5 6; do publish "$scheme" "$port" feed "m$i"; done
    python3 "$work/client.py" "$scheme://127.0.0.1:$port/feed" 4 "$last" >"$work/$name.second" 2>>"$work/$name.err" &
    client=$!
    for _ in $(seq 1 100); do grep -q ' m6$' "$work/$name.second" 2>/dev/null && break; sleep 0.1; done
    publish "$scheme" "$port" feed m7
    wait "$client" || { log "$name: the second stream failed"; cat "$work/$name.err" >&2; return 1; }
    local got
    got=$(cat "$work/$name.first" "$work/$name.second" | awk '{print $3}' | tr '\n' ' ')
    if [ "$got" != "m1 m2 m3 m4 m5 m6 m7 " ]; then
        log "$name: FAILED, got: $got"; cat "$work/$name.first" "$work/$name.second" >&2; return 1
    fi
    echo "PASS sse_check $name: m1..m7 exactly once, in order, across a reconnect ($(head -1 "$work/$name.first" | awk '{print $2}') ...)"
}

# 2. Through nginx.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ] && command -v apt-get >/dev/null; then
    log "installing nginx-light"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 \
        install -y -qq nginx-light) >"$work/nginx-install.log" 2>&1 || true
fi
if [ "$PYTHON_OK" = 0 ]; then
    echo "SKIP sse_check nginx: sseclient-py missing (pip install failed)"
    echo "SKIP sse_check tls: sseclient-py missing (pip install failed)"
elif [ ! -x "$NGINX" ]; then
    echo "SKIP sse_check nginx: nginx missing"
else
    start_server nginx-node
    node_port=$port
    lb=$(free_port)
    cat >"$work/nginx.conf" <<NGINX
worker_processes 1; pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  upstream node { server 127.0.0.1:$node_port; }
  server {
    listen 127.0.0.1:$lb;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
NGINX
    "$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log"
    for _ in $(seq 1 100); do [ -s "$work/nginx.pid" ] && break; sleep 0.05; done
    python_round http "$lb" nginx "http://127.0.0.1:$node_port" || failed=1
fi

# 3. Over TLS.
if [ "$PYTHON_OK" = 1 ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" \
        -out "$work/cert.pem" 2>/dev/null
    start_server tls-node --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
    PYTHONWARNINGS=ignore python_round https "$port" tls "https://127.0.0.1:$port" || failed=1
fi

# ---------------------------------------------------------------------------------------
# 1. Chromium's EventSource, cross-origin, through a proxy that cuts the stream.
# ---------------------------------------------------------------------------------------
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ] && command -v apt-get >/dev/null; then
    log "installing chromium"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 \
        install -y -qq chromium) >"$work/chromium-install.log" 2>&1 || true
    CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "SKIP sse_check chromium: chromium missing"
else
    page_port=$(free_port)
    proxy_port=$(free_port)
    start_server browser-node --allowed-origins "http://127.0.0.1:$page_port"
    node_port=$port
    # A TCP proxy that forwards to the node; `cut` (a line on its stdin pipe) closes every
    # connection and refuses new ones until `resume`.
    cat >"$work/proxy.py" <<'PY'
import asyncio, sys
listen, target = int(sys.argv[1]), int(sys.argv[2])
conns, state = set(), {"open": True}
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data); await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def handle(reader, writer):
    if not state["open"]:
        writer.close(); return
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        writer.close(); return
    conns.update({writer, up_writer})
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    conns.discard(writer); conns.discard(up_writer)
async def control():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "cut":
            state["open"] = False
            for w in list(conns): w.close()
        elif line.strip() == "resume":
            state["open"] = True
        print("ok", line.strip(), flush=True)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("proxy ready", flush=True)
    async with server:
        await control()
asyncio.run(main())
PY
    mkfifo "$work/proxy.in"
    python3 "$work/proxy.py" "$proxy_port" "$node_port" <"$work/proxy.in" >"$work/proxy.out" 2>&1 &
    pids+=($!)
    exec 9>"$work/proxy.in"
    for _ in $(seq 1 100); do grep -q 'proxy ready' "$work/proxy.out" && break; sleep 0.05; done
    cat >"$work/page.html" <<HTML
<!doctype html>
<title>pending</title>
<script>
const seen = [];
const feed = new EventSource("http://127.0.0.1:$proxy_port/feed");
let opens = 0, errors = 0;
const report = () => { document.title = "opens=" + opens + ";errors=" + errors + ";seen=" + seen.join(","); };
feed.onopen = () => { opens += 1; report(); };
feed.onerror = () => { errors += 1; report(); };
feed.onmessage = (e) => { seen.push(e.data + "@" + e.lastEventId.split(":")[1]); report(); };
feed.addEventListener("reset", (e) => { seen.push("reset"); report(); });
</script>
HTML
    (cd "$work" && python3 -m http.server "$page_port" --bind 127.0.0.1 >"$work/http.log" 2>&1) &
    pids+=($!)
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$page_port/page.html" >/dev/null && break; sleep 0.05; done
    debug_port=$(free_port)
    timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$work/profile" --remote-debugging-address=127.0.0.1 \
        --remote-debugging-port="$debug_port" "http://127.0.0.1:$page_port/page.html" \
        >"$work/chromium.out" 2>"$work/chromium.err" &
    pids+=($!)
    title() {
        curl -s "http://127.0.0.1:$debug_port/json" 2>/dev/null | python3 -c '
import json, sys
try:
    print(next(t["title"] for t in json.load(sys.stdin) if t.get("type") == "page" and t["title"].startswith("opens=")))
except Exception:
    print("pending")' || echo pending
    }
    wait_title() { # wait_title REGEX: up to 30 s
        for _ in $(seq 1 300); do t=$(title); [[ "$t" =~ $1 ]] && return 0; sleep 0.1; done
        log "chromium: waited for /$1/, title is $t"; return 1
    }
    ok=1
    wait_title '^opens=1;' || ok=0
    if [ "$ok" = 1 ]; then
        for i in 1 2 3; do publish http "$node_port" feed "m$i"; done
        wait_title 'seen=m1@1,m2@2,m3@3$' || ok=0
    fi
    if [ "$ok" = 1 ]; then
        echo cut >&9
        wait_title ';errors=1;' || ok=0
        for i in 4 5 6; do publish http "$node_port" feed "m$i"; done
        echo resume >&9
        wait_title '^opens=2;.*m6@6$' || ok=0
        publish http "$node_port" feed m7
        wait_title 'm7@7$' || ok=0
    fi
    result=$(title)
    expected='seen=m1@1,m2@2,m3@3,m4@4,m5@5,m6@6,m7@7'
    if [ "$ok" = 1 ] && [[ "$result" == *";$expected" ]]; then
        echo "PASS sse_check chromium: $("$CHROMIUM" --version 2>/dev/null | head -1): $result"
    else
        log "chromium: FAILED: $result"
        grep -v dbus "$work/chromium.err" | tail -10 >&2 || true
        failed=1
    fi
fi
exit $failed
