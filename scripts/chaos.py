#!/usr/bin/env python3
"""The chaos run behind scripts/chaos.sh, for one broker (standard library only).

Starts two trios of uringcast nodes on the broker (`--mode broadcast` and `--mode pusher`,
each with `--broker URL --history N`, on 127.0.0.1 ports the kernel picks), publishers on
every node and subscribers on every node (WebSocket rooms, Server-Sent Events and Pusher),
then, while publishing, injects the faults one after the other:

  broker   the broker restarted (`scripts/brokers.sh restart NAME DIR`)
  kill     a node of each trio SIGKILLed, and a new node started in its place
  freeze   a node of each trio stopped (SIGSTOP) for longer than its heartbeats, then SIGCONT
  cut      one subscriber of each kind cut off for CUT seconds, which then reconnects to
           another node with its last position

Every payload is {"p": PUBLISHER, "s": SEQUENCE}, so a subscriber's losses are known exactly.
A subscriber whose node stops answering (closed, reset, or silent for IDLE seconds) moves to
another node: an SSE stream with Last-Event-ID, a Pusher subscription with the resume
extension (`resume: {epoch, offset}`) when its events carry positions. A publication a
subscriber lacks at the end is:

  missed, told   a "not recovered" lies between the deliveries around it: SSE `event: reset`,
                 Pusher `uringcast:resume_failed`, or a reconnect with nothing to resume from
                 (WebSocket rooms have no resume; their node closes them with 4010 "not
                 recovered" at a loss it cannot fill, and reconnecting
                 is the only notice they can have; Pusher events without a position, too)
  silent gap     none does. Must be 0.

A publication no subscriber received at all, made through a node or a broker under a fault
(from 5 s before it, the longest a publish waits in a node's queue for the broker, unless a
later one of the same publisher through that node got out before the fault; until that
publisher's next publication through that node that someone received), is "lost at
publish": it may never have reached the broker (the node died with it, or the broker was
down, and publishes then fail). Any other publication is expected by every subscriber.

Exit status: 0 when nothing failed and there are no silent gaps, 1 otherwise, 3 after a
`SKIP chaos BROKER: reason` line (the node does not take this broker, or keeps positions per
node with it). Every loop is bounded in count and time; nothing leaves 127.0.0.1.
"""

import argparse
import asyncio
import base64
import bisect
import hashlib
import hmac
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

# Whether a topic's offsets are consecutive on this run's broker (set in main).
CONSECUTIVE_OFFSETS = True

T0 = time.monotonic()
TOKEN = "chaos-token"
APP_ID, APP_KEY, APP_SECRET = "1", "chaoskey", "chaossecret"
TOPIC = "chaos"
QUIET = 5  # seconds without a delivery that end the run's drain
# How long a publish may wait in a node's queue for the broker (the link's I/O timeout): a
# node killed or frozen takes what it still held with it.
QUEUED = 5.0
EVENT = "tick"
PING_INTERVAL = 2  # the nodes' heartbeat (--ping-interval), seconds
MAX_SESSIONS = 60  # connections one client opens at most in a run
EXIT_SKIP = 3


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[chaos {now():6.1f}s] {msg}", file=sys.stderr, flush=True)


class Skip(Exception):
    pass


class Closed(Exception):
    pass


# --------------------------------------------------------------------------------------
# Wire: a WebSocket client (RFC 6455, what this run needs), an SSE reader, a signed POST
# --------------------------------------------------------------------------------------
def _mask(data, key):
    n = len(data)
    if n == 0:
        return data
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


async def _http_head(reader, timeout):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    if len(head) > 16384:
        raise Closed("response head too large")
    return head.decode("latin-1")


class WebSocket:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port, path, timeout=5.0):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        w.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        try:
            head = await _http_head(r, timeout)
        except BaseException:
            w.transport.abort()
            raise
        if not head.startswith("HTTP/1.1 101"):
            w.transport.abort()
            raise Closed(f"upgrade refused: {head.splitlines()[0] if head else 'nothing'}")
        return cls(r, w)

    def send(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        self.w.write(head + key + _mask(payload, key))

    def send_text(self, text):
        self.send(0x1, text.encode())

    async def recv(self, idle):
        """The next data message (opcode, payload); answers pings; Closed on a close."""
        parts, first_op = [], None
        while True:
            b0, b1 = await asyncio.wait_for(self.r.readexactly(2), idle)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.r.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.r.readexactly(8))
            if n > (1 << 24):
                raise Closed("frame too large")
            key = await self.r.readexactly(4) if b1 & 0x80 else None
            payload = await asyncio.wait_for(self.r.readexactly(n), idle)
            if key:
                payload = _mask(payload, key)
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(f"close {code} {payload[2:].decode(errors='replace')}")
            if op == 0x9:
                self.send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op != 0x0:
                first_op, parts = op, []
            parts.append(payload)
            if b0 & 0x80:
                return first_op, b"".join(parts)

    def abort(self):
        self.w.transport.abort()


class EventStream:
    """A Server-Sent Events stream: GET with Accept: text/event-stream."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port, path, last_id, timeout=5.0):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
        w.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Accept: text/event-stream\r\n{extra}\r\n"
            ).encode()
        )
        try:
            head = await _http_head(r, timeout)
        except BaseException:
            w.transport.abort()
            raise
        if not head.startswith("HTTP/1.1 200"):
            w.transport.abort()
            raise Closed(f"stream refused: {head.splitlines()[0] if head else 'nothing'}")
        return cls(r, w)

    async def next_event(self, idle):
        """The next event as a dict (event, data, id), or None for a comment (a heartbeat)."""
        event = {"event": "message", "data": None, "id": None}
        seen = False
        while True:
            line = await asyncio.wait_for(self.r.readline(), idle)
            if not line:
                raise Closed("stream ended")
            line = line.rstrip(b"\r\n").decode()
            if line == "":
                if seen:
                    return event
                continue
            if line.startswith(":"):
                if not seen:
                    return None
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            seen = True
            if field == "data":
                event["data"] = value if event["data"] is None else event["data"] + "\n" + value
            elif field in ("event", "id"):
                event[field] = value

    def abort(self):
        self.w.transport.abort()


def pusher_signed_query(method, path, body):
    params = {
        "auth_key": APP_KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    sig = hmac.new(APP_SECRET.encode(), f"{method}\n{path}\n{query}".encode(), hashlib.sha256)
    return f"{query}&auth_signature={sig.hexdigest()}"


async def http_post(port, path, body, timeout):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        w.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + body
        )
        head = await _http_head(r, timeout)
        return int(head.split(" ", 2)[1])
    finally:
        w.transport.abort()


async def http_get(port, path, timeout=3.0):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        return (await asyncio.wait_for(r.read(1 << 22), timeout)).decode(errors="replace")
    finally:
        w.transport.abort()


# --------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------
class Node:
    def __init__(self, trio, number, proc, port, logpath):
        self.trio, self.number, self.proc, self.port, self.log = trio, number, proc, port, logpath
        self.alive = True  # not killed by this run
        self.frozen = False

    @property
    def name(self):
        return f"{self.trio.mode}-{self.number}"


class Trio:
    """Three nodes of one mode on the broker; a killed node is replaced by a new one."""

    def __init__(self, run, mode):
        self.run, self.mode, self.nodes, self.started = run, mode, [], 0

    def live(self):
        return [n for n in self.nodes if n.alive and not n.frozen]

    def other(self, node):
        """A serving node other than `node`, chosen at random, or any serving one."""
        live = self.live()
        if not live:
            return None
        choices = [n for n in live if n is not node] or live
        return random.choice(choices)

    async def start_node(self):
        self.started += 1
        number = self.started
        a = self.run.args
        logpath = os.path.join(a.out, f"node-{self.mode}-{number}.log")
        cmd = [
            a.bin, "--listen", "127.0.0.1:0", "--mode", self.mode, "--workers", "1",
            "--broker", a.broker_url, "--history", str(a.history), "--max-recover", "5000",
            "--ping-interval", str(PING_INTERVAL),
        ]
        if self.mode == "pusher":
            cmd += ["--app-id", APP_ID, "--app-key", APP_KEY, "--app-secret", APP_SECRET]
        else:
            cmd += ["--publish-token", TOKEN]
        logf = open(logpath, "ab")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=logf, stdin=asyncio.subprocess.DEVNULL
        )
        logf.close()
        self.run.pids.append(proc)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            raise RuntimeError(f"node {self.mode}-{number} did not print its address in 20 s (log: {logpath})")
        text = line.decode().strip()
        if not text.startswith("listening on "):
            rc = await asyncio.wait_for(proc.wait(), 10)
            tail = open(logpath, errors="replace").read().strip().splitlines()[-3:]
            reason = " / ".join(tail) or "no output"
            if rc == 2:
                raise Skip(f"the node refuses this broker (exit 2: {reason})")
            raise RuntimeError(f"node {self.mode}-{number} exited {rc}: {reason}")
        port = int(text.rsplit(":", 1)[1])
        node = Node(self, number, proc, port, logpath)
        self.nodes.append(node)
        asyncio.get_running_loop().create_task(_drain(proc.stdout))
        log(f"node {node.name} pid {proc.pid} on 127.0.0.1:{port}")
        return node


async def _drain(stream):
    while await stream.read(4096):
        pass


# --------------------------------------------------------------------------------------
# Publishers
# --------------------------------------------------------------------------------------
class Publisher:
    """Publishes {"p","s"} at RATE per second through one node, moving when it fails."""

    def __init__(self, run, trio, node, name):
        self.run, self.trio, self.node, self.name = run, trio, node, name
        self.seq = 0
        self.made = {}  # seq -> (time, node): sent without an error
        self.failed = 0  # publications the node refused or the connection lost at once

    def payload(self):
        return json.dumps({"p": self.name, "s": self.seq}, separators=(",", ":"))

    async def run_ws(self):
        conn, reader, sessions = None, None, 0
        interval = 1.0 / self.run.args.rate
        tick = time.monotonic()
        while now() < self.run.pub_end:
            if conn is None:
                node = self.node if self.node.alive else self.trio.other(self.node)
                if node is None or sessions >= MAX_SESSIONS:
                    await asyncio.sleep(0.2)
                    continue
                sessions += 1
                try:
                    conn = await WebSocket.connect(node.port, f"/publish/{TOPIC}?token={TOKEN}", 3)
                    self.node = node
                    reader = asyncio.get_running_loop().create_task(self._read(conn))
                except (OSError, asyncio.TimeoutError, Closed, asyncio.IncompleteReadError) as e:
                    log(f"publisher {self.name}: {node.name}: {e!r}")
                    self.node = self.trio.other(node) or node
                    await asyncio.sleep(0.2)
                    continue
            self.seq += 1
            try:
                if reader.done():
                    raise Closed("connection lost")
                conn.send_text(self.payload())
                await asyncio.wait_for(conn.w.drain(), 2)
                self.made[self.seq] = (now(), self.node.name)
            except (OSError, asyncio.TimeoutError, Closed) as e:
                self.failed += 1
                log(f"publisher {self.name}: {self.node.name}: {e!r}; moving")
                conn.abort()
                reader.cancel()
                conn = None
                self.node = self.trio.other(self.node) or self.node
                continue
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if conn is not None:
            conn.abort()
            reader.cancel()

    async def _read(self, conn):
        try:
            while True:
                await conn.recv(3600)
        except (OSError, Closed, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return

    async def run_pusher(self):
        interval = 1.0 / self.run.args.rate
        tick = time.monotonic()
        path = f"/apps/{APP_ID}/events"
        while now() < self.run.pub_end:
            node = self.node if (self.node.alive and not self.node.frozen) else self.trio.other(self.node)
            if node is None:
                await asyncio.sleep(0.2)
                continue
            self.node = node
            self.seq += 1
            body = json.dumps({"name": EVENT, "channel": TOPIC, "data": self.payload()}).encode()
            sent_at = now()
            try:
                status = await http_post(node.port, f"{path}?{pusher_signed_query('POST', path, body)}", body, 2)
                if status != 200:
                    raise Closed(f"status {status}")
                self.made[self.seq] = (sent_at, node.name)
            except (OSError, asyncio.TimeoutError, Closed, asyncio.IncompleteReadError, ValueError) as e:
                self.failed += 1
                log(f"publisher {self.name}: {node.name}: {e!r}; moving")
                self.node = self.trio.other(node) or node
                continue
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))


# --------------------------------------------------------------------------------------
# Subscribers
# --------------------------------------------------------------------------------------
class Subscriber:
    """One client that stays for the whole run, over as many connections as it needs."""

    def __init__(self, run, trio, kind, node, name):
        self.run, self.trio, self.kind, self.node, self.name = run, trio, kind, node, name
        self.log = []  # ("d", publisher, seq) and ("n", why), in arrival order
        self.pos = None  # (epoch, offset) of the last event with a position
        self.sessions = 0
        self.resumes = 0
        self.recovered = 0
        self.not_recovered = 0
        self.id_jumps = 0  # a position past the next one, with no notice: silent
        self.id_repeats = 0
        self.bad = 0
        self.ready = asyncio.Event()
        self.conn = None
        self.cut_until = None
        self.pending_resume = False

    def notice(self, why):
        self.log.append(("n", why, round(time.monotonic() - T0, 2), self.node.name if self.node else None))
        self.not_recovered += 1
        self.pending_resume = False

    def deliver(self, text, position):
        try:
            p = json.loads(text)
            pub, seq = p["p"], p["s"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if position is not None:
            self.check_position(position)
        elif self.kind == "pusher":
            # An event without a position (published on another node, docs/PUSHER.md): the
            # client no longer knows where it is, so it has nothing to resume from.
            self.pos = None
        if self.pending_resume:
            self.recovered += 1
            self.pending_resume = False
        self.log.append(("d", pub, seq, round(time.monotonic() - T0, 2), self.node.name if self.node else None, position))

    def check_position(self, position):
        # A subscription to a topic its node had not heard of yet starts from an unknown
        # epoch (""), learnt with the first publication: nothing is behind it.
        if self.pos is not None and self.pos[0]:
            epoch, offset = self.pos
            # On Redis a topic's offsets are consecutive, so a skipped one is a publication
            # missed. On JetStream and Kafka a topic shares its stream or partition with
            # others (docs/BROKERS.md): offsets only grow, and what is missed shows in the
            # payloads' (publisher, sequence) instead.
            skipped = position[1] > offset + 1 if CONSECUTIVE_OFFSETS else False
            if position[0] != epoch or skipped:
                self.id_jumps += 1
                log(f"{self.name}: position {position[0]}:{position[1]} follows {epoch}:{offset} with no notice")
            elif position[1] <= offset:
                self.id_repeats += 1
        self.pos = position

    def cut(self, seconds):
        self.cut_until = time.monotonic() + seconds
        if self.conn is not None:
            self.conn.abort()

    async def run_forever(self):
        node = self.node
        while not self.run.stopping and self.sessions < MAX_SESSIONS:
            if node is None or not node.alive or node.frozen:
                node = self.trio.other(node)
                if node is None:
                    await asyncio.sleep(0.2)
                    continue
            self.node = node
            self.sessions += 1
            why = "?"
            try:
                await getattr(self, f"session_{self.kind}")(node)
            except (OSError, Closed, asyncio.IncompleteReadError) as e:
                why = repr(e)
            except asyncio.TimeoutError:
                why = f"nothing for {self.run.args.idle} s"
            except (ValueError, KeyError, TypeError) as e:
                why = repr(e)
                self.run.failures.append(f"{self.name}: unexpected message: {e!r}")
            finally:
                if self.conn is not None:
                    self.conn.abort()
                    self.conn = None
            if self.run.stopping:
                break
            if self.cut_until is not None:
                wait = self.cut_until - time.monotonic()
                log(f"{self.name}: cut off for {wait:.1f} s")
                await asyncio.sleep(max(0.0, wait))
                self.cut_until = None
                self.run.cuts_done += 1
            else:
                log(f"{self.name}: {node.name} lost ({why}); moving")
            node = self.trio.other(node)
            await asyncio.sleep(0.2)

    async def session_ws(self, node):
        self.conn = await WebSocket.connect(node.port, f"/{TOPIC}", 3)
        if self.sessions > 1:
            # Rooms by path have no resume: what was published meanwhile is gone, and the
            # reconnect is the only notice the client has.
            self.notice("ws-reconnect")
        self.ready.set()
        while True:
            _, payload = await self.conn.recv(self.run.args.idle)
            self.deliver(payload.decode(), None)

    async def session_sse(self, node):
        last = f"{self.pos[0]}:{self.pos[1]}" if self.pos else None
        self.conn = await EventStream.connect(node.port, f"/{TOPIC}", last, 3)
        if last:
            self.resumes += 1
            self.pending_resume = True
        # Subscribed with its head: a node whose broker log has not heard of the topic yet
        # sends no id-only event; the first event names the position.
        self.ready.set()
        while True:
            ev = await self.conn.next_event(self.run.args.idle)
            if ev is None:
                continue
            position = None
            epoch, _, offset = (ev["id"] or "").rpartition(":")
            if epoch and offset.isdigit():
                position = (epoch, int(offset))
            if ev["event"] == "reset":
                head = json.loads(ev["data"])
                self.notice("sse-reset")
                self.pos = (head["epoch"], int(head["offset"]))
            elif ev["data"] is None:
                # The id-only head of a stream that resumed nothing.
                if position is not None:
                    self.pos = position
            elif ev["event"] == "message":
                self.deliver(ev["data"], position)

    async def session_pusher(self, node):
        self.conn = ws = await WebSocket.connect(
            node.port, f"/app/{APP_KEY}?protocol=7&client=chaos&version=1.0", 3
        )
        _, first = await ws.recv(5)
        if json.loads(first).get("event") != "pusher:connection_established":
            raise Closed(f"unexpected first message {first[:100]!r}")
        data = {"channel": TOPIC}
        if self.pos is not None:
            data["resume"] = {"epoch": self.pos[0], "offset": self.pos[1]}
            self.resumes += 1
            self.pending_resume = True
        elif self.sessions > 1:
            # Its events had no position: nothing to resume from.
            self.notice("pusher-no-position")
        ws.send_text(json.dumps({"event": "pusher:subscribe", "data": data}))
        while True:
            _, raw = await ws.recv(self.run.args.idle)
            m = json.loads(raw)
            event = m.get("event")
            position = (m["epoch"], int(m["offset"])) if "offset" in m and "epoch" in m else None
            if event == "pusher:ping":
                ws.send_text('{"event":"pusher:pong","data":{}}')
            elif event == "pusher_internal:subscription_succeeded":
                if position is not None and self.pos is None:
                    self.pos = position
                self.ready.set()
            elif event == "uringcast:resume_failed":
                head = m.get("data")
                head = json.loads(head) if isinstance(head, str) else (head or {})
                self.notice("pusher-resume-failed")
                self.pos = (head["epoch"], int(head["offset"])) if "epoch" in head else None
            elif event == EVENT:
                self.deliver(m.get("data"), position)
            elif event == "pusher:error":
                raise Closed(f"pusher:error {m.get('data')}")


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
class Run:
    def __init__(self, args):
        self.args = args
        self.pids = []
        self.stopping = False
        self.pub_end = float("inf")
        self.faults = []  # (what, node name or None for the broker, start, end)
        self.cuts_done = 0
        self.failures = []
        self.silent_context = []  # what each silent miss's subscriber saw around it
        self.duplicate_context = []  # what each repeat's subscriber saw around it
        self.subs = []

    def excused(self, publisher, made_at, node_name, confirmed):
        """Whether a publication nobody received was made through a node (or a broker) in
        trouble: up to QUEUED s before a fault on it, unless a later publication of the same
        publisher through that node, made before the fault, reached someone (then this one
        was not still in the node's queue), until that publisher's first publication through
        the same node, made after the fault, that someone received (at most 60 s)."""
        for _, target, start, end in self.faults:
            if target not in (None, node_name) or not start - QUEUED <= made_at <= end + 60.0:
                continue
            got_out_after = any(
                made_at < at < start and node == node_name and (publisher.name, seq) in confirmed
                for seq, (at, node) in publisher.made.items()
            )
            if got_out_after:
                continue
            working_again = any(
                end < at < made_at and node == node_name and (publisher.name, seq) in confirmed
                for seq, (at, node) in publisher.made.items()
            )
            if not working_again:
                return True
        return False

    async def cleanup(self):
        """Stops every node this run started (SIGCONT first: a stopped one cannot die)."""
        for proc in self.pids:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.pids:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    async def broker_restart(self):
        a = self.args
        name = a.restart_name
        if name == "cluster-owner":
            name = cluster_owner(a.brokers_dir, f"{{uringcast:{TOPIC}}}")
        start = now()
        log(f"fault: broker {name} restarted")
        proc = await asyncio.create_subprocess_exec(
            "scripts/brokers.sh", "restart", name, a.brokers_dir,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            err = b"took over 60 s"
        # The broker went down whatever came next.
        self.faults.append(("broker", None, start, now()))
        if proc.returncode != 0:
            raise RuntimeError(f"brokers.sh restart {name} failed: {err.decode()[-300:]}")

    async def kill_and_replace(self, trios):
        for trio in trios:
            victim = trio.nodes[1]
            start = now()
            log(f"fault: SIGKILL {victim.name}")
            victim.alive = False
            victim.proc.send_signal(signal.SIGKILL)
            await victim.proc.wait()
            await trio.start_node()
            self.faults.append(("kill", victim.name, start, now()))

    async def freeze(self, trios, seconds):
        victims = [t.nodes[2] for t in trios]
        start = now()
        for v in victims:
            log(f"fault: SIGSTOP {v.name} for {seconds} s")
            v.frozen = True
            v.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(seconds)
        for v in victims:
            v.proc.send_signal(signal.SIGCONT)
            v.frozen = False
            log(f"fault: SIGCONT {v.name}")
        for v in victims:
            self.faults.append(("freeze", v.name, start, now()))

    async def cut(self, subs, seconds):
        log(f"fault: {len(subs)} subscribers cut off for {seconds} s")
        done = self.cuts_done + len(subs)
        for s in subs:
            s.cut(seconds)
        deadline = time.monotonic() + seconds + 10
        while self.cuts_done < done and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.cuts_done < done:
            self.failures.append("a cut subscriber did not reconnect")

    async def main(self):
        a = self.args
        os.makedirs(a.out, exist_ok=True)
        trios = [Trio(self, "broadcast"), Trio(self, "pusher")]
        for trio in trios:
            for _ in range(3):
                await trio.start_node()
        # A node keeps positions itself unless the broker gives them (docs/BROKERS.md).
        metrics = await http_get(trios[0].nodes[0].port, "/metrics")
        if "uringcast_broker_history_gaps_repaired_total" not in metrics:
            raise Skip("the node keeps positions per node with this broker (no broker log in /metrics)")

        subs, pubs = [], []
        self.subs = subs
        for trio in trios:
            kinds = ["ws", "sse"] if trio.mode == "broadcast" else ["pusher"]
            for node in trio.nodes:
                for kind in kinds:
                    for i in range(a.subscribers):
                        subs.append(Subscriber(self, trio, kind, node, f"{kind}-{node.number}.{i}"))
                pubs.append(Publisher(self, trio, node, f"{trio.mode[0]}{node.number}"))
        loop = asyncio.get_running_loop()
        sub_tasks = [loop.create_task(s.run_forever()) for s in subs]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 15)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{sum(not s.ready.is_set() for s in subs)} subscribers not up in 15 s")
        await asyncio.sleep(1)  # every node has subscribed the topic at the broker
        log(f"{len(subs)} subscribers up; publishing")
        self.pub_end = float("inf")
        pub_tasks = [
            loop.create_task(p.run_ws() if p.trio.mode == "broadcast" else p.run_pusher()) for p in pubs
        ]
        gap = a.gap
        try:
            await asyncio.sleep(gap)
            await self.broker_restart()
            await asyncio.sleep(gap)
            await self.kill_and_replace(trios)
            await asyncio.sleep(gap)
            await self.freeze(trios, a.freeze)
            await asyncio.sleep(gap)
            cut = [next(s for s in subs if s.kind == k) for k in ("ws", "sse", "pusher")]
            await self.cut(cut, a.cut)
            await asyncio.sleep(gap)
        except (RuntimeError, OSError) as e:
            self.failures.append(f"fault injection: {e}")
        self.pub_end = now()
        await asyncio.wait_for(asyncio.gather(*pub_tasks, return_exceptions=True), 10)
        log("publishers stopped; waiting for the last deliveries")
        # Drain: until nothing new arrives for QUIET s (at most 30 s). A node that was frozen
        # or cut off from a slow broker (Tansu under load takes 0.3 s a request) can deliver
        # its last publications seconds after the publishers stopped.
        last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            total = sum(len(s.log) for s in subs)
            if total != last:
                last, quiet_since = total, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET:
                break
            await asyncio.sleep(0.25)
        counters = {}
        for trio in trios:
            for node in trio.live():
                try:
                    text = await http_get(node.port, "/metrics")
                except (OSError, asyncio.TimeoutError):
                    continue
                with open(os.path.join(self.args.out, f"node-{node.name}.metrics"), "w") as f:
                    f.write(text)
                for line in text.splitlines():
                    fields = line.split()
                    if len(fields) != 2 or line.startswith("#"):
                        continue
                    key = fields[0].split("{")[0].removeprefix("uringcast_")
                    if key in COUNTERS:
                        counters[key] = counters.get(key, 0) + int(float(fields[1]))
        self.stopping = True
        for t in sub_tasks:
            t.cancel()
        await asyncio.gather(*sub_tasks, return_exceptions=True)
        return self.report(trios, subs, pubs, counters)

    def report(self, trios, subs, pubs, counters):
        rows = []
        silent_examples = []
        lost_by_trio = {}
        for trio in trios:
            tpubs = [p for p in pubs if p.trio is trio]
            confirmed = set()
            for s in subs:
                if s.trio is trio:
                    confirmed.update((e[1], e[2]) for e in s.log if e[0] == "d")
            # Everything someone received (a send that failed locally may have gone out
            # all the same), and what was made and not excused.
            expected, lost_at_publish = set(confirmed), 0
            for p in tpubs:
                for seq, (at, node) in p.made.items():
                    if (p.name, seq) in confirmed:
                        continue
                    if self.excused(p, at, node, confirmed):
                        lost_at_publish += 1
                    else:
                        expected.add((p.name, seq))
            made = sum(len(p.made) for p in tpubs)
            lost_by_trio[trio.mode] = lost_at_publish
            for kind in sorted({s.kind for s in subs if s.trio is trio}):
                group = [s for s in subs if s.trio is trio and s.kind == kind]
                row = {
                    "clients": f"{kind} ({len(group)})", "made": made, "deliveries": 0, "recovered": 0,
                    "not_recovered": 0, "missed_told": 0, "lost_at_publish": lost_at_publish,
                    "duplicates": 0, "silent": 0, "id_jumps": 0, "reconnects": 0,
                    "repeated_after_reconnect": 0,
                }
                for s in group:
                    silent, told, dups, repeats, deliveries = analyse(s, expected)
                    row["repeated_after_reconnect"] += repeats
                    for (pub, seq), at in dup_keys(s)[:3]:
                        self.duplicate_context.append({"subscriber": s.name, "repeated": f"{pub}#{seq}",
                                                       "around": [list(e) for e in s.log[max(0, at - 6):at + 3]]})
                    row["deliveries"] += deliveries
                    row["recovered"] += s.recovered
                    row["not_recovered"] += s.not_recovered
                    row["missed_told"] += told
                    row["duplicates"] += dups + s.id_repeats
                    row["silent"] += len(silent) + s.id_jumps
                    row["id_jumps"] += s.id_jumps
                    row["reconnects"] += s.sessions - 1
                    if s.bad:
                        self.failures.append(f"{s.name}: {s.bad} payloads not understood")
                    for pub, seq in silent[:3]:
                        silent_examples.append(f"{s.name} missed {pub}#{seq} ({self.describe(tpubs, pub, seq)})")
                    for pub, seq in silent[:3]:
                        got_by = [[o.name] + list(e) for o in subs for e in o.log
                                  if e[0] == "d" and e[1] == pub and e[2] == seq]
                        self.silent_context.append({"subscriber": s.name, "missed": f"{pub}#{seq}",
                                                    "around": around(s.log, pub, seq),
                                                    "received_by": got_by})
                rows.append(row)
        total = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("clients", "made", "lost_at_publish")}
        total["clients"] = "all"
        total["made"] = sum(len(p.made) for p in pubs)
        total["lost_at_publish"] = sum(lost_by_trio.values())
        rows.append(total)
        return rows, silent_examples, counters

    def describe(self, pubs, pub, seq):
        for p in pubs:
            if p.name == pub and seq in p.made:
                at, node = p.made[seq]
                return f"made at {at:.1f} s through {node}"
        return "not made"


def around(entries, pub, seq, width=4):
    """The subscriber's log entries next to where `pub#seq` would have been (for the report)."""
    at = next((i for i, e in enumerate(entries) if e[0] == "d" and e[1] == pub and e[2] > seq), len(entries))
    return [list(e) for e in entries[max(0, at - width):at + width]]


def analyse(sub, expected):
    """(silent misses, misses told, duplicates, repeats after a reconnect, deliveries) of one
    subscriber. A client with no position to resume from (a room by path) that reconnects to
    a node still behind the one it left gets again what it had: the reconnect is its notice
    that its stream starts over, so such a repeat is counted apart, not as a duplicate."""
    per_pub = {}  # publisher -> ([seq...], [index...]) in arrival order
    notices = []
    got, session, dups, repeats, deliveries = set(), set(), 0, 0, 0
    for i, e in enumerate(sub.log):
        if e[0] == "n":
            notices.append(i)
            if e[1] == "ws-reconnect":
                session = set()
            continue
        deliveries += 1
        key = (e[1], e[2])
        if key in session:
            dups += 1
        elif key in got:
            repeats += 1
        got.add(key)
        session.add(key)
        seqs, idxs = per_pub.setdefault(e[1], ([], []))
        seqs.append(e[2])
        idxs.append(i)
    silent, told = [], 0
    for pub, seq in sorted(expected - got):
        seqs, idxs = per_pub.get(pub, ([], []))
        # The deliveries from that publisher around the missing one (arrival order follows
        # the publisher's order; a repeat out of place only widens the window).
        before = [idxs[k] for k in range(len(seqs)) if seqs[k] < seq]
        after = [idxs[k] for k in range(len(seqs)) if seqs[k] > seq]
        lo = max(before) if before else -1
        hi = min(after) if after else len(sub.log)
        k = bisect.bisect_right(notices, lo)
        if k < len(notices) and notices[k] < hi:
            told += 1
        else:
            silent.append((pub, seq))
    return silent, told, dups, repeats, deliveries


def dup_keys(sub):
    """The (publisher, sequence) keys `sub` received again, with the index of each repeat."""
    seen, dups = set(), []
    for i, e in enumerate(sub.log):
        if e[0] == "d":
            key = (e[1], e[2])
            if key in seen:
                dups.append((key, i))
            seen.add(key)
    return dups


def cluster_owner(brokers_dir, key):
    """The cluster master (cluster-N) that owns `key`'s slot."""
    for name in ("cluster-1", "cluster-2", "cluster-3"):
        port = open(os.path.join(brokers_dir, name, "port")).read().strip()
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", port, "GET", key + ":offset"],
            capture_output=True, text=True, timeout=5,
        ).stdout
        if "MOVED" not in out:
            return name
    raise RuntimeError(f"no cluster master owns {key}")


# Counters summed over the live nodes' /metrics at the end.
COUNTERS = (
    "broker_history_gaps_repaired_total", "broker_history_gaps_reported_total",
    "broker_publish_failures_total", "broker_reconnects_total", "gaps_filled_total",
    "gaps_reported_total",
)

COLUMNS = [
    ("clients", "subscribers"), ("made", "publications made"), ("deliveries", "deliveries"),
    ("reconnects", "reconnects"), ("recovered", "recovered"), ("not_recovered", 'reported "not recovered"'),
    ("missed_told", "missed, told"), ("lost_at_publish", "lost at publish"), ("duplicates", "duplicates"),
    ("silent", "**silent gaps**"),
]


def print_table(broker, rows):
    print(f"\nchaos {broker}:")
    print("| " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|" + "|".join("---" if k == "clients" else "---:" for k, _ in COLUMNS) + "|")
    for r in rows:
        cells = [str(r[k]) if not isinstance(r[k], int) else f"{r[k]:,}" for k, _ in COLUMNS]
        if r["clients"] == "all":
            cells = [f"**{c}**" for c in cells]
        print("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", required=True, help="name for the table: redis, cluster, nats, kafka")
    ap.add_argument("--broker-url", required=True)
    ap.add_argument("--brokers-dir", required=True, help="the DIR of scripts/brokers.sh start")
    ap.add_argument("--restart-name", required=True, help="brokers.sh NAME to restart, or cluster-owner")
    ap.add_argument("--bin", required=True, help="the uringcast binary")
    ap.add_argument("--out", required=True, help="directory for node logs and the JSON report")
    ap.add_argument("--history", type=int, default=100000)
    ap.add_argument("--rate", type=float, default=10, help="publications per second per publisher")
    ap.add_argument("--subscribers", type=int, default=2, help="per kind and node")
    ap.add_argument("--gap", type=float, default=8, help="seconds of publishing between faults")
    ap.add_argument("--freeze", type=float, default=6, help="seconds a node stays stopped")
    ap.add_argument("--cut", type=float, default=10, help="seconds a subscriber stays cut off")
    ap.add_argument("--idle", type=float, default=4.5, help="seconds of silence before a client moves")
    ap.add_argument("--max-seconds", type=float, default=300, help="the whole run, at most")
    args = ap.parse_args()
    global CONSECUTIVE_OFFSETS
    CONSECUTIVE_OFFSETS = args.broker in ("redis", "cluster")
    run = Run(args)

    async def bounded():
        try:
            return await asyncio.wait_for(run.main(), args.max_seconds)
        finally:
            await run.cleanup()

    status = 0
    try:
        rows, examples, counters = asyncio.run(bounded())
    except Skip as e:
        print(f"SKIP chaos {args.broker}: {e}", flush=True)
        status = EXIT_SKIP
    except (RuntimeError, OSError, asyncio.TimeoutError) as e:
        print(f"FAIL chaos {args.broker}: {e!r}", flush=True)
        status = 1
    if status:
        return status
    print_table(args.broker, rows)
    print("live nodes' /metrics at the end: " + ", ".join(
        f"{k} {counters.get(k, '?')}" for k in COUNTERS))
    total = rows[-1]
    for e in examples[:20]:
        print(f"  silent: {e}")
    if total["repeated_after_reconnect"]:
        print(f"  repeated after a reconnect with no position to resume from (rooms by path; "
              f"not a duplicate): {total['repeated_after_reconnect']}")
    for f in run.failures:
        print(f"  failure: {f}")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"broker": args.broker, "rows": rows, "silent_examples": examples,
                   "silent_context": run.silent_context, "duplicate_context": run.duplicate_context,
                   # Every subscriber's whole log when something was silent or repeated.
                   "logs": {s.name: s.log for s in run.subs} if total["silent"] or total["duplicates"] else {}, "failures": run.failures, "faults": run.faults,
                   "counters": counters}, f, indent=1)
    ok = total["silent"] == 0 and total["duplicates"] == 0 and not run.failures
    print(f"{'PASS' if ok else 'FAIL'} chaos {args.broker}: silent gaps {total['silent']}, "
          f"duplicates {total['duplicates']}, failures {len(run.failures)}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
