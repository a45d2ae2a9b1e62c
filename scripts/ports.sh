# Sourced by the benchmark scripts: where a server they start may listen.
#
# A server's port is drawn below the kernel's ephemeral range (net.ipv4.ip_local_port_range),
# because any port in that range may be held by some client's connect(), open or in TIME_WAIT,
# and bind() then fails with "Address already in use" even with SO_REUSEADDR.
#
#   server_port_floor    the lowest port drawn (10000, or lower if the ephemeral range is)
#   server_port_ceiling  one past the highest: the first ephemeral port

server_port_ceiling() {
  local lo
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
  echo "$lo"
}
server_port_floor() {
  local hi; hi=$(server_port_ceiling)
  if [ "$hi" -gt 12000 ]; then echo 10000; else echo $((hi / 2)); fi
}
