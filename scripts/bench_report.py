#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md and its plots from a scripts/bench.sh run.

Usage: bench_report.py RUN_DIR [--page docs/BENCHMARKS.md] [--load path/to/uringcast-load]

RUN_DIR is what bench.sh left: run.txt (the machine and versions), lscpu.txt, commands.txt,
index.tsv (scenario, server, repetition, status) and runs/<scenario>/<server>-<rep>.json (the
load generator's reports; the floor's own output in floor-<rep>.floor.txt). Every figure is the
median over the repetitions, with the range; a ratio is the median of the per-repetition
ratios (uringcast's figure over the best peer's in the same repetition). The plots are drawn
by `uringcast-load plot` into bench/ beside the page. A hand-written docs/bench/NOTES.md (the
why, with profiles) is included as it is.
"""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys

PEERS = ["bun", "node", "fastwebsockets", "tungstenite", "gorilla", "channels", "socketio", "sockudo"]
ORDER = ["uringcast"] + PEERS + ["floor"]
LABEL = {"uringcast": "uringcast", "bun": "Bun", "node": "Node ws", "fastwebsockets": "fastwebsockets",
         "tungstenite": "tokio-tungstenite", "gorilla": "Gorilla WebSocket", "channels": "Django Channels",
         "socketio": "Socket.IO", "sockudo": "Sockudo", "floor": "write() floor"}


class Run:
    def __init__(self, root):
        self.root = root
        self.info = {}
        for line in open(os.path.join(root, "run.txt")):
            key, _, value = line.rstrip("\n").partition(" ")
            self.info.setdefault(key, []).append(value)
        self.reps = int(self.info["reps"][0])
        self.status = {}
        for row in csv.reader(open(os.path.join(root, "index.tsv")), delimiter="\t"):
            if len(row) == 4:
                self.status[(row[0], row[1], int(row[2]))] = row[3]
        self.commands = [line.rstrip("\n") for line in open(os.path.join(root, "commands.txt"))]

    def one(self, key):
        return self.info.get(key, [""])[0]

    def scenarios(self):
        return sorted({s for s, _, _ in self.status})

    def report(self, scenario, server, rep):
        path = os.path.join(self.root, "runs", scenario, f"{server}-{rep}.json")
        if self.status.get((scenario, server, rep)) != "ok" or not os.path.exists(path):
            return None
        return json.load(open(path))

    def floor_us(self, scenario, rep):
        path = os.path.join(self.root, "runs", scenario, f"floor-{rep}.floor.txt")
        if not os.path.exists(path):
            return None
        m = re.search(r"\(([\d.]+) µs per frame\)", open(path).read())
        return float(m.group(1)) if m else None

    def values(self, scenario, server, figure):
        """The figure of every repetition (None where the run failed), and notes on trouble."""
        out, notes = [], set()
        for rep in range(1, self.reps + 1):
            if server == "floor" and figure == "cpu" and scenario.startswith("broadcast"):
                out.append(self.floor_us(scenario, rep))
                continue
            d = self.report(scenario, server, rep)
            if d is None:
                st = self.status.get((scenario, server, rep))
                if st:
                    notes.add(f"{st} run")
                out.append(None)
                continue
            lost = d.get("missing", 0) + d.get("duplicated", 0) + d.get("out_of_order", 0) + d.get("corrupt", 0)
            if lost:
                notes.add(f"missing {d.get('missing', 0)} of {d.get('expected', 0)}")
            conns = d.get("connections") or {}
            failed = sum(v for v in (conns.get("failed") or {}).values() if isinstance(v, int))
            # The broadcast floor closes without a close frame: "dropped" is its way to end.
            if failed or (conns.get("dropped") and not (server == "floor" and scenario.startswith("broadcast"))):
                notes.add(f"{failed} failed, {conns.get('dropped', 0)} dropped connections")
            out.append(FIGURES[figure][1](d))
        return out, notes


def server_of(d):
    return d.get("server") or {}


def handshakes_per_cpu_s(d):
    cpu = server_of(d).get("cpu_s")
    return d["connections"]["established"] / cpu if cpu else None


def churn_per_cpu_s(d):
    churn, cpu = d.get("churn") or {}, server_of(d).get("cpu_s")
    return (churn.get("joined", 0) + churn.get("left", 0)) / cpu if cpu else None


def wire_per_delivery(d):
    return d["wire_bytes_in"] / d["received"] if d.get("received") else None


# figure -> (heading, reader, unit, lower is better, format)
FIGURES = {
    "rss": ("server RSS per connection", lambda d: server_of(d).get("rss_per_conn_bytes"), "B", True, "{:,.0f}"),
    "slab": ("kernel slab per connection (both ends)", lambda d: server_of(d).get("slab_per_conn_bytes"), "B", True, "{:,.0f}"),
    "cpu": ("server CPU per message", lambda d: server_of(d).get("cpu_per_message_us"), "µs", True, "{:.2f}"),
    "rate": ("deliveries/s", lambda d: d.get("throughput_per_s"), "/s", False, "{:,.0f}"),
    "p50": ("latency p50", lambda d: d["latency_us"]["p50"] / 1000, "ms", True, "{:.2f}"),
    "p99": ("latency p99", lambda d: d["latency_us"]["p99"] / 1000, "ms", True, "{:.2f}"),
    "p999": ("latency p99.9", lambda d: d["latency_us"]["p999"] / 1000, "ms", True, "{:.2f}"),
    "hs": ("handshakes per server CPU-second", handshakes_per_cpu_s, "/CPU-s", False, "{:,.0f}"),
    "churn": ("presence joins and leaves per server CPU-second", churn_per_cpu_s, "/CPU-s", False, "{:,.0f}"),
    "wire": ("bytes on the wire per delivery", wire_per_delivery, "B", True, "{:,.0f}"),
    "client": ("load generator CPU", lambda d: 100 * (d.get("client") or {}).get("cpu_s", 0) / d["duration_s"], "% of a core", True, "{:.0f}"),
    "rss_mib": ("server RSS", lambda d: server_of(d).get("rss_bytes", 0) / 2**20, "MiB", True, "{:.1f}"),
}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(figure, x):
    return "–" if x is None else FIGURES[figure][4].format(x)


def cell(run, scenario, server, figure):
    xs, notes = run.values(scenario, server, figure)
    m = median(xs)
    if m is None:
        return "–" + (f" ({', '.join(sorted(notes))})" if notes else ""), None
    good = [x for x in xs if x is not None]
    text = fmt(figure, m)
    if len(good) > 1:
        text += f" ({fmt(figure, min(good))}–{fmt(figure, max(good))})"
    if notes:
        text += " † " + "; ".join(sorted(notes))
    return text, m


def ratios(run, scenario, figure):
    """uringcast over the best peer, per repetition: (median ratio, per-rep list, best peer)."""
    lower = FIGURES[figure][3]
    per_rep, winners = [], []
    for rep in range(1, run.reps + 1):
        d = run.report(scenario, "uringcast", rep)
        if d is None:
            continue
        ours = FIGURES[figure][1](d)
        theirs = {}
        for peer in PEERS:
            p = run.report(scenario, peer, rep)
            v = FIGURES[figure][1](p) if p else None
            if v:
                theirs[peer] = v
        if not theirs or not ours:
            continue
        best = (min if lower else max)(theirs, key=theirs.get)
        per_rep.append(ours / theirs[best])
        winners.append(best)
    if not per_rep:
        return None, [], None
    best = max(set(winners), key=winners.count)
    return statistics.median(per_rep), per_rep, best


SCENARIOS = [
    # scenario pattern, title, figures, what it is
    ("idle-plain", "Idle memory", ["rss", "slab"],
     "{idle} idle connections held 2 s after the last upgrade (each on `/idle`, so each is a "
     "subscriber of one topic); RSS growth of the server process over the connections."),
    ("broadcast-{subs}", "Broadcast CPU per delivery and latency", ["cpu", "p50", "p99", "p999", "rate"],
     "{subs} subscribers on `/topic`, one publisher on `/publish/topic` at 10 publishes/s of 64 B; server "
     "CPU (utime+stime of the whole process, every thread) per delivery over the traffic window; "
     "latency from each message's scheduled send time. The write() floor writes one pre-encoded "
     "frame to every socket with blocking write()s and measures its own CPU."),
    ("inflight-8", "Most deliveries/s, 8 publishes in flight", ["rate", "cpu", "p50", "p99", "client"],
     "{subs} subscribers, 8 publishers on `/publish/topic`, each sending its next 64-byte message "
     "as soon as every subscriber has its previous one (closed loop, `--inflight 8`)."),
    ("inflight-1", "Deliveries/s, 1 publish in flight", ["rate", "cpu", "p50", "p99", "client"],
     "As above with one publisher and one publish in flight."),
    ("echo", "Echo CPU per message", ["cpu", "rate", "p50", "p99", "p999"],
     "100 connections, 32-byte binary messages, one in flight per connection (closed loop). "
     "The write() floor here is `echo_floor`: one epoll thread that reads, unmasks and writes "
     "back each frame, nothing else."),
    ("handshakes", "WebSocket handshakes per CPU-second", ["hs", "p50", "p99"],
     "{hs} connections opened at up to 20,000/s (TCP connect, upgrade request, verified 101); "
     "server CPU over the connecting phase; latency is the upgrade's."),
    ("idle-wss", "Idle memory over wss://", ["rss", "slab"],
     "As the idle scenario, over TLS 1.3 (ECDSA P-256); the Rust peers through tokio-rustls."),
    ("broadcast-wss", "Broadcast over wss://", ["cpu", "p50", "p99", "rate"],
     "As the broadcast scenario, over TLS 1.3."),
    ("idle-deflate", "Idle memory with permessage-deflate", ["rss", "slab"],
     "As the idle scenario, each client offering permessage-deflate (no message sent: what the "
     "negotiation alone costs)."),
    ("broadcast-deflate", "Broadcast with permessage-deflate", ["cpu", "wire", "p50", "p99", "rate"],
     "As the broadcast scenario with a 2 KiB JSON tick (compressible, and above Node ws's "
     "1 KiB compression threshold), every subscriber offering permessage-deflate."),
    ("pusher-fanout-{subs}", "Pusher: CPU per delivery to one channel", ["cpu", "p50", "p99", "rss"],
     "uringcast `--mode pusher` (the uringcast row) beside Sockudo: {subs} subscribers of one public "
     "channel, one publisher triggering 10 events/s of 64 B through the signed HTTP API "
     "(`uringcast-load pusher`); server CPU per delivery over the traffic window, RSS per "
     "subscribed connection."),
    ("pusher-rate-{subs}", "Pusher: deliveries/s to one channel", ["rate", "cpu", "p50", "p99"],
     "As above with 4 HTTP publishers triggering as fast as the schedule asks (200 events/s in "
     "all; 50 with --quick): what arrives per second when the server cannot keep up."),
    ("pusher-idle", "Pusher: idle memory per subscribed connection", ["rss", "slab"],
     "{idle} connections each subscribed to one public channel, nobody publishing; RSS "
     "growth of the server over the connections."),
    ("pusher-churn", "Pusher: presence churn per CPU-second", ["churn"],
     "50 members on one presence channel, nobody publishing; beside them members join (a new "
     "connection, a signed subscription) and leave (a close) at 200/s (50 with --quick), "
     "`uringcast-load pusher --churn`; joins plus leaves over the server's CPU seconds in the "
     "window (which includes telling the 50 members of each)."),
]

# The goals: (scenario, figure, the bound on uringcast / best peer, how it reads).
GOALS = [
    ("idle-plain", "rss", 0.5, "idle memory per connection ≤ 0.5× the best peer"),
    ("broadcast-{subs}", "cpu", 0.9, "broadcast CPU per delivery ≤ 0.9× the best peer"),
    ("inflight-8", "rate", 2.0, "deliveries/s with 8 in flight ≥ 2× the best peer"),
    ("inflight-1", "rate", 1.3, "deliveries/s with 1 in flight ≥ 1.3× the best peer"),
    ("echo", "cpu", 1.0, "echo CPU per message below every peer and ≤ the write() floor"),
    ("broadcast-{subs}", "p99", 0.8, "broadcast p99 latency ≤ 0.8× the best peer"),
    # Issue 24's figures (the only Pusher peer is Sockudo).
    ("pusher-rate-{subs}", "rate", 5.0, "Pusher deliveries/s to one channel ≥ 5× Sockudo's"),
    ("pusher-idle", "rss", 0.2, "Pusher idle memory per subscribed connection ≤ 0.2× Sockudo's"),
]


def pair_ratios(run, scenario, ours, reference, figure):
    """`ours` over `reference` in the same scenario, per repetition: (median, per-rep list)."""
    per = []
    for rep in range(1, run.reps + 1):
        a, b = run.report(scenario, ours, rep), run.report(scenario, reference, rep)
        x = FIGURES[figure][1](a) if a else None
        y = FIGURES[figure][1](b) if b else None
        if x and y:
            per.append(x / y)
    return (statistics.median(per) if per else None), per


# Issue 23: uringcast's Server-Sent Events beside its WebSocket subscribers (runs named sse and
# ws in scenario sse-<subscribers>), and the goal on their CPU per delivery.
SSE_ROWS = [("ws", "uringcast, WebSocket subscribers"), ("sse", "uringcast, SSE streams")]
SSE_FIGURES = ["cpu", "p50", "p99", "rss"]
SSE_GOAL = 1.10


def sse_goal(run, subs, w, behind):
    """The goal row: SSE CPU per delivery over WebSocket's, same server and load."""
    r, per = pair_ratios(run, f"sse-{subs}", "sse", "ws", "cpu")
    if r is None:
        return
    text = f"SSE CPU per delivery ≤ {SSE_GOAL:.2f}× WebSocket's (uringcast, `--history 300`)"
    w(f"| {text} | uringcast WebSocket | {r:.2f}× | {', '.join(f'{x:.2f}' for x in per)} | "
      f"{'yes' if r <= SSE_GOAL else '**no**'} |")
    if r > SSE_GOAL:
        behind.append(f"Goal not met: {text}: {r:.2f}× (median of {len(per)}).")


def sse_section(run, subs, w):
    """The SSE table, if the run has the scenario."""
    scenario = f"sse-{subs}"
    rows = [(name, label) for name, label in SSE_ROWS
            if any(k[0] == scenario and k[1] == name for k in run.status)]
    if not rows:
        return
    w("## Server-Sent Events beside WebSocket (uringcast)\n")
    w(f"{int(subs):,} subscribers of `/topic` on uringcast with `--history 300` (so every event "
      "carries its position), one HTTP publisher at 10 publishes/s of 64 B (`POST /publish/topic`), "
      "the same load to WebSocket subscribers (`uringcast-load broadcast`) and to Server-Sent "
      "Events streams (`uringcast-load sse`, every event's id checked for order, gaps and "
      "duplicates; a binary payload travels as base64 in `event: binary`). The peers have no SSE. "
      "Server CPU per delivery over the traffic window; RSS growth per held connection.\n")
    w("| subscribers | " + " | ".join(f"{FIGURES[f][0]} ({FIGURES[f][2]})" for f in SSE_FIGURES) + " |")
    w("|---|" + "---:|" * len(SSE_FIGURES))
    for name, label in rows:
        w(f"| {label} | " + " | ".join(cell(run, scenario, name, f)[0] for f in SSE_FIGURES) + " |")
    w("")


def scale(run):
    return dict(kv.split("=") for kv in run.one("scale").split())


def plot(load, args):
    try:
        subprocess.run([load, "plot", *args], check=True, capture_output=True, text=True)
        return True
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"plot {args[0]} {args[1]} failed: {getattr(e, 'stderr', e)}", file=sys.stderr)
        return False


def median_rep(run, scenario, server, figure):
    """The repetition whose figure is the median (for a latency curve that is typical)."""
    reps = [(FIGURES[figure][1](d), rep) for rep in range(1, run.reps + 1)
            if (d := run.report(scenario, server, rep)) is not None]
    if not reps:
        return None
    reps.sort()
    return reps[(len(reps) - 1) // 2][1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--page", default="docs/BENCHMARKS.md")
    ap.add_argument("--load", default="target/release/uringcast-load")
    a = ap.parse_args()
    run = Run(a.run)
    sc = scale(run)
    subs, idle, hs = sc["subscribers"], sc["idle"], sc["handshakes"]
    page_dir = os.path.dirname(os.path.abspath(a.page))
    plots = os.path.join(page_dir, "bench")
    os.makedirs(plots, exist_ok=True)
    present = set(run.scenarios())
    servers = [s for s in ORDER if any(k[1] == s for k in run.status)]
    out = []
    w = out.append
    quick = run.one("quick") == "1"
    w("# Benchmarks: uringcast beside the servers people pick\n")
    w("Written by `scripts/bench.sh" + (" --quick" if quick else "") + f" --reps {run.reps}` "
      "from the run's own files; rerun it to regenerate this page and the plots in "
      "[`bench/`](bench/). Each server runs pinned to core 0 with one thread or worker, the "
      "load generator (`uringcast-load`, one thread) pinned to core 1. Within each "
      "repetition every scenario runs every server, in an order rotated between repetitions. "
      "A figure is the **median** over the repetitions (range in brackets); a ratio is the "
      "median of the per-repetition ratios of uringcast to the best peer of that repetition. "
      "How each peer is written and set up, with its limits (1 MiB backpressure, 16 MiB "
      "messages for all): [scripts/peers/README.md](../scripts/peers/README.md).\n")
    if quick:
        w("> **This page comes from a `--quick` run** (one repetition at small scale): a smoke "
          "test of the benchmark, not figures to quote.\n")
    w("## The machine and the versions\n")
    w(f"- CPU: {run.one('cpu')}; kernel {run.one('kernel')}")
    w(f"- load average (1, 5, 15 min) at the start: {run.one('loadavg_start')}; at the end: {run.one('loadavg_end')}")
    w(f"- run started {run.one('started')}, took {run.one('seconds')} s; {run.reps} repetition(s); scale: {run.one('scale')}")
    w(f"- uringcast {run.one('uringcast')} (rustc {run.one('rustc')}); Bun {run.one('bun')}; "
      f"Node {run.one('node')} with ws {run.one('ws')}; "
      + ", ".join(f"{c.split()[0]} {c.split()[1]}" for c in run.info.get("crate", [])))
    for key, label in (("gorilla", "Gorilla WebSocket"), ("channels", "Django Channels"), ("socketio", "Socket.IO"),
                       ("sockudo", "Sockudo")):
        if run.one(key):
            w(f"- {label} {run.one(key)}")
    w("- Gorilla WebSocket, Django Channels and Socket.IO run the plain scenarios only: their wss "
      "and deflate variants are not set up, so those tables leave them out. Socket.IO is driven "
      "with `--protocol socketio` (its own framing around each message, so more bytes per "
      "message), its payload a JSON string: text, and at least 48 bytes in the echo scenario. "
      "Django Channels' in-memory layer drops what passes its 16,384 messages per consumer "
      "instead of closing a slow consumer; Socket.IO has no backpressure limit set.")
    w("- Sockudo (crates.io, built by `cargo install --locked`) runs the Pusher scenarios only, "
      "against uringcast `--mode pusher`. It is configured by environment (`SOCKUDO_DEFAULT_APP_ID`, "
      "`_KEY`, `_SECRET`, `HOST`, `PORT`) with its **rate limiter turned off** "
      "(`RATE_LIMITER_ENABLED=false`): by default it lets an address open only 20 WebSocket "
      "connections a minute; and its default app's caps raised as its documentation's "
      "performance tuning shows (`SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000`, "
      "`_MAX_BACKEND_EVENTS_PER_SECOND=100000`, `_MAX_CLIENT_EVENTS_PER_SECOND=10000`): by "
      "default an app takes 100 connections and 100 API events a second.")
    w("\n<details><summary>lscpu</summary>\n\n```")
    w(open(os.path.join(a.run, "lscpu.txt")).read().rstrip())
    w("```\n</details>\n")

    # Goals.
    w("## Goals (uringcast over the best peer, per repetition)\n")
    w("| goal | best peer | ratio (median) | per repetition | met? |")
    w("|---|---|---:|---|---|")
    behind = []
    for pattern, figure, bound, text in GOALS:
        scenario = pattern.format(subs=subs)
        if scenario not in present:
            continue
        r, per, best = ratios(run, scenario, figure)
        if r is None:
            w(f"| {text} | – | – | – | no comparison |")
            continue
        lower = FIGURES[figure][3]
        if figure == "cpu" and scenario == "echo":
            floor = median(run.values("echo", "floor", "cpu")[0])
            ours = median(run.values("echo", "uringcast", "cpu")[0])
            met = r < 1.0 and floor is not None and ours is not None and ours <= floor
            if floor is not None and ours is not None:
                text += f" (and ≤ the echo floor: {ours:.2f} against {floor:.2f} µs)"
        else:
            met = r <= bound if lower else r >= bound
        w(f"| {text} | {LABEL[best]} | {r:.2f}× | {', '.join(f'{x:.2f}' for x in per)} | "
          f"{'yes' if met else '**no**'} |")
        if not met:
            behind.append(f"Goal not met: {text}: {r:.2f}× {LABEL[best]} (median of {len(per)}).")
    # Issue 24: --mode pusher's CPU per delivery against --mode broadcast's, same payload and scale.
    pusher_cpu = median(run.values(f"pusher-fanout-{subs}", "uringcast", "cpu")[0])
    plain_cpu = median(run.values(f"broadcast-{subs}", "uringcast", "cpu")[0])
    if pusher_cpu is not None and plain_cpu:
        r = pusher_cpu / plain_cpu
        text = "Pusher CPU per delivery ≤ 1.10× `--mode broadcast`'s (medians)"
        w(f"| {text} | uringcast broadcast | {r:.2f}× | – | {'yes' if r <= 1.10 else '**no**'} |")
        if r > 1.10:
            behind.append(f"Goal not met: {text}: {r:.2f}×.")
    sse_goal(run, subs, w, behind)
    w("")

    # Scenario tables.
    for pattern, title, figures, about in SCENARIOS:
        scenario = pattern.format(subs=subs)
        if scenario not in present:
            continue
        w(f"## {title}\n")
        w(about.format(subs=f"{int(subs):,}", idle=f"{int(idle):,}", hs=f"{int(hs):,}") + "\n")
        cols = [f"{FIGURES[f][0]} ({FIGURES[f][2]})" for f in figures]
        w("| server | " + " | ".join(cols) + " |")
        w("|---|" + "---:|" * len(figures))
        medians = {}
        lossy = set()  # servers that lost deliveries in this scenario: beat nobody on it
        for server in servers:
            if not any(k[0] == scenario and k[1] == server for k in run.status):
                continue
            row = []
            for f in figures:
                # The broadcast floor sends on its own schedule: its deliveries/s says nothing.
                if server == "floor" and f not in ("cpu", "p50", "p99", "p999") and not (f == "rate" and scenario == "echo"):
                    row.append("–")
                    continue
                text, m = cell(run, scenario, server, f)
                medians[(server, f)] = m
                if "missing" in text:
                    lossy.add(server)
                row.append(text)
            w(f"| {LABEL[server]} | " + " | ".join(row) + " |")
        w("")
        for f in figures:
            ours = medians.get(("uringcast", f))
            # Open loop, deliveries/s is the schedule's, the same for every server that keeps up.
            if ours is None or f == "client" or (f == "rate" and scenario.startswith("broadcast")):
                continue
            lower = FIGURES[f][3]
            # Behind by more than 1%: closer than that is a tie on this machine.
            # A peer that lost deliveries in the run, or whose figure is 0 (no samples), is not
            # ahead of anyone on it.
            better = [s for s in PEERS if (v := medians.get((s, f))) is not None
                      and s not in lossy and v > 0
                      and (v < ours / 1.01 if lower else v > ours * 1.01)]
            if better:
                names = ", ".join(f"{LABEL[s]} {fmt(f, medians[(s, f)])}" for s in better)
                behind.append(f"{title}: {FIGURES[f][0]}: uringcast {fmt(f, ours)} {FIGURES[f][2]}; "
                              f"better: {names}.")

    sse_section(run, subs, w)

    # Plots.
    w("## Plots\n")
    sweep = sorted({int(s.split("-")[1]) for s in present if re.fullmatch(r"broadcast-\d+", s)})
    rows_cpu, rows_rss = [], []
    for n in sweep:
        for server in servers:
            m = median(run.values(f"broadcast-{n}", server, "cpu")[0])
            if m is not None:
                rows_cpu.append((LABEL[server], n, m))
            if server != "floor":
                r = median(run.values(f"broadcast-{n}", server, "rss_mib")[0])
                if r is not None:
                    rows_rss.append((LABEL[server], n, r))
    drawn = []
    for name, rows, title, y in [
        ("cpu-per-delivery", rows_cpu, "Broadcast: server CPU per delivery (10 publishes/s, 64 B)", "µs per delivery"),
        ("rss", rows_rss, "Server RSS while broadcasting to N subscribers", "RSS (MiB)"),
    ]:
        if len({r[1] for r in rows}) < 2:
            continue
        path = os.path.join(a.run, f"{name}.csv")
        with open(path, "w") as f:
            f.write("series,x,y\n")
            for s, x, v in rows:
                f.write(f"{s},{x},{v}\n")
        svg = os.path.join(plots, f"{name}.svg")
        if plot(a.load, ["lines", svg, "--csv", path, "--title", title, "--x-label", "subscribers",
                         "--y-label", y, "--y-from-zero"]):
            drawn.append((name, title))
    for scenario, title in [(f"broadcast-{subs}", f"Broadcast latency, {int(subs):,} subscribers, 10/s"),
                            ("inflight-8", "Latency with 8 publishes in flight"),
                            ("echo", "Echo latency, 100 connections, 32 B")]:
        if scenario not in present:
            continue
        series = []
        for server in servers:
            rep = median_rep(run, scenario, server, "p99")
            # A repetition with nothing delivered has no curve to draw (and would fail the plot).
            if rep is not None and (median(run.values(scenario, server, "p99")[0]) or 0) > 0:
                series.append(f"{LABEL[server]}={os.path.join(a.run, 'runs', scenario, f'{server}-{rep}.json')}")
        svg = os.path.join(plots, f"latency-{scenario.split('-')[0]}{'-8' if scenario == 'inflight-8' else ''}.svg")
        if series and plot(a.load, ["latency", svg, "--title", title, *series]):
            drawn.append((os.path.basename(svg)[:-4], title))
    for name, title in drawn:
        w(f"![{title}](bench/{name}.svg)\n")
    if not drawn:
        w("(none drawn)\n")
    w("Each latency curve is the repetition with the median p99.\n")

    # Where uringcast is behind.
    w("## Where uringcast is behind\n")
    w("Every figure above where a peer's median beats uringcast's (a peer that lost deliveries "
      "in that scenario, or has no samples, is not counted), and every goal not met, "
      "listed by this script from the tables:\n")
    for line in behind or ["Nowhere in this run."]:
        w(f"- {line}")
    w("")
    notes = os.path.join(page_dir, "bench", "NOTES.md")
    if os.path.exists(notes):
        w(open(notes).read().rstrip() + "\n")

    # Commands.
    w("## The commands\n")
    w("The first repetition's, as run (ports and source addresses change from run to run):\n")
    w("```")
    for line in run.commands:
        if line.startswith("rep 1 "):
            w(line[len("rep 1 "):].replace(os.getcwd() + "/", "").replace(a.run + "/", "$OUT/"))
    w("```")
    open(a.page, "w").write("\n".join(out) + "\n")
    print(f"wrote {a.page} and {len(drawn)} plot(s) in {plots}", file=sys.stderr)


if __name__ == "__main__":
    main()
