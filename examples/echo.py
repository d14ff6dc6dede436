#!/usr/bin/env python3
"""An echo server on danga: every byte a client sends comes straight back.

Run it::

    python examples/echo.py                      # 127.0.0.1, a free port, best backend
    python examples/echo.py --port 7000 --backend poll

It prints ``listening on HOST:PORT (backend NAME)`` once it is ready (so a script can
start it with ``--port 0`` and read the port from that line). SIGTERM or SIGINT (Ctrl-C)
shut it down gracefully: it stops accepting, closes idle connections, lets every response
already queued reach its client, and exits 0 once all are gone (1 if ``--grace`` seconds
run out first). A second signal stops it at once.

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
- **Graceful shutdown.** ``loop.add_signal_handler`` runs the handler on the loop
  thread, between events, so it may close sockets and add timers like any callback.
  The listener closes first (nothing new arrives); a connection with nothing queued is
  closed; one with a response still queued stops reading and queues its own close
  behind the response (a queued *callable* runs once everything before it has been
  sent), so the response is delivered whole. The loop stops when its descriptor map is
  empty. ``danga.prefork`` workers do the same (see ``examples/prefork_echo.py``).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import danga

#: Stop reading from a client once this many bytes wait in its write queue.
HIGH_WATER = 256 * 1024
#: The most one read() asks for.
READ_SIZE = 64 * 1024


class Echo(danga.Socket):
    """One client connection: echoes what it reads, pausing while its queue is full."""

    __slots__ = ("finishing", "high_water", "paused", "pauses")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.high_water = high_water
        self.paused = False
        #: How many times back-pressure paused this connection (for tests and stats).
        self.pauses = 0
        #: True once :meth:`finish` was called: no more reading, close when sent.
        self.finishing = False
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(READ_SIZE)
        if data is None:  # EOF or a read error: what is queued still goes out
            self.finish("eof")
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
        if not self.finishing:
            self.watch_read(True)

    def finish(self, reason: str = "shutdown") -> None:
        """Stop reading and close once everything queued has been sent (at once when
        nothing is queued)."""
        if self.finishing or self.closed:
            return
        self.finishing = True
        if not self.write_buf_size:
            self.close(reason)
            return
        self.watch_read(False)
        self.write(lambda: self.close(reason))


class EchoServer(danga.Listener):
    """The listening socket: one :class:`Echo` per accepted connection."""

    __slots__ = ("high_water",)

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.high_water = high_water

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        Echo(conn, loop=self.loop, high_water=self.high_water)


def serve(loop: danga.Loop, server: danga.Listener, *, grace: float) -> int:
    """Announce *server*, run *loop* until SIGTERM/SIGINT drain it (GracefulShutdown),
    close what is left; returns the exit code (0: every connection finished in time).
    The examples' ``main()`` ends with it."""
    shutdown = GracefulShutdown(loop, grace=grace)
    print(f"listening on {server.local_addr_string()} (backend {loop.backend.name})",
          flush=True)
    try:
        loop.run()
    finally:
        shutdown.remove()
        close_all(loop)
    return 0 if shutdown.clean else 1


def drain(loop: danga.Loop) -> int:
    """Begin a graceful shutdown of *loop*: close its listeners, and ask every other
    object to finish (its ``finish()`` if it has one, else it is closed now).

    Returns how many objects are still open (finishing their responses).
    """
    objs = sorted(loop.descriptor_map.values(), key=lambda o: not isinstance(o, danga.Listener))
    for obj in objs:
        finish = getattr(obj, "finish", None)
        if isinstance(obj, danga.Listener) or finish is None:
            obj.close("shutdown")
        else:
            finish()
    return sum(1 for obj in loop.descriptor_map.values() if not obj.closed)


class GracefulShutdown:
    """On SIGTERM or SIGINT: :func:`drain` the loop and stop it once its descriptor map
    is empty, or after *grace* seconds; a second signal stops it at once.

    ``clean`` says afterwards whether everything finished. Call :meth:`remove` to give
    the signals back. Must be made on the main thread (``loop.add_signal_handler``
    raises RuntimeError elsewhere).
    """

    def __init__(self, loop: danga.Loop, *, grace: float = 30.0,
                 signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.loop = loop
        self.grace = grace
        self.signums = tuple(signums)
        self.started = False
        self.clean = True
        for signum in self.signums:
            loop.add_signal_handler(signum, self._on_signal)

    def _on_signal(self) -> None:
        if self.started:  # the second signal: do not wait
            self.clean = self.loop.watched_sockets() == 0
            self.loop.stop()
            return
        self.started = True
        left = drain(self.loop)
        print(f"shutting down: {left} connection(s) finishing", flush=True)
        self.loop.add_timer(self.grace, self._expired)
        self._check()

    def _check(self) -> None:
        if self.loop.watched_sockets() == 0:
            self.loop.stop()
        else:
            self.loop.add_timer(0.02, self._check)

    def _expired(self) -> None:
        self.clean = self.loop.watched_sockets() == 0
        self.loop.stop()

    def remove(self) -> None:
        """Give the signals back to their previous handlers."""
        for signum in self.signums:
            self.loop.remove_signal_handler(signum)


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
    parser.add_argument("--grace", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, wait this long for responses (30s)")
    args = parser.parse_args(argv)

    loop = danga.Loop(args.backend)
    server = EchoServer.bind((args.host, args.port), loop=loop)
    server.high_water = args.high_water
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
