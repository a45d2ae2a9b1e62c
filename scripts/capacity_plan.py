#!/usr/bin/env python3
"""The sizing and the memory check behind scripts/capacity.sh, testable at any N.

Usage:
  capacity_plan.py plan N [--wss] [--limit L] [--steps A,B,...]
      One line per step: `step CONNECTIONS TABLES SOURCES`. Steps are the ladder 250,000,
      500,000, 1,000,000 below N, then N (`--steps` replaces them).
  capacity_plan.py check CONNECTIONS TABLES [--wss] [--measured FILE]
      Exit 0 if MemAvailable holds the step's estimate plus the reserve, else print why and
      exit 3. The estimate uses the figures measured by the last step (FILE, written by
      `record`) where there are some, else the defaults below.
  capacity_plan.py record JSON FILE
      Prints the step's report line from the load generator's --json and stores its figures
      per connection in FILE for the next `check`; exit 1 unless every connection was held
      and the sample echoed.
  capacity_plan.py sysctls N
      The kernel settings a run of N needs raised: `KEY VALUE` lines, none at small N.
  capacity_plan.py floor
      The MemAvailable (kB) below which a running step is stopped.

CAPACITY_MEMINFO=FILE reads that file instead of /proc/meminfo, and CAPACITY_SYSCTL=DIR reads
sysctls under DIR (as /proc/sys): the tests use both.
"""
import json
import math
import os
import sys

LADDER = (250_000, 500_000, 1_000_000)
# Connections per (source, target) address pair: the ephemeral port range holds about 28,000,
# and 25,000 per pair stalled at 62,000 of 100,000 (docs/PERFORMANCE.md); 12,500 did not.
PER_PAIR = 12_500
MAX_SOURCES = 200
# Slots per fixed file table kept clear of RLIMIT_NOFILE for the process's own descriptors;
# CAPACITY_TABLE_HEADROOM asks for more (more workers, each less full: a reconnect storm
# after a restart needs room for attempts the clients have abandoned and the server still
# holds until its handshake timeout).
TABLE_HEADROOM = int(os.environ.get("CAPACITY_TABLE_HEADROOM", "1000"))

# Bytes per connection before anything is measured, from docs/PERFORMANCE.md, rounded up:
# server RSS, kernel slab for both ends of the loopback pair, load generator RSS.
DEFAULTS = {
    False: {"server": 260, "slab": 10_000, "client": 1_500},
    True: {"server": 3_300, "slab": 10_000, "client": 4_800},
}
# Fixed cost of one server worker plus one load-generator thread (rings, receive-buffer pools,
# direct descriptor tables, stacks), rounded up.
PER_TABLE_BYTES = 8 << 20
# Measured figures are scaled by this before they size the next, larger step.
MARGIN = 1.15
# Always left free: the other processes on the machine, and the page cache they need.
RESERVE_MIN_BYTES = 1 << 30
RESERVE_FRACTION = 0.05


def meminfo():
    path = os.environ.get("CAPACITY_MEMINFO", "/proc/meminfo")
    fields = {}
    with open(path) as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def sysctl(key):
    root = os.environ.get("CAPACITY_SYSCTL", "/proc/sys")
    try:
        with open(os.path.join(root, *key.split("."))) as f:
            return f.read().split()
    except OSError:
        return None


def nofile_limit():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1_048_576 if hard == resource.RLIM_INFINITY else hard


def steps(n, explicit=None):
    if explicit:
        return sorted(set(explicit))
    return [s for s in LADDER if s < n] + [n]


def size(connections, limit):
    """(tables, sources): server workers = load-generator threads, and source addresses."""
    per_table = limit - TABLE_HEADROOM
    if per_table <= 0:
        raise ValueError(f"RLIMIT_NOFILE {limit} leaves no slots (headroom {TABLE_HEADROOM})")
    tables = math.ceil(connections / per_table)
    sources = math.ceil(connections / PER_PAIR)
    if sources > MAX_SOURCES:
        raise ValueError(f"{connections:,} connections need {sources} source addresses "
                         f"(at most {MAX_SOURCES}, {PER_PAIR:,} per address)")
    return tables, sources


def reserve(mem):
    return max(RESERVE_MIN_BYTES, int(mem.get("MemTotal", 0) * RESERVE_FRACTION))


def figures(wss, measured_path=None):
    """Bytes per connection for the estimate, and where each figure comes from."""
    per_conn = dict(DEFAULTS[wss])
    source = {k: "default" for k in per_conn}
    if measured_path and os.path.exists(measured_path):
        with open(measured_path) as f:
            measured = json.load(f)
        for key, value in measured.items():
            if key in per_conn and value:
                per_conn[key] = math.ceil(round(value * MARGIN, 6))
                source[key] = f"measured {value:,.0f} B x {MARGIN}"
    return per_conn, source


def estimate(connections, tables, wss, measured_path=None):
    per_conn, source = figures(wss, measured_path)
    total = connections * sum(per_conn.values()) + tables * PER_TABLE_BYTES
    return total, per_conn, source


def check(connections, tables, wss, measured_path=None, out=sys.stdout):
    mem = meminfo()
    available = mem["MemAvailable"]
    need, per_conn, source = estimate(connections, tables, wss, measured_path)
    keep = reserve(mem)
    parts = ", ".join(f"{k} {per_conn[k]:,} B ({source[k]})" for k in per_conn)
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    if need + keep > available:
        print(f"capacity: STOP before {connections:,} connections: they need about {gib(need)} "
              f"({parts}; {tables} x {PER_TABLE_BYTES >> 20} MiB per worker and thread) plus "
              f"{gib(keep)} kept free, and MemAvailable is {gib(available)}. Run it on a quieter "
              f"machine, or ask for fewer connections.", file=out)
        return 3
    print(f"capacity: {connections:,} connections need about {gib(need)} ({parts}); "
          f"MemAvailable {gib(available)}, {gib(keep)} kept free: fits", file=out)
    return 0


def floor_kb():
    """Stop a running step when MemAvailable falls below half the reserve."""
    return reserve(meminfo()) // 2 // 1024


def needed_sysctls(n):
    """The settings a run of n connections needs, raised only when below what it needs."""
    wanted = {
        # Both ends' sockets are open files, plus the pipes, rings and everything else.
        "fs.file-max": 2 * n + 100_000,
        # At the end every connection closes at once; past this many orphaned sockets (closed
        # by the process, FIN exchange unfinished) the kernel resets them instead.
        "net.ipv4.tcp_max_orphans": n + 10_000,
    }
    changes = []
    for key, value in wanted.items():
        current = sysctl(key)
        if current is not None and int(current[0]) < value:
            changes.append((key, value))
    return changes


def record(json_path, measured_path, out=sys.stdout):
    try:
        with open(json_path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        print("  no report from the load generator", file=out)
        return 1
    c, s = d["connections"], d.get("server") or {}
    target = d["settings"]["connections"]
    reached = c["reached"]
    failed = c["failed"]
    failed_total = sum(failed.values()) if isinstance(failed, dict) else failed
    kinds = {k: v for k, v in failed.items() if v} if isinstance(failed, dict) else {}
    kernel = d.get("kernel") or {}
    client = (d.get("client") or {}).get("rss_bytes")
    per = lambda v: None if v is None or not reached else v / reached
    server_b = s.get("rss_per_conn_bytes")
    slab_b = kernel.get("slab_per_conn_bytes", s.get("slab_per_conn_bytes"))
    client_b = per(client)
    lat = d.get("latency_us") or {}
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"
    sent, received = d.get("sent", 0), d.get("received", 0)
    print(f"  reached {reached:,} of {target:,}, failed {failed_total}"
          + (f" {kinds} {c.get('failure_details')}" if kinds else ""), file=out)
    print(f"  memory per connection: server RSS {fmt(server_b)} B, kernel slab {fmt(slab_b)} B "
          f"per pair, load generator RSS {fmt(client_b)} B (its whole RSS / connections)",
          file=out)
    print(f"  connect: {d.get('ramp_s', 0):.1f} s for all, {d.get('throughput_per_s', 0):,.0f} "
          f"handshakes/s; handshake p50 {fmt(lat.get('p50'))} us, p99 {fmt(lat.get('p99'))} us",
          file=out)
    print(f"  alive: {received:,} of {sent:,} sampled connections echoed "
          f"(missing {d.get('missing', 0)}, corrupt {d.get('corrupt', 0)})", file=out)
    if reached:
        with open(measured_path, "w") as f:
            json.dump({"server": server_b, "slab": slab_b, "client": client_b}, f)
    ok = reached >= target and received >= sent and d.get("corrupt", 0) == 0
    return 0 if ok else 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    wss = "--wss" in args
    args = [a for a in args if a != "--wss"]

    def option(name, default=None):
        if name in args:
            i = args.index(name)
            value = args[i + 1]
            del args[i : i + 2]
            return value
        return default

    try:
        if cmd == "plan":
            limit = int(option("--limit", 0)) or nofile_limit()
            explicit = option("--steps")
            explicit = [int(s) for s in explicit.split(",")] if explicit else None
            for n in steps(int(args[0]), explicit):
                tables, sources = size(n, limit)
                print(f"step {n} {tables} {sources}")
            return 0
        if cmd == "check":
            measured = option("--measured")
            return check(int(args[0]), int(args[1]), wss, measured)
        if cmd == "record":
            return record(args[0], args[1])
        if cmd == "sysctls":
            for key, value in needed_sysctls(int(args[0])):
                print(key, value)
            return 0
        if cmd == "floor":
            print(floor_kb())
            return 0
    except ValueError as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
