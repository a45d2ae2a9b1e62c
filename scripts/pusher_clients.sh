#!/usr/bin/env bash
# Installs the real Pusher clients the integration tests drive, into target/pusher-clients/
# (never committed): pusher-js, laravel-echo and the `pusher` server SDK from npm, and the
# Python `pusher` package from PyPI into a virtualenv there.
#
#   scripts/pusher_clients.sh          # install (idempotent)
#   PUSHER_CLIENTS=/path scripts/pusher_clients.sh
#
# The tests look for the same directory (PUSHER_CLIENTS, default target/pusher-clients) and
# print SKIP when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${PUSHER_CLIENTS:-$PWD/target/pusher-clients}"
mkdir -p "$dir"

# Versions pinned so a test run means the same thing tomorrow.
PUSHER_JS=8.4.0
LARAVEL_ECHO=2.1.5
PUSHER_NODE=5.2.0
PUSHER_PY=3.3.3

if command -v npm >/dev/null; then
    if [ ! -f "$dir/package.json" ]; then
        printf '{"name":"uringcast-pusher-clients","private":true}\n' >"$dir/package.json"
    fi
    npm install --prefix "$dir" --no-audit --no-fund --silent \
        "pusher-js@$PUSHER_JS" "laravel-echo@$LARAVEL_ECHO" "pusher@$PUSHER_NODE" "ws@8"
    echo "npm clients in $dir/node_modules"
else
    echo "npm not found: the Node clients are not installed" >&2
fi

if command -v python3 >/dev/null; then
    if [ ! -x "$dir/venv/bin/python" ]; then
        python3 -m venv "$dir/venv"
    fi
    "$dir/venv/bin/pip" install --quiet "pusher==$PUSHER_PY"
    echo "Python pusher in $dir/venv"
else
    echo "python3 not found: the Python SDK is not installed" >&2
fi
