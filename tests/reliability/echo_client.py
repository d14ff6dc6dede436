"""A load client, run as a subprocess, independent of danga (stdlib selectors only).

    python echo_client.py HOST PORT CONNECTIONS MESSAGES MAXSIZE SEED

Opens CONNECTIONS connections and keeps every one of them open until all are done.
Only once all are connected does each send MESSAGES messages of random sizes
(1..MAXSIZE), one at a time, verifying that each echo is byte-for-byte the message sent.
Prints one JSON line of figures on stdout; exits 1 (with the reason on stderr) on any
mismatch or error.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import sys
import time


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    nconn, nmsg, maxsize, seed = (int(a) for a in sys.argv[3:7])
    rng = random.Random(seed)
    pool = rng.randbytes(maxsize * 2)
    started = time.monotonic()
    conns = []
    for _ in range(nconn):
        s = socket.create_connection((host, port), timeout=30)
        s.setblocking(False)
        conns.append(s)
    connected = time.monotonic()
    sel = selectors.DefaultSelector()
    state = {}
    for s in conns:
        state[s] = [0, b"", bytearray()]  # messages done, expected echo, received
    sent_bytes = 0

    def send_next(s: socket.socket) -> None:
        nonlocal sent_bytes
        st = state[s]
        n = rng.randint(1, maxsize)
        off = rng.randrange(0, maxsize)
        msg = pool[off:off + n]
        st[1], st[2] = msg, bytearray()
        s.sendall(msg) if len(msg) < 65536 else _send_all(s, msg)
        sent_bytes += n

    def _send_all(s: socket.socket, msg: bytes) -> None:
        s.setblocking(True)
        try:
            s.sendall(msg)
        finally:
            s.setblocking(False)

    for s in conns:
        sel.register(s, selectors.EVENT_READ)
        send_next(s)
    active = len(conns)
    messages = 0
    while active:
        for key, _ in sel.select(30):
            s = key.fileobj
            st = state[s]
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                print(f"server closed a connection after {st[0]} messages", file=sys.stderr)
                return 1
            st[2] += data
            if len(st[2]) < len(st[1]):
                continue
            if st[2] != st[1]:
                print(f"echo mismatch on message {st[0]}: {len(st[2])} bytes back for "
                      f"{len(st[1])} sent", file=sys.stderr)
                return 1
            st[0] += 1
            messages += 1
            if st[0] == nmsg:
                sel.unregister(s)
                active -= 1
            else:
                send_next(s)
    done = time.monotonic()
    for s in conns:
        s.close()
    print(json.dumps({"connections": nconn, "messages": messages, "bytes": sent_bytes,
                      "connect_s": round(connected - started, 3),
                      "echo_s": round(done - connected, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
