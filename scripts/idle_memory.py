#!/usr/bin/env python3
"""Memory per idle WebSocket connection of a running server, measured from /proc.

Usage: idle_memory.py PORT SERVER_PID CONNECTIONS [HOLD_SECONDS[,HOLD_SECONDS...]]

Opens CONNECTIONS upgraded connections to 127.0.0.1:PORT (spread over source addresses
127.0.0.200-127.0.0.219 to stay clear of the ephemeral port limit), then, at each HOLD_SECONDS
after the last upgrade (default 11), prints the growth of the server's VmRSS and of the
kernel's Slab (/proc/meminfo, both ends of every loopback connection) divided by CONNECTIONS.
Bounded: every socket has a 10 s timeout. With TLS_CA=FILE in the environment the connections
are wss:// (TLS to the port, the certificate checked against FILE, its name not).
"""
import os
import ssl
import socket
import sys
import time

REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


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
    rss0, slab0 = rss(pid), slab()
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(f"127.0.0.{200 + i % 20}", 0))
        if tls:
            s = tls.wrap_socket(s, server_hostname="localhost")
        s.sendall(REQUEST)
        sockets.append(s)
        if len(sockets) % 500 == 0 or len(sockets) == count:
            for t in sockets[-(len(sockets) % 500 or 500):]:
                head = t.recv(256)
                if not head.startswith(b"HTTP/1.1 101"):
                    sys.exit(f"connection {i}: no 101: {head!r}")
    upgraded = time.monotonic()
    # The handshake deadlines (10 s by default) expire during an 11 s hold.
    for hold in sorted(holds):
        time.sleep(max(0.0, upgraded + hold - time.monotonic()))
        rss1, slab1 = rss(pid), slab()
        print(f"hold_s={hold:g} connections={count} rss_before={rss0} rss_after={rss1} "
              f"user_bytes_per_conn={(rss1 - rss0) / count:.0f} "
              f"kernel_slab_bytes_per_conn_both_ends={(slab1 - slab0) / count:.0f}", flush=True)

if __name__ == "__main__":
    main()
