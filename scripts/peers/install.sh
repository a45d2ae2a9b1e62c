# Sourced by the benchmark scripts: installs the JavaScript peers from the npm registry into
# target/peers/<name>, at the versions scripts/peers/<name>/package.json pins (again whenever
# the pin changes). `peer_install bun` then `$bun`; `peer_install node` then NODE_PATH=$node_path;
# `peer_install socketio` then NODE_PATH=$socketio_path. `peer_install_gorilla` and
# `peer_install_channels` (below) install the Go and Python peers.
peer_install() { # bun | node
  local dir=target/peers/$1
  if ! cmp -s "scripts/peers/$1/package.json" "$dir/package.json" || [ ! -d "$dir/node_modules" ]; then
    echo "installing $1's peer from npm into $dir" >&2
    rm -rf "$dir"; mkdir -p "$dir"
    cp "scripts/peers/$1/package.json" "$dir/"
    (cd "$dir" && timeout 600 npm install --no-audit --no-fund --silent >/dev/null)
  fi
}
bun=target/peers/bun/node_modules/.bin/bun
node_path=target/peers/node/node_modules
socketio_path=target/peers/socketio/node_modules

# Gorilla WebSocket (Go), from Debian's packages: golang-go and golang-github-gorilla-websocket-dev
# (installed with apt-get when missing and this runs as root), built in GOPATH mode against the
# packaged source into $gorilla_bin (again whenever main.go changes).
gorilla_bin=target/peers/gorilla/gorilla-server
gorilla_src=/usr/share/gocode
peer_install_gorilla() {
  if ! command -v go >/dev/null || [ ! -d "$gorilla_src/src/github.com/gorilla/websocket" ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "installing golang-go and golang-github-gorilla-websocket-dev from Debian" >&2
    local pkgs=(golang-go golang-github-gorilla-websocket-dev)
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
      { timeout 300 apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1; } ||
      return 1
  fi
  if [ ! -x "$gorilla_bin" ] || [ scripts/peers/gorilla/main.go -nt "$gorilla_bin" ]; then
    echo "building the Gorilla WebSocket peer into $gorilla_bin" >&2
    mkdir -p target/peers/gorilla
    local out=$PWD/$gorilla_bin cache=$PWD/target/peers/gorilla/cache
    (cd scripts/peers/gorilla && GO111MODULE=off GOPATH=$gorilla_src GOCACHE=$cache timeout 600 go build -o "$out" .)
  fi
}

# Django Channels and Daphne, from PyPI into a venv at $channels_venv, at the versions
# scripts/peers/channels/requirements.txt pins (again whenever the pins change).
channels_venv=target/peers/channels/venv
peer_install_channels() {
  local dir=target/peers/channels
  if ! cmp -s scripts/peers/channels/requirements.txt "$dir/requirements.txt" || [ ! -x "$channels_venv/bin/daphne" ]; then
    echo "installing Django Channels and Daphne from PyPI into $dir" >&2
    rm -rf "$dir"; mkdir -p "$dir"
    python3 -m venv "$channels_venv" || return 1
    timeout 600 "$channels_venv/bin/pip" install -q -r scripts/peers/channels/requirements.txt >/dev/null || return 1
    cp scripts/peers/channels/requirements.txt "$dir/"
  fi
}

# Sockudo (a Pusher-protocol server in Rust), for the Pusher scenarios: `cargo install sockudo
# --version $sockudo_version --locked` (its build needs Debian's protobuf-compiler, installed
# with apt-get when missing and this runs as root) into target/peers/sockudo, built once: a
# second run finds $sockudo_bin and builds nothing. It is a large build (several hundred
# crates); `peer_install_sockudo cached` only looks for the binary (CI's --quick: SKIP unless
# it was built before). Configured by environment (SOCKUDO_DEFAULT_APP_ID/_KEY/_SECRET, HOST,
# PORT), with its rate limiter off (RATE_LIMITER_ENABLED=false): by default an address may
# open only 20 WebSocket connections a minute.
sockudo_version=5.2.0
sockudo_bin=target/peers/sockudo/bin/sockudo
peer_install_sockudo() { # [cached]
  local dir=target/peers/sockudo
  if [ -x "$sockudo_bin" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$sockudo_version" ]; then
    return 0
  fi
  [ "${1:-}" = cached ] && return 1
  if ! command -v protoc >/dev/null; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "installing protobuf-compiler from Debian (Sockudo's build needs protoc)" >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends protobuf-compiler >/dev/null 2>&1 ||
      { timeout 300 apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends protobuf-compiler >/dev/null 2>&1; } ||
      return 1
  fi
  echo "building Sockudo $sockudo_version from crates.io into $dir (a large build; log in $dir/build.log)" >&2
  mkdir -p "$dir"
  # Its build directory stays under target/ too, so an interrupted build resumes.
  timeout 7200 cargo install sockudo --version "$sockudo_version" --locked --root "$dir" \
    --target-dir "$dir/build" >"$dir/build.log" 2>&1 || return 1
  echo "$sockudo_version" >"$dir/version"
  # The build directory is large; the binary is what is kept.
  rm -rf "$dir/build"
}
