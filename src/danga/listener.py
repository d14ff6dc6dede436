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
from .socket import TLS_PENDING, Socket

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

    ``ssl`` (an ``ssl.SSLContext``) makes it a TLS server: the Socket made of each
    connection (by the factory, or by an :meth:`on_accept` override, during that call)
    has started TLS (``start_tls(ssl, server_side=True)``) by the time its
    ``__init__`` returns from ``Socket.__init__``, so even a greeting written there is
    sent encrypted, after the handshake (docs/tls.md).

    Raises:
        TypeError: *sock* is not a socket, *factory* is not callable, or *ssl* is not
            an ``ssl.SSLContext``.
        ValueError, OSError: as :class:`Socket`.
    """

    __slots__ = ("_backoff", "_exhausted", "_factory", "_max_accepts", "_paused", "_ssl",
                 "accepted")

    def __init__(
        self,
        sock: _socket.socket,
        *,
        loop: Loop | None = None,
        factory: Callable[..., Any] | None = None,
        backoff: float = 0.1,
        max_accepts: int = 128,
        ssl: Any = None,
    ) -> None:
        if not isinstance(sock, _socket.socket):
            raise TypeError(f"Listener needs a listening socket.socket, not {type(sock).__name__}")
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        if ssl is not None:
            from .tls import check_context

            check_context(ssl, "Listener(ssl=...)")
        super().__init__(sock, loop=loop)
        self._ssl = ssl
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
                if self._ssl is None:
                    self.on_accept(conn, addr)
                else:
                    self._accept_tls(conn, addr)
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

    def _accept_tls(self, conn: _socket.socket, addr: Any) -> None:
        # The Socket made of conn during on_accept starts TLS in Socket.__init__.
        fd = conn.fileno()
        TLS_PENDING[fd] = (conn, self._ssl, {"server_side": True})
        try:
            self.on_accept(conn, addr)
        finally:
            left = TLS_PENDING.pop(fd, None)
        if left is not None:  # kept, handed elsewhere, or dup'd: never silently plain
            logger.warning("%s: on_accept made no danga.Socket of %r, so TLS was not "
                           "started on it", self.as_string(), addr)

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

    @classmethod
    def bind(
        cls,
        address: Any,
        *,
        loop: Loop | None = None,
        factory: Callable[..., Any] | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
        ssl: Any = None,
    ) -> Listener:
        """Create, configure, bind and listen on a socket, and return it as a listener.

        *address* is ``(host, port)`` (IPv4 or IPv6; a host name is resolved, ``""`` or
        None means every address), an IPv6 4-tuple, or an AF_UNIX path (``str``,
        ``bytes`` or ``os.PathLike``; a stale socket file at that path is removed first).
        TCP sockets get ``SO_REUSEADDR`` (except on Windows, where it means something
        else). ``reuse_port=True`` adds ``SO_REUSEPORT`` (``SO_REUSEPORT_LB`` on
        FreeBSD, the one that balances), so that several processes can each bind the
        same address and the kernel spreads the connections between them.

        Inside a :func:`danga.prefork` worker the bind goes through the master (see
        docs/processes.md): with a shared listener the worker gets the master's socket,
        and port 0 means one port, the same in every worker.

        ``ssl`` (an ``ssl.SSLContext``) makes a TLS listener (see :class:`Listener`).
        The class is called as ``cls(sock, loop=loop)``, plus ``factory=factory`` when a
        factory is given and ``ssl=ssl`` when a context is (so a subclass whose
        constructor takes neither works without them).

        Raises:
            TypeError: *address*, *backlog* or *reuse_port* has the wrong type.
            TypeError: *ssl* is not an ``ssl.SSLContext``.
            ValueError: *backlog* is negative, or ``reuse_port=True`` where it cannot
                be had (AF_UNIX, or a platform without SO_REUSEPORT).
            OSError: resolving, binding or listening failed (e.g. EADDRINUSE).
        """
        if ssl is not None:
            from .tls import check_context

            check_context(ssl, "Listener.bind(ssl=...)")
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise TypeError(f"Listener.bind(backlog=...) takes an int, "
                            f"not {type(backlog).__name__}")
        if backlog < 0:
            raise ValueError(f"Listener.bind(backlog=...) must be >= 0, not {backlog}")
        if not isinstance(reuse_port, bool):
            raise TypeError(f"Listener.bind(reuse_port=...) takes True or False, "
                            f"not {type(reuse_port).__name__}")
        # A prefork worker asks its master (one shared socket, or one port for port 0).
        from .process import bind_in_worker

        sock = bind_in_worker(address, reuse_port=reuse_port, backlog=backlog)
        if sock is None:
            sock = cls.listening_socket(address, reuse_port=reuse_port, backlog=backlog)
        kwargs: dict[str, Any] = {}
        if factory is not None:
            kwargs["factory"] = factory
        if ssl is not None:
            kwargs["ssl"] = ssl
        try:
            return cls(sock, loop=loop, **kwargs)
        except BaseException:
            sock.close()
            raise

    @staticmethod
    def listening_socket(address: Any, *, reuse_port: bool = False, backlog: int = 1024,
                         listen: bool = True) -> _socket.socket:
        """The plain listening socket :meth:`bind` makes (non-blocking), for callers that
        want the socket without a Listener (a prefork master binds with it).
        ``listen=False`` leaves it bound only (it then receives no connection).

        Raises:
            TypeError, ValueError, OSError: as :meth:`bind`.
        """
        import os
        import stat
        import sys

        if isinstance(address, (str, bytes, os.PathLike)):
            if reuse_port:
                raise ValueError("Listener.bind(reuse_port=True) needs a TCP address; "
                                 f"{address!r} is an AF_UNIX path")
            family: int = _socket.AF_UNIX
            path = os.fspath(address)
            target: Any = path
            if path and path[:1] not in ("\0", b"\0"):  # not Linux's abstract namespace
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.unlink(path)  # a stale socket left by an earlier run
                except FileNotFoundError:
                    pass
        elif isinstance(address, tuple) and len(address) in (2, 4):
            host, port = address[0], address[1]
            if isinstance(port, bool) or not isinstance(port, int):
                raise TypeError(f"Listener.bind(address): the port must be an int, "
                                f"not {type(port).__name__}")
            infos = _socket.getaddrinfo(host or None, port, _socket.AF_UNSPEC,
                                        _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
            family, _, _, _, target = infos[0]
            if len(address) == 4 and family == _socket.AF_INET6:
                target = (target[0], port, address[2], address[3])
        else:
            raise TypeError("Listener.bind(address) takes (host, port), an IPv6 4-tuple or "
                            f"an AF_UNIX path, not {address!r}")
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            if family != _socket.AF_UNIX:
                if sys.platform != "win32":
                    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(_socket.SOL_SOCKET, _reuse_port_option(), 1)
            sock.bind(target)
            if listen:
                sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock


def _reuse_port_option() -> int:
    """The socket option that makes the kernel balance connections between listeners.

    Raises:
        ValueError: this platform has no SO_REUSEPORT.
    """
    import sys

    if sys.platform.startswith("freebsd"):
        # FreeBSD's plain SO_REUSEPORT lets sockets share the port without balancing.
        return int(getattr(_socket, "SO_REUSEPORT_LB", 0x10000))
    option = getattr(_socket, "SO_REUSEPORT", None)
    if option is None:
        raise ValueError("Listener.bind(reuse_port=True): this platform has no SO_REUSEPORT")
    return int(option)
