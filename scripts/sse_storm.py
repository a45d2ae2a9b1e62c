#!/usr/bin/env python3
"""SSE figures that need many streams at once (docs/PERFORMANCE.md, "Server-Sent Events"):

1. idle memory: the server's RSS per idle subscriber, N SSE streams against N WebSocket
   subscribers of the same topic (each on a fresh server, same flags);
2. a reconnect storm: N SSE streams, each 100 publications behind, reconnect within a
   second with Last-Event-ID; every one must be recovered exactly (the next offsets, no gap,
   no duplicate). Reports the time until the last is live again, and the server's CPU per
   replayed publication against its CPU per live delivery measured in the same run.

With --loadgen PATH (the default when target/release/uringcast-load exists) the storm is the
load generator's (`uringcast-load sse --reconnect-after --reconnect-down --reconnect-window`):
publishes at 10/s over HTTP, every stream closes at once, stays away BEHIND / 10 seconds, and
all reopen within --window seconds (so each is BEHIND to BEHIND + 10 x WINDOW behind). It runs
twice on fresh servers, once without the storm (the live reference: server CPU per delivery)
and once with it; the storm run's extra server CPU, over the publications the streams were
replayed, plus the live cost each of them would have had, is the CPU per replayed
publication (handshakes included). Without it the storm's client is Python asyncio, whose own
speed bounds the storm's time (it took 12 s to send 10,000 reconnects).

The Python client is on the other core. Loopback only; every phase is bounded in time.

Usage: scripts/sse_storm.py [--streams 10000] [--behind 100] [--runs 3] [--binary PATH]
                            [--loadgen PATH] [--window 1]
"""
import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
STEP = 60.0


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_bytes(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(binary, extra):
    server = subprocess.Popen(
        ["taskset", "-c", "0", binary, "--listen", "127.0.0.1:0", "--workers", "1",
         "--mode", "broadcast", "--publish-token", "T", "--ping-interval", "0",
         "--history", "300", "--max-recover", "300", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    match = re.match(r"listening on .*:(\d+)$", line.strip())
    if not match:
        server.kill()
        sys.exit(f"sse_storm: the server did not start ({line!r})")
    return server, int(match.group(1))


class Stream:
    """One event-stream connection; `ids` collects the offsets of its message events."""

    def __init__(self):
        self.last_id = None
        self.offsets = []
        self.reset = False
        self.writer = None
        self.positioned = asyncio.Event()

    async def open(self, port, source, topic, last_id=None):
        reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), limit=1 << 20)
        request = f"GET /{topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        if last_id:
            request += f"Last-Event-ID: {last_id}\r\n"
        self.writer.write((request + "\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        asyncio.get_running_loop().create_task(self.read(reader))

    async def read(self, reader):
        data = False
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\n")
                if not line:
                    if data and self.last_id:
                        self.offsets.append(int(self.last_id.rsplit(":", 1)[1]))
                    data = False
                    if self.last_id:
                        self.positioned.set()
                    continue
                if line.startswith(b"id: "):
                    self.last_id = line[4:].decode()
                elif line.startswith(b"data"):
                    data = True
                elif line == b"event: reset":
                    self.reset = True
        except (ConnectionError, asyncio.CancelledError):
            return

    def close(self):
        if self.writer:
            self.writer.close()


class WsSubscriber:
    """A WebSocket subscriber that joins the topic and reads nothing (idle)."""

    async def open(self, port, source, topic):
        reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0))
        self.writer.write(
            (f"GET /{topic} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        self.reader = reader

    def close(self):
        self.writer.close()


def sources(n):
    # 5,000 streams per source address keeps clear of the ephemeral port range.
    return [f"127.0.1.{2 + i // 5000}" for i in range(n)]


async def publish(port, text):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = text.encode()
    writer.write(
        (f"POST /publish/storm HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T\r\n"
         f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    response = await reader.read()
    writer.close()
    assert b" 202 " in response.split(b"\r\n", 1)[0], response[:80]


async def open_all(items, opener, batch=500):
    for at in range(0, len(items), batch):
        await asyncio.gather(*(opener(i) for i in range(at, min(at + batch, len(items)))))


async def wait_until(condition, what):
    deadline = time.monotonic() + STEP
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def idle_memory(binary, n):
    result = {}
    for kind in ("websocket", "sse"):
        server, port = start_server(binary, [])
        try:
            base = rss_bytes(server.pid)
            src = sources(n)
            clients = [Stream() if kind == "sse" else WsSubscriber() for _ in range(n)]
            await open_all(clients, lambda i: clients[i].open(port, src[i], "storm"))
            if kind == "sse":
                await wait_until(lambda: all(c.positioned.is_set() for c in clients), "positions")
            await asyncio.sleep(1)  # let the server settle its allocator after the burst
            result[kind] = (rss_bytes(server.pid) - base) / n
            for c in clients:
                c.close()
        finally:
            server.kill()
            server.wait()
    return result


async def storm(binary, n, behind):
    server, port = start_server(binary, [])
    try:
        src = sources(n)
        streams = [Stream() for _ in range(n)]
        await open_all(streams, lambda i: streams[i].open(port, src[i], "storm"))
        await wait_until(lambda: all(s.positioned.is_set() for s in streams), "positions")
        # Live deliveries, for the reference.
        live = 20
        t0 = cpu_ticks(server.pid)
        for i in range(live):
            await publish(port, f"live {i}")
        await wait_until(lambda: all(len(s.offsets) == live for s in streams), "live deliveries")
        live_us = (cpu_ticks(server.pid) - t0) / HZ * 1e6 / (n * live)
        last_ids = [s.last_id for s in streams]
        for s in streams:
            s.close()
        await asyncio.sleep(0.5)
        for i in range(behind):
            await publish(port, f"missed {i}")
        # The storm: everyone back with Last-Event-ID.
        again = [Stream() for _ in range(n)]
        t0 = cpu_ticks(server.pid)
        start = time.monotonic()
        await open_all(again, lambda i: again[i].open(port, src[i], "storm", last_ids[i]), batch=2000)
        opened = time.monotonic() - start
        await wait_until(lambda: all(len(s.offsets) >= behind for s in again), "replays")
        elapsed = time.monotonic() - start
        replay_us = (cpu_ticks(server.pid) - t0) / HZ * 1e6 / (n * behind)
        exact = sum(
            1 for s, last in zip(again, last_ids)
            if not s.reset and s.offsets == list(range(int(last.rsplit(":", 1)[1]) + 1,
                                                       int(last.rsplit(":", 1)[1]) + behind + 1)))
        for s in again:
            s.close()
        return {"opened_s": opened, "all_live_s": elapsed, "exact": exact, "streams": n,
                "live_us": live_us, "replay_us": replay_us}
    finally:
        server.kill()
        server.wait()


def storm_loadgen(binary, loadgen, n, behind, window):
    """The storm through the load generator: a live run and a storm run, same traffic."""
    rate = 10.0
    after, down = 2.0, behind / rate
    duration = after + down + window + 3.0
    reports = {}
    for kind in ("live", "storm"):
        server, port = start_server(binary, [])
        path = f"/tmp/sse_storm_{kind}_{os.getpid()}.json"
        storm = [] if kind == "live" else [
            "--reconnect-after", str(after), "--reconnect-down", str(down),
            "--reconnect-window", str(window)]
        try:
            subprocess.run(
                ["taskset", "-c", "1", loadgen, "sse", f"http://127.0.0.1:{port}/storm",
                 "--subscribers", str(n), "--publishers", "1",
                 "--publish-url", f"http://127.0.0.1:{port}/publish/storm",
                 "--publish-token", "T", "--rate", str(rate), "--size", "64",
                 "--duration", str(duration), "--server-pid", str(server.pid),
                 "--source", "127.0.1.2,127.0.1.3", "--quiet", "--json", path, *storm],
                stdout=subprocess.DEVNULL, timeout=duration + 180, check=False)
            reports[kind] = json.load(open(path))
            os.unlink(path)
        finally:
            server.kill()
            server.wait()
    live, storm = reports["live"], reports["storm"]
    live_us = live["server"]["cpu_s"] * 1e6 / max(live["received"], 1)
    streams = storm["streams"]
    shape = streams["storm"] or {}
    replayed = max(shape.get("replayed") or 0, 1)
    extra_us = (storm["server"]["cpu_s"] - live["server"]["cpu_s"]) * 1e6
    return {"exact": streams["recovered"], "streams": n,
            "resets": streams["reset_on_resume"], "silent": streams["silent_losses"],
            "opened_s": shape.get("reopen_spread_s") or 0.0,
            "all_live_s": shape.get("all_live_after_s") or float("nan"),
            "replayed": replayed, "live_us": live_us, "replay_us": live_us + extra_us / replayed}


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--behind", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--binary", default="target/release/uringcast")
    default_loadgen = "target/release/uringcast-load"
    parser.add_argument("--loadgen", default=default_loadgen if os.path.exists(default_loadgen)
                        else None, help="the storm through this uringcast-load")
    parser.add_argument("--window", type=float, default=1.0,
                        help="with --loadgen: seconds over which the streams reconnect")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    memory, storms = [], []
    for run in range(args.runs):
        m = await idle_memory(args.binary, args.streams)
        if args.loadgen:
            s = storm_loadgen(args.binary, args.loadgen, args.streams, args.behind, args.window)
        else:
            s = await storm(args.binary, args.streams, args.behind)
        memory.append(m)
        storms.append(s)
        print(f"run {run + 1}: idle RSS per subscriber websocket {m['websocket']:.0f} B, "
              f"sse {m['sse']:.0f} B ({m['sse'] / m['websocket']:.2f}x); storm: "
              f"{s['exact']}/{s['streams']} exact, reconnects {'spread over' if args.loadgen else 'sent in'} {s['opened_s']:.2f} s, "
              f"all live after {s['all_live_s']:.2f} s; CPU per replayed publication "
              f"{s['replay_us']:.3f} us, per live delivery {s['live_us']:.3f} us "
              f"({s['replay_us'] / s['live_us']:.2f}x)", flush=True)
    med = lambda xs: statistics.median(xs)
    print(f"median idle RSS per subscriber: websocket {med([m['websocket'] for m in memory]):.0f} B, "
          f"sse {med([m['sse'] for m in memory]):.0f} B, "
          f"ratio {med([m['sse'] / m['websocket'] for m in memory]):.2f}x")
    print(f"median storm: all live after {med([s['all_live_s'] for s in storms]):.2f} s, "
          f"replay/live CPU {med([s['replay_us'] / s['live_us'] for s in storms]):.2f}x, "
          f"exact {min(s['exact'] for s in storms)}/{args.streams} (worst run)")
    if any(s["exact"] != s["streams"] for s in storms):
        sys.exit(1)


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
