"""danga.Listener: a Socket over a listening socket that accepts in a loop.

Running out of file descriptors (EMFILE/ENFILE) or kernel memory (ENOBUFS/ENOMEM) on
accept() leaves the connection queued, so the listener stays readable and a naive loop
spins at 100% CPU (libev's ev.pod, libuv#690, asyncio's ACCEPT_RETRY_DELAY). Listener
stops watching read for a back-off, logs once per episode (a WARNING when it starts, an
INFO at the first successful accept after it), and resumes.
"""

from __future__ import annotations

import errno
import socket as _socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .loop import logger
from .socket import Socket

if TYPE_CHECKING:
    from .loop import Loop
    from .timers import Timer

__all__ = ["Listener"]

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# The peer went away between the kernel's queueing and our accept(): try the next one.
_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}


class Listener(Socket):
    """Accepts connections and calls :meth:`on_accept` for each.

    ``factory``, if given, is called as ``factory(conn, loop=loop)`` by the default
    :meth:`on_accept` (a Socket subclass fits). ``backoff`` is the pause, in seconds,
    after running out of fds; ``max_accepts`` bounds the accepts per readable event so
    one busy listener cannot starve the other sockets.

    Raises:
        TypeError: *sock* is not a socket, or *factory* is not callable.
        ValueError, OSError: as :class:`Socket`.
    """

    __slots__ = ("_backoff", "_exhausted", "_factory", "_max_accepts", "_paused", "accepted")

    def __init__(
        self,
        sock: _socket.socket,
        *,
        loop: Loop | None = None,
        factory: Callable[..., Any] | None = None,
        backoff: float = 0.1,
        max_accepts: int = 128,
    ) -> None:
        if not isinstance(sock, _socket.socket):
            raise TypeError(f"Listener needs a listening socket.socket, not {type(sock).__name__}")
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        super().__init__(sock, loop=loop)
        self._factory = factory
        self._backoff = backoff
        self._max_accepts = max_accepts
        self._paused: Timer | None = None
        self._exhausted = 0  # failed accepts in the current episode (0: none)
        #: Connections accepted so far.
        self.accepted = 0
        self.watch_read(True)

    def event_read(self) -> None:
        """Accept up to ``max_accepts`` connections; pause on fd exhaustion."""
        sock = self.sock
        for _ in range(self._max_accepts):
            if self.closed or self._paused is not None:
                return
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause(exc)
                    return
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                raise
            conn.setblocking(False)
            self.accepted += 1
            if self._exhausted:
                logger.info("%s: accepting again after %d failed attempt(s)",
                            self.as_string(), self._exhausted)
                self._exhausted = 0
            try:
                self.on_accept(conn, addr)
            except Exception as exc:
                # One bad connection must not close the listener: report it without an
                # object (so the default handler closes nothing) and drop the connection,
                # so its peer sees it closed instead of waiting for ever.
                self._drop(conn)
                self.loop._callback_failed(exc, None, self.on_accept, "Listener.on_accept")

    def on_accept(self, conn: _socket.socket, addr: Any) -> None:
        """Handle one accepted, non-blocking connection. Override it, or pass ``factory``.

        The default calls ``factory(conn, loop=self.loop)``, or closes *conn* with a
        warning when there is no factory.
        """
        if self._factory is not None:
            self._factory(conn, loop=self.loop)
            return
        logger.warning("%s accepted %r but has no factory and does not override on_accept;"
                       " closing it", type(self).__name__, addr)
        conn.close()

    def _drop(self, conn: _socket.socket) -> None:
        # Through the Socket that on_accept may have made of it before raising, so that
        # the object is closed too; else the bare connection.
        fd = conn.fileno()
        owner = self.loop.descriptor_map.get(fd) if fd >= 0 else None
        if owner is not None and owner.sock is conn:
            owner.close("on_accept failed")
        else:
            conn.close()

    def _pause(self, exc: OSError) -> None:
        # Once per episode: an exhaustion that lasts minutes must not log every back-off.
        if not self._exhausted:
            logger.warning("%s: accept() failed (%s); pausing accepts for %.3fs at a time"
                           " until it succeeds", self.as_string(), exc.strerror,
                           self._backoff)
        self._exhausted += 1
        self.watch_read(False)
        self._paused = self.loop.add_timer(self._backoff, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self.closed:
            self.watch_read(True)

    def close(self, reason: str | None = None) -> None:
        """Close the listener (cancelling a pending resume)."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        super().close(reason)
