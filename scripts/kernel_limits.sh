# Kernel settings a big run needs raised, named, and restored on exit: sourced (not run) by
# scripts/capacity.sh, scripts/broadcast_all.sh and scripts/restart_all.sh.
#
# What N connections need comes from `scripts/capacity_plan.py sysctls N` (fs.file-max,
# net.ipv4.tcp_max_orphans; nothing at small N). Usage, from the repository's root:
#
#   . scripts/kernel_limits.sh
#   trap 'limits_restore NAME' EXIT     # or call it from the script's own cleanup
#   limits_raise NAME N || exit 2
#
# NAME prefixes every line (the script's name). limits_raise prints one line per setting it
# raises and returns 1, with a message on stderr, if one cannot be raised (no root); what it
# had raised before that stays recorded and limits_restore puts it back. limits_restore
# restores in the reverse order and may be called more than once.

# "KEY OLD_VALUE" for every setting raised, in the order raised.
LIMITS_RAISED=()

limits_raise() {
  local name=$1 n=$2 key value old wanted
  wanted=$(python3 scripts/capacity_plan.py sysctls "$n") || return 1
  while read -r key value; do
    [ -n "$key" ] || continue
    old=$(sysctl -n "$key")
    if ! sysctl -q -w "$key=$value" >/dev/null 2>&1; then
      echo "$name: $n connections need $key >= $value (now $old) and it cannot be raised here" >&2
      return 1
    fi
    LIMITS_RAISED+=("$key $old")
    echo "$name: raised $key from $old to $value (restored on exit)"
  done <<<"$wanted"
  return 0
}

# limits_set NAME KEY VALUE: sets one setting to VALUE (which may be several numbers, as
# net.ipv4.tcp_mem's three), recorded for limits_restore like the ones limits_raise raises.
limits_set() {
  local name=$1 key=$2 value=$3 old
  old=$(sysctl -n "$key" | tr -s '\t ' ' ') || return 1
  if ! sysctl -q -w "$key=$value" >/dev/null 2>&1; then
    echo "$name: $key cannot be set to $value here (now $old)" >&2
    return 1
  fi
  LIMITS_RAISED+=("$key $old")
  echo "$name: set $key from $old to $value (restored on exit)"
}

limits_restore() {
  local name=$1 i key value
  for ((i = ${#LIMITS_RAISED[@]} - 1; i >= 0; i--)); do
    read -r key value <<<"${LIMITS_RAISED[$i]}"
    if sysctl -q -w "$key=$value" >/dev/null 2>&1; then
      echo "$name: restored $key to $value"
    else
      echo "$name: could not restore $key to $value" >&2
    fi
  done
  LIMITS_RAISED=()
}

# The settings a run of N would raise, as "would raise KEY from OLD to NEW" lines (--plan).
limits_plan() {
  local n=$1 key value
  while read -r key value; do
    [ -n "$key" ] && echo "would raise $key from $(sysctl -n "$key") to $value"
  done <<<"$(python3 scripts/capacity_plan.py sysctls "$n")"
  return 0
}
