#!/usr/bin/env bash
# Runs the Autobahn|TestSuite 0.8.2 fuzzingclient (RFC 6455 conformance, cases 1.* to 10.*;
# with AUTOBAHN_DEFLATE=1, permessage-deflate too: cases 1.* to 13.* against --deflate)
# against uringcast in echo mode and fails unless every case is OK or INFORMATIONAL.
#
# Usage: scripts/autobahn.sh [--summary-md FILE] [--install-only] [--no-build] [-h|--help]
#
#   --summary-md FILE  also write the per-group results as a markdown table (for
#                      docs/CONFORMANCE.md); same as AUTOBAHN_SUMMARY_MD=FILE
#   --install-only     install the suite (if needed), print the wstest path and stop
#   --no-build         do not run `cargo build --release` (use the existing binary)
#
# Environment (all optional):
#   AUTOBAHN_PREFIX      private install prefix (default: $HOME/.cache/uringcast-autobahn).
#                        The suite needs Python 2.7: it is unpacked from Debian bullseye
#                        packages (dpkg -x, nothing installed system-wide), then pip 20.3.4 and
#                        autobahntestsuite 0.8.2 come from PyPI. Needs apt-get, dpkg, python3
#                        with pip, and a C compiler. Skipped when $AUTOBAHN_PREFIX/wstest works.
#   AUTOBAHN_CASES       comma-separated case patterns (default: 1.*,2.*,...,10.*), e.g. '1.*,2.*'
#   AUTOBAHN_TIMEOUT     seconds allowed for the whole wstest run (default: 1200; 2700 with
#                        AUTOBAHN_DEFLATE=1)
#   AUTOBAHN_SUMMARY_MD  same as --summary-md
#   AUTOBAHN_TLS=1       run over wss://: the server gets a self-signed certificate made here
#                        (openssl) and the suite connects with TLS (it does not verify
#                        certificates); reports go to target/autobahn-wss/
#   AUTOBAHN_DEFLATE=1   start the server with --deflate and run cases 1.* to 13.* (12.* and
#                        13.* are RFC 7692, permessage-deflate with every parameter); reports go
#                        to target/autobahn-deflate/
#   AUTOBAHN_URL         test this ws:// URL; no server is built or started
#   AUTOBAHN_SERVER_CMD  start this shell command instead of target/release/uringcast; like
#                        uringcast it must print `listening on HOST:PORT` on stdout when ready
#                        and exit 0 on SIGTERM
#
# When at most 20 cases fail (and no summary is being written), they are run once more alone
# against a fresh server: the suite's timeouts are wall-clock, so a case starved of CPU on a
# loaded machine passes the retry, while a real non-conformance fails it again. The log says
# which cases needed it.
#
# Output: target/autobahn/reports/ (index.json and the HTML report), target/autobahn/*.log.
# Exit status: 0 when every case passed, 1 otherwise (failing case, timeout, server error).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${AUTOBAHN_PREFIX:-$HOME/.cache/uringcast-autobahn}
DEFLATE=${AUTOBAHN_DEFLATE:-0}
if [ "$DEFLATE" = 1 ]; then
    CASES=${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.*,13.*}
else
    CASES=${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*}
fi
# 12.* and 13.* send a thousand messages a case through the suite's Python 2.7 zlib: the
# deflate run takes about 17 minutes here, the others under one.
if [ "${AUTOBAHN_DEFLATE:-0}" = 1 ]; then WSTEST_TIMEOUT=${AUTOBAHN_TIMEOUT:-2700}; else WSTEST_TIMEOUT=${AUTOBAHN_TIMEOUT:-1200}; fi
SUMMARY_MD=${AUTOBAHN_SUMMARY_MD:-}
SERVER_START_TIMEOUT=30 # seconds to wait for `listening on`
SERVER_STOP_TIMEOUT=15  # seconds to wait for the exit after SIGTERM
TLS=${AUTOBAHN_TLS:-0}
if [ "$TLS" = 1 ]; then WORK="$ROOT/target/autobahn-wss"; else WORK="$ROOT/target/autobahn"; fi
[ "$DEFLATE" = 1 ] && WORK="$WORK-deflate"
REPORTS="$WORK/reports"

install_only=0
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --summary-md) [ $# -ge 2 ] || { echo "--summary-md needs a file" >&2; exit 1; }
                      SUMMARY_MD=$2; shift 2 ;;
        --summary-md=*) SUMMARY_MD=${1#*=}; shift ;;
        --install-only) install_only=1; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 1 ;;
    esac
done
# Relative paths are taken from where the script was called, before any cd.
if [ -n "$SUMMARY_MD" ] && [ "${SUMMARY_MD#/}" = "$SUMMARY_MD" ]; then
    SUMMARY_MD="$PWD/$SUMMARY_MD"
fi

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# 1. Install the suite into $PREFIX (adapted from a recipe known to work on Debian 12).
# ---------------------------------------------------------------------------------------
wstest_works() { [ -x "$PREFIX/wstest" ] && "$PREFIX/wstest" --help >/dev/null 2>&1; }

install_wstest() {
    local ilog="$PREFIX/install.log"
    log "installing Autobahn|TestSuite 0.8.2 into $PREFIX (a few minutes; log: $ilog)"
    mkdir -p "$PREFIX"
    # Start over from a clean slate so that a failed earlier attempt leaves nothing behind.
    rm -rf "$PREFIX/root" "$PREFIX/site" "$PREFIX/ab" "$PREFIX/debs" "$PREFIX/wheels" "$PREFIX/wstest"
    mkdir -p "$PREFIX"/{apt/lists/partial,apt/cache/archives/partial,debs,root,site,ab,wheels}
    : >"$ilog"

    # Python 2.7 from Debian bullseye (the last release shipping it), from the same mirror
    # the machine already uses, with private apt state: no system-wide change.
    local mirror
    mirror=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2; exit}' || true)
    [ -n "$mirror" ] || mirror=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2; exit}' || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "deb $mirror bullseye main" >"$PREFIX/apt/sources.list"
    local apt_opts=(-oDir::Etc::SourceList="$PREFIX/apt/sources.list" -oDir::Etc::SourceParts=/dev/null
                    -oDir::State::Lists="$PREFIX/apt/lists" -oDir::Cache="$PREFIX/apt/cache"
                    -oAPT::Sandbox::User="$(id -un)")
    log "  downloading Python 2.7 packages from $mirror (bullseye)"
    apt-get "${apt_opts[@]}" update >>"$ilog" 2>&1 || { tail -n 20 "$ilog" >&2; die "apt-get update failed"; }
    (cd "$PREFIX/debs" && apt-get "${apt_opts[@]}" download python2.7 python2.7-minimal \
        libpython2.7-minimal libpython2.7-stdlib libpython2.7 libpython2.7-dev python2.7-dev \
        libssl1.1 libffi7) >>"$ilog" 2>&1 || { tail -n 20 "$ilog" >&2; die "apt-get download failed"; }
    local deb
    for deb in "$PREFIX"/debs/*.deb; do dpkg -x "$deb" "$PREFIX/root"; done
    local py="$PREFIX/root/usr/bin/python2.7" libdir
    [ -x "$py" ] || die "python2.7 missing after unpacking the packages"
    libdir=$(dirname "$(find "$PREFIX/root/usr/lib" -name 'libssl.so.1.1' -print -quit)")
    # Runs the unpacked Python 2.7 (it must not see these variables from the host's python3).
    py2() { LD_LIBRARY_PATH="$libdir" PYTHONHOME="$PREFIX/root/usr" "$py" "$@"; }

    # pip for Python 2.7 (the last pip that supports it), fetched by the host's python3.
    log "  installing pip 20.3.4 for Python 2.7"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 27 -d "$PREFIX/wheels" \
        pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 >>"$ilog" 2>&1 \
        || { tail -n 20 "$ilog" >&2; die "downloading pip for Python 2.7 failed"; }
    py2 "$PREFIX/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install --no-index \
        --find-links "$PREFIX/wheels" --target "$PREFIX/site" pip setuptools wheel >>"$ilog" 2>&1 \
        || { tail -n 20 "$ilog" >&2; die "installing pip for Python 2.7 failed"; }

    # The suite, with its dependencies pinned to versions known to work with Python 2.7.
    log "  installing autobahntestsuite 0.8.2 and its dependencies (some are compiled)"
    cat >"$PREFIX/constraints.txt" <<'EOF'
autobahntestsuite==0.8.2
autobahn==0.10.9
Twisted==20.3.0
attrs==21.4.0
Automat==22.10.0
constantly==15.1.0
cffi==1.15.1
cryptography==3.3.2
enum34==1.1.10
hyperlink==21.0.0
idna==2.10
incremental==22.10.0
ipaddress==1.0.23
Jinja2==2.11.3
klein==20.6.0
MarkupSafe==1.1.1
pyasn1==0.5.1
pyasn1-modules==0.3.0
pycparser==2.21
PyHamcrest==1.10.1
pyOpenSSL==21.0.0
service-identity==21.1.0
six==1.17.0
Tubes==0.2.1
txaio==2.1.0
typing==3.10.0.0
ujson==2.0.3
Werkzeug==1.0.1
wsaccel==0.6.6
zope.interface==5.5.2
EOF
    CFLAGS="-I$PREFIX/root/usr/include/python2.7 -I$PREFIX/root/usr/include" PYTHONPATH="$PREFIX/site" \
        py2 -m pip install --target "$PREFIX/ab" -c "$PREFIX/constraints.txt" \
        autobahntestsuite==0.8.2 >>"$ilog" 2>&1 \
        || { tail -n 30 "$ilog" >&2; die "installing autobahntestsuite failed"; }

    cat >"$PREFIX/wstest" <<EOW
#!/bin/sh
# wstest of Autobahn|TestSuite 0.8.2, installed by uringcast's scripts/autobahn.sh
export LD_LIBRARY_PATH="$libdir" PYTHONHOME="$PREFIX/root/usr" PYTHONWARNINGS=ignore
exec "$py" -W ignore -c "import site,sys; site.addsitedir('$PREFIX/site'); site.addsitedir('$PREFIX/ab'); sys.argv=['wstest']+sys.argv[1:]; from autobahntestsuite.wstest import run; run()" "\$@"
EOW
    chmod +x "$PREFIX/wstest"
    wstest_works || die "the installed wstest does not run (see $ilog)"
    log "installed $PREFIX/wstest"
}

if wstest_works; then
    log "using $PREFIX/wstest (already installed)"
else
    install_wstest
fi
WSTEST="$PREFIX/wstest"
if [ "$install_only" = 1 ]; then echo "$WSTEST"; exit 0; fi

# ---------------------------------------------------------------------------------------
# 2. Start the server under test (unless AUTOBAHN_URL names one already running).
# ---------------------------------------------------------------------------------------
mkdir -p "$WORK"
server_pid=
# shellcheck disable=SC2317  # called from the EXIT trap
stop_server_on_exit() { # on an early exit only: the normal path stops the server in step 4
    [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
}
trap stop_server_on_exit EXIT
trap 'exit 130' INT TERM

if [ -n "${AUTOBAHN_URL:-}" ]; then
    url=$AUTOBAHN_URL
    log "testing the server at $url (AUTOBAHN_URL)"
else
    if [ -n "${AUTOBAHN_SERVER_CMD:-}" ]; then
        server_cmd=(bash -c "exec $AUTOBAHN_SERVER_CMD")
    else
        if [ "$build" = 1 ]; then
            log "cargo build --release"
            (cd "$ROOT" && cargo build --release --bin uringcast)
        fi
        # Honour CARGO_TARGET_DIR (and any configured target dir) as cargo does.
        target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) \
          || target_dir="$ROOT/target"
        [ -x "$target_dir/release/uringcast" ] || die "$target_dir/release/uringcast not found"
        server_cmd=("$target_dir/release/uringcast" --listen 127.0.0.1:0 --mode echo --workers 2
                    --max-message-bytes 16777216)
        [ "$DEFLATE" = 1 ] && server_cmd+=(--deflate)
        if [ "$TLS" = 1 ]; then
            mkdir -p "$WORK/tls"
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
                -addext basicConstraints=critical,CA:FALSE \
                -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null \
                || die "openssl could not make the test certificate"
            server_cmd+=(--tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem")
        fi
    fi
    log "starting: ${server_cmd[*]}"
    : >"$WORK/server.stdout.log"
    "${server_cmd[@]}" >"$WORK/server.stdout.log" 2>"$WORK/server.stderr.log" </dev/null &
    server_pid=$!

    # Wait for the one line `listening on HOST:PORT`.
    line=
    for _ in $(seq $((SERVER_START_TIMEOUT * 10))); do
        line=$(grep -m1 -E '^listening on [^ ]+:[0-9]+$' "$WORK/server.stdout.log" || true)
        [ -n "$line" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        tail -n 20 "$WORK/server.stdout.log" "$WORK/server.stderr.log" >&2 || true
        kill -0 "$server_pid" 2>/dev/null && die "no 'listening on' line within ${SERVER_START_TIMEOUT}s"
        die "the server exited before printing 'listening on'"
    fi
    addr=${line#listening on }
    if [ "$TLS" = 1 ]; then url="wss://$addr"; else url="ws://$addr"; fi
    log "server pid $server_pid is $line"
fi

# ---------------------------------------------------------------------------------------
# 3. Run the fuzzingclient, bounded in time.
# ---------------------------------------------------------------------------------------
rm -rf "$REPORTS"
spec="$WORK/fuzzingclient.json"
URL="$url" OUTDIR="$REPORTS" CASES="$CASES" python3 - >"$spec" <<'PY'
import json, os
cases = [c.strip() for c in os.environ["CASES"].split(",") if c.strip()]
print(json.dumps({
    "outdir": os.environ["OUTDIR"],
    "servers": [{"agent": "uringcast", "url": os.environ["URL"]}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}, indent=2))
PY
log "wstest -m fuzzingclient, cases $CASES, at most ${WSTEST_TIMEOUT}s (log: $WORK/wstest.log)"
start=$(date +%s)
rc=0
(cd "$WORK" && timeout --kill-after=30 "$WSTEST_TIMEOUT" "$WSTEST" -m fuzzingclient -s "$spec") \
    >"$WORK/wstest.log" 2>&1 || rc=$?
log "wstest finished in $(( $(date +%s) - start ))s with status $rc"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    last=$(grep -o 'test case ID [^ ]*' "$WORK/wstest.log" | tail -n 1 | sed 's/test case ID //' || true)
    die "wstest did not finish within ${WSTEST_TIMEOUT}s (last case started: ${last:-none}; log: $WORK/wstest.log)"
fi
[ "$rc" = 0 ] || { tail -n 20 "$WORK/wstest.log" >&2; die "wstest failed with status $rc"; }

# ---------------------------------------------------------------------------------------
# 4. Stop the server: SIGTERM must make it exit 0.
# ---------------------------------------------------------------------------------------
server_ok=1
if [ -n "$server_pid" ]; then
    if ! kill -0 "$server_pid" 2>/dev/null; then
        src=0; wait "$server_pid" || src=$?
        log "FAIL: the server died during the run (exit status $src); see $WORK/server.stderr.log"
        server_ok=0
    else
        kill -TERM "$server_pid"
        for _ in $(seq $((SERVER_STOP_TIMEOUT * 10))); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            kill -KILL "$server_pid" 2>/dev/null || true
            log "FAIL: the server did not exit within ${SERVER_STOP_TIMEOUT}s of SIGTERM"
            server_ok=0
        fi
        src=0; wait "$server_pid" || src=$?
        if [ "$server_ok" = 1 ] && [ "$src" != 0 ]; then
            log "FAIL: the server exited with status $src after SIGTERM (expected 0)"
            server_ok=0
        elif [ "$server_ok" = 1 ]; then
            log "server exited 0 after SIGTERM"
        fi
    fi
    server_pid=
fi

# ---------------------------------------------------------------------------------------
# 5. Verdict: every case's behavior and behaviorClose must be OK or INFORMATIONAL.
# ---------------------------------------------------------------------------------------
summary_args=("$REPORTS/index.json" --agent uringcast)
[ -z "$SUMMARY_MD" ] || summary_args+=(--summary-md "$SUMMARY_MD")
verdict=0
python3 "$ROOT/scripts/autobahn_summary.py" "${summary_args[@]}" || verdict=1
log "HTML report: $REPORTS/index.html"
[ -z "$SUMMARY_MD" ] || [ ! -f "$SUMMARY_MD" ] || log "markdown summary written to $SUMMARY_MD"
if [ "$verdict" = 0 ] && [ "$server_ok" = 1 ]; then
    if [ -n "${AUTOBAHN_RETRY_OF:-}" ]; then
        log "PASS on the retry of: $AUTOBAHN_RETRY_OF (they failed once, most likely starved of"
        log "CPU on a loaded machine; first report kept in $WORK/reports.first)"
    fi
    log "PASS"
    exit 0
fi
# One retry of the failing cases alone, against a fresh server: a case that fails for want of
# CPU (the suite's timeouts are wall-clock) passes it; a non-conformance fails it again. Not
# for a run that writes the docs' summary, nor after a server failure.
if [ "$verdict" = 1 ] && [ "$server_ok" = 1 ] && [ -z "${AUTOBAHN_RETRY_OF:-}" ] \
    && [ -z "$SUMMARY_MD" ] && [ -z "${AUTOBAHN_URL:-}" ]; then
    failing=$(python3 - "$REPORTS/index.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1])).get("uringcast", {})
ok = ("OK", "INFORMATIONAL")
bad = [c for c, r in results.items() if r.get("behavior") not in ok or r.get("behaviorClose") not in ok]
print(",".join(sorted(bad)) if 0 < len(bad) <= 20 else "")
PY
) || failing=
    if [ -n "$failing" ]; then
        log "retrying the failing case(s) once: $failing"
        rm -rf "$WORK/reports.first" && cp -r "$REPORTS" "$WORK/reports.first"
        AUTOBAHN_CASES="$failing" AUTOBAHN_RETRY_OF="$failing" exec "$0" --no-build
    fi
fi
log "FAIL"
exit 1
