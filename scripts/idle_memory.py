#!/usr/bin/env python3
"""Memory per idle WebSocket connection of a running server, measured from /proc.

Usage: idle_memory.py PORT SERVER_PID CONNECTIONS [HOLD_SECONDS[,HOLD_SECONDS...]]

Opens CONNECTIONS upgraded connections to 127.0.0.1:PORT (spread over source addresses
127.0.0.200-127.0.0.219 to stay clear of the ephemeral port limit), then, at each HOLD_SECONDS
after the last upgrade (default 11), prints the growth of the server's VmRSS and of the
kernel's Slab (/proc/meminfo, both ends of every loopback connection) divided by CONNECTIONS.
Bounded: every socket has a 10 s timeout. With TLS_CA=FILE in the environment the connections
are wss:// (TLS to the port, the certificate checked against FILE, its name not).
With DEFLATE=1 every connection offers permessage-deflate (as browsers do); with
MESSAGE_BYTES=N each sends one N-byte JSON message (compressed when deflate was agreed) and
reads its echo before going idle, so a server that keeps compression state per connection
has made it.
"""
import json
import os
import ssl
import socket
import struct
import sys
import time
import zlib

REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def json_message(size):
    """Compressible JSON of exactly `size` bytes, like a ticker's."""
    tick = {"type": "tick", "symbol": "ACME", "bid": 101.25, "ask": 101.27, "book": []}
    while len(json.dumps(tick)) < size:
        tick["book"].append({"price": 101 + len(tick["book"]), "size": 100})
    text = json.dumps(tick)
    return (text[: size - 1] + "}").encode() if len(text) > size else text.encode()


def frame(payload, compress):
    """A masked text frame, compressed (RSV1) as RFC 7692 §7.2.1 says when asked."""
    first = 0x81
    if compress:
        c = zlib.compressobj(wbits=-15)
        payload = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4]
        first |= 0x40
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([first]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise RuntimeError("connection closed")
        out += chunk
    return out


def read_frame(s):
    b0, b1 = read_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exact(s, 8))[0]
    return b0, read_exact(s, n)


def read_head(s):
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += read_exact(s, 1)
    return head


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def slab():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Slab")


def main():
    port, pid, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    holds = [float(h) for h in sys.argv[4].split(",")] if len(sys.argv) > 4 else [11.0]
    tls = None
    if os.environ.get("TLS_CA"):
        tls = ssl.create_default_context(cafile=os.environ["TLS_CA"])
        tls.check_hostname = False
    deflate = os.environ.get("DEFLATE") == "1"
    message = json_message(int(os.environ["MESSAGE_BYTES"])) if os.environ.get("MESSAGE_BYTES") else None
    request = REQUEST
    if deflate:
        request = request[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    negotiated = 0
    rss0, slab0 = rss(pid), slab()
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(f"127.0.0.{200 + i % 20}", 0))
        if tls:
            s = tls.wrap_socket(s, server_hostname="localhost")
        s.sendall(request)
        sockets.append(s)
        if len(sockets) % 500 == 0 or len(sockets) == count:
            for t in sockets[-(len(sockets) % 500 or 500):]:
                head = read_head(t)
                if not head.startswith(b"HTTP/1.1 101"):
                    sys.exit(f"connection {i}: no 101: {head!r}")
                agreed = b"permessage-deflate" in head.lower()
                negotiated += agreed
                if message:
                    t.sendall(frame(message, agreed))
                    first, payload = read_frame(t)
                    if first & 0x40:
                        payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
                    if payload != message:
                        sys.exit(f"connection {i}: the echo differs")
    upgraded = time.monotonic()
    # The handshake deadlines (10 s by default) expire during an 11 s hold.
    for hold in sorted(holds):
        time.sleep(max(0.0, upgraded + hold - time.monotonic()))
        rss1, slab1 = rss(pid), slab()
        print(f"hold_s={hold:g} connections={count} rss_before={rss0} rss_after={rss1} "
              f"deflate_negotiated={negotiated} message_bytes={len(message) if message else 0} "
              f"user_bytes_per_conn={(rss1 - rss0) / count:.0f} "
              f"kernel_slab_bytes_per_conn_both_ends={(slab1 - slab0) / count:.0f}", flush=True)

if __name__ == "__main__":
    main()
