# Sourced by scripts/bench_profile.sh and scripts/bench_slab.sh (from the repository's root,
# $root set): one broadcast server started as scripts/bench.sh starts it, pinned to core 0.
#
#   start_pinned_server NAME PORT LOG [FLOOR_ARGS...]
#
# NAME is uringcast, bun, node or floor (loadgen/examples/floor_server.rs, which takes
# FLOOR_ARGS). With $tls_cert and $tls_key set (PEM files), uringcast, Bun and Node serve
# wss:// as scripts/bench.sh's wss variant does (not the floor). Sets $pid to the server itself (no `timeout` in front, so that
# `--server-pid $pid` reads the server's own CPU), $server_line to its command line, and stops
# it on exit (with the process in $lpid, if the caller starts one). Returns 1 if it does not
# listen within 10 s, 2 for a name it does not know.

# shellcheck source=peers/install.sh
. scripts/peers/install.sh
# shellcheck source=ports.sh
. scripts/ports.sh
pid="" lpid="" server_line="" tls_cert=${tls_cert:-} tls_key=${tls_key:-}
stop_pinned() { kill $pid $lpid 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop_pinned EXIT

start_pinned_server() { # name port log [floor args...]
  local name=$1 port=$2 log=$3 cmd flags=() env=()
  shift 3
  if [ -n "$tls_cert" ]; then
    flags=(--tls-cert "$tls_cert" --tls-key "$tls_key") env=(CERT="$tls_cert" KEY="$tls_key")
  fi
  case $name in
    uringcast)
      cmd=("$root/target/release/uringcast" --listen "127.0.0.1:$port" --mode broadcast --workers 1
           --ping-interval 0 "${flags[@]}") ;;
    bun)
      peer_install bun
      cmd=(env PORT="$port" MODE=broadcast "${env[@]}" "$root/$bun" "$root/scripts/peers/bun/server.js") ;;
    node)
      peer_install node
      cmd=(env PORT="$port" MODE=broadcast "${env[@]}" NODE_PATH="$root/$node_path" node
           "$root/scripts/peers/node/server.js") ;;
    floor)
      [ -z "$tls_cert" ] || { echo "the floor has no TLS" >&2; return 2; }
      cmd=("$root/target/release/examples/floor_server" --listen "127.0.0.1:$port" "$@") ;;
    *) return 2 ;;
  esac
  server_line="taskset -c 0 ${cmd[*]}"
  taskset -c 0 "${cmd[@]}" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    ss -Hltn "sport = :$port" | grep -q LISTEN && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$name did not start listening on $port:" >&2
  tail -5 "$log" >&2
  return 1
}
