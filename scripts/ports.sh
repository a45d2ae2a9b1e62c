# Sourced by the benchmark scripts: where a server they start may listen.
#
# A server's port is drawn below the kernel's ephemeral range (net.ipv4.ip_local_port_range),
# because any port in that range may be held by some client's connect(), open or in TIME_WAIT,
# and bind() then fails with "Address already in use" even with SO_REUSEADDR.
#
#   server_port_floor    the lowest port drawn (10000, or lower if the ephemeral range is,
#                        never below 1024)
#   server_port_ceiling  one past the highest: the first ephemeral port
#   free_server_port     a port in that range that no socket holds, in any state

server_port_ceiling() {
  local lo
  read -r lo _ 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range || lo=32768
  echo "$lo"
}
server_port_floor() {
  local hi; hi=$(server_port_ceiling)
  if [ "$hi" -gt 12000 ]; then
    echo 10000
  elif [ $((hi / 2)) -gt 1024 ]; then
    echo $((hi / 2))
  else
    echo 1024
  fi
}
free_server_port() {
  local lo hi port i
  lo=$(server_port_floor) hi=$(server_port_ceiling)
  [ "$hi" -gt "$lo" ] || hi=65535 # an ephemeral range from 1024: any port, checked below
  port=$((lo + RANDOM % (hi - lo)))
  for ((i = 0; i < 1000; i++)); do
    [ -z "$(ss -Htan "sport = :$port" 2>/dev/null)" ] && { echo "$port"; return 0; }
    port=$((port + 1)); [ "$port" -lt "$hi" ] || port=$lo
  done
  return 1
}
