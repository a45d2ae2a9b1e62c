# Sourced by the benchmark scripts: installs the JavaScript peers from the npm registry into
# target/peers/<name>, at the versions scripts/peers/<name>/package.json pins (again whenever
# the pin changes). `peer_install bun` then `$bun`; `peer_install node` then NODE_PATH=$node_path.
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
