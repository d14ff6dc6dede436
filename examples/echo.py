#!/usr/bin/env python3
"""An echo server on danga: every byte a client sends comes straight back.

Run it::

    python examples/echo.py                      # 127.0.0.1, a free port, best backend
    python examples/echo.py --port 7000 --backend poll

It prints ``listening on HOST:PORT (backend NAME)`` once it is ready (so a script can
start it with ``--port 0`` and read the port from that line) and stops cleanly, exit
status 0, on SIGINT (Ctrl-C) or SIGTERM.

Three things worth reading here:

- **One recv, one send per message.** ``event_read`` does one ``read()`` (one recv) and
  one ``write()`` (one send when nothing is queued). Interest only changes when a client
  is paused, so a steady ping-pong makes no ``epoll_ctl`` calls at all; see
  ``benchmarks/syscalls.py``, which counts them.
- **Back-pressure.** A client that sends faster than it reads would make the server
  queue without limit. When ``write_buf_size`` passes the high-water mark the connection
  stops reading (``watch_read(False)``) and queues a *callable* behind the data: danga
  calls it once everything before it has been handed to the kernel, and it turns
  reading back on. The kernel's buffers then push back on the client.
- **Shutdown.** A signal handler that calls ``loop.stop()`` is all it takes: danga
  wakes a poll that is sleeping when ``stop()`` is called (Python alone would retry the
  interrupted poll with its old timeout, PEP 475), and a ``stop()`` that comes before
  ``run()`` is kept, so a signal that arrives during start-up is not lost.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import danga

#: Stop reading from a client once this many bytes wait in its write queue.
HIGH_WATER = 256 * 1024
#: The most one read() asks for.
READ_SIZE = 64 * 1024


class Echo(danga.Socket):
    """One client connection: echoes what it reads, pausing while its queue is full."""

    __slots__ = ("high_water", "paused", "pauses")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.high_water = high_water
        self.paused = False
        #: How many times back-pressure paused this connection (for tests and stats).
        self.pauses = 0
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(READ_SIZE)
        if data is None:  # EOF or a read error
            self.close("eof")
            return
        if not data:  # spurious wake-up: nothing to read after all
            return
        self.write(data)
        if self.write_buf_size > self.high_water and not self.paused and not self.closed:
            self.paused = True
            self.pauses += 1
            self.watch_read(False)
            # Runs once everything queued before it has reached the kernel.
            self.write(self._resume)

    def _resume(self) -> None:
        self.paused = False
        self.watch_read(True)


class EchoServer(danga.Listener):
    """The listening socket: one :class:`Echo` per accepted connection."""

    __slots__ = ("high_water",)

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.high_water = high_water

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        Echo(conn, loop=self.loop, high_water=self.high_water)


def stop_on_signals(loop: danga.Loop,
                    signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                    ) -> Callable[[], None]:
    """Make *signums* stop ``loop.run()`` promptly, even from a blocking poll.

    Returns a function that restores the previous handlers. Must be called from the
    main thread (``signal.signal`` raises ValueError elsewhere).
    """

    def on_signal(signum: int, frame: Any) -> None:
        loop.stop()  # wakes a sleeping poll; kept if run() has not started yet

    old_handlers = {signum: signal.signal(signum, on_signal) for signum in signums}

    def restore() -> None:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)

    return restore


def close_all(loop: danga.Loop) -> None:
    """Close every socket of *loop* (listener first, so nothing new arrives), then it."""
    for obj in sorted(loop.descriptor_map.values(),
                      key=lambda o: not isinstance(o, danga.Listener)):
        obj.close("shutdown")
    loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="danga echo server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--high-water", type=int, default=HIGH_WATER,
                        help=f"pause reading above this many queued bytes ({HIGH_WATER})")
    args = parser.parse_args(argv)

    loop = danga.Loop(args.backend)
    server = EchoServer(socket.create_server((args.host, args.port)), loop=loop,
                        high_water=args.high_water)
    restore = stop_on_signals(loop)
    print(f"listening on {server.local_addr_string()} (backend {loop.backend.name})",
          flush=True)
    try:
        loop.run()
    finally:
        restore()
        close_all(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
