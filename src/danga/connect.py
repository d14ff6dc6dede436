"""Outbound connections: ``danga.connect()`` and the connecting state of a Socket.

``connect()`` makes the socket, hands it to the factory at once and starts a
non-blocking connect; the object exists while the connect is in flight
(``connecting`` is True), as Perlbal's BackendHTTP does. The rules (docs/connect.md):

- A host name is resolved on the loop's executor (``loop.run_in_thread``): never a
  blocking ``getaddrinfo`` on the loop thread. Numeric addresses and AF_UNIX paths are
  connected at once.
- ``connect_ex`` giving 0 or EINPROGRESS (EINTR: the connect goes on in the kernel)
  means "wait for writability". AF_UNIX answers EAGAIN when the listener's backlog is
  full: nothing is in flight then (the socket reports HUP at once), so the connect is
  tried again on a short back-off until the timeout. Any other error is reported on the
  next iteration, never raised from ``connect()``.
- While connecting, ``write()`` only queues: the socket's ``send`` answers EAGAIN, since
  BSD and macOS answer ENOTCONN to a send on a connecting socket. The queue flushes, in
  order, after ``on_connect()``.
- The first WRITE, ERR or HUP event reads ``SO_ERROR`` exactly once (reading clears it):
  0 calls ``on_connect()``, anything else ``on_connect_error(OSError)``. A socket that
  is not connected yet reports HUP under epoll and poll: while connecting, those events
  never reach ``event_err`` / ``event_hup``.

How the events are routed without a cost on the hot path: while connecting, the object's
class is a private subclass of its own class (same name, no new slots) whose event and
watch methods belong to the connect; its own class is put back when the connect ends.
The watches the subclass asks for while connecting are kept and applied after
``on_connect()``.
"""

from __future__ import annotations

import errno
import os
import socket as _socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .poller import ERR, HUP, READ, WRITE

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .loop import Loop
    from .socket import Socket
    from .timers import Timer

__all__ = ["Connecting", "connect"]

_AF_UNIX = getattr(_socket, "AF_UNIX", None)
# connect_ex results that mean "in flight": wait for writability.
_IN_FLIGHT = {0, errno.EINPROGRESS, errno.EINTR, errno.EWOULDBLOCK, errno.EAGAIN}
_UNIX_FULL = {errno.EAGAIN, errno.EWOULDBLOCK}
_UNIX_RETRY_FIRST = 0.005
_UNIX_RETRY_MAX = 0.1
_EAI_NAMES = {getattr(_socket, n): n for n in dir(_socket) if n.startswith("EAI_")}

# Phases of a connect.
_RESOLVING, _IN_PROGRESS, _WAITING, _FAILED = range(4)


class _UnconnectedSocket(_socket.socket):
    """The socket of a connecting object: send and recv answer EAGAIN until the connect
    completes (then the object's socket becomes a plain ``socket.socket`` again)."""

    __slots__ = ()

    def send(self, data: Any, flags: int = 0) -> int:
        raise BlockingIOError(errno.EAGAIN, "connecting")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        raise BlockingIOError(errno.EAGAIN, "connecting")


class _State:
    """What a connecting object needs until its connect ends."""

    __slots__ = ("cls", "phase", "retry", "sockaddr", "source", "timeout", "timer", "watch",
                 "wset")

    def __init__(self, cls: type[Socket], watch: int, wset: bool, timeout: float | None,
                 source: Any) -> None:
        self.cls: type[Socket] = cls
        self.watch = watch  # the READ/WRITE watches the subclass wants after the connect
        self.wset = wset
        self.timeout = timeout
        self.source = source
        self.phase = _RESOLVING
        self.timer: Timer | None = None
        self.sockaddr: Any = None
        self.retry = _UNIX_RETRY_FIRST


class Connecting:
    """The connect hooks and state of :class:`danga.Socket` (a mixin it inherits: its
    methods are Socket's own, on Socket's slots)."""

    if TYPE_CHECKING:  # Socket's slots, as Socket declares them
        connecting: bool
        _conn: _State | None
        _event_watch: int
        _write_set_watch: bool
        _send: Callable[[Any, Any], int]
        _recv: Callable[[Any, int], bytes]
        _sendv: Callable[[Any, list[Any]], int] | None
        _io: Any
        _peer: tuple[str | None, str | None] | None
        _local: tuple[str | None, str | None] | None
        _tls: Any
        sock: Any
        fd: int
        loop: Loop
        closed: bool
        write_buf_size: int

        def close(self, reason: str | None = None) -> None: ...
        def write(self, data: Any = None) -> bool: ...
    else:
        __slots__ = ()

    # -- the hooks (override these) --------------------------------------------------------

    def on_connect(self) -> None:
        """Called once the connect made by :func:`danga.connect` succeeded (``connecting``
        is already False); the writes queued while connecting are flushed right after
        it, and the watches asked for while connecting apply. The default does
        nothing."""

    def on_connect_error(self, exc: OSError) -> None:
        """Called when the connect failed: *exc* carries the real errno (ECONNREFUSED,
        ENETUNREACH, ...); a connect timeout passes ``TimeoutError`` (errno ETIMEDOUT), a
        failed name resolution the ``socket.gaierror``. The default closes the object
        with ``"connect_failed: <reason>"`` (``connect_failed: ECONNREFUSED``,
        ``connect_failed: timeout``)."""
        self.close(f"connect_failed: {_reason(exc)}")

    # -- the connect's life ------------------------------------------------------------------

    def _connect_setup(self, timeout: float | None, source: Any) -> None:
        state = _State(cast("type[Socket]", type(self)), self._event_watch & (READ | WRITE),
                       self._write_set_watch, timeout, source)
        self._conn = state
        self.connecting = True
        self._event_watch = 0  # nothing in the kernel until the connect is in flight
        self.loop._registry.dirty[self.fd] = self
        self.__class__ = _connecting_class(state.cls)
        if timeout is not None:
            state.timer = self.loop.add_timer(timeout, self._connect_timed_out)

    def _connect_start(self, sockaddr: Any) -> None:
        state = self._conn
        if state is None or self.closed or not self.connecting:
            return  # timed out (or closed) while a retry was pending
        state.sockaddr = sockaddr
        sock = self.sock
        try:
            if state.source is not None:
                sock.bind(state.source)
                state.source = None
            err = sock.connect_ex(sockaddr)
        except OSError as exc:  # bind failed, or a bad address for this family
            self._connect_later(exc)
            return
        if sock.family == _AF_UNIX and err in _UNIX_FULL:
            # The listener's backlog is full: nothing is in flight, try again shortly.
            state.phase = _WAITING
            self.loop.add_timer(state.retry, self._connect_start, sockaddr)
            state.retry = min(state.retry * 2, _UNIX_RETRY_MAX)
            return
        if err not in _IN_FLIGHT:
            self._connect_later(OSError(err, os.strerror(err)))
            return
        state.phase = _IN_PROGRESS
        self._event_watch = WRITE | ERR | HUP
        self.loop._registry.dirty[self.fd] = self

    def _connect_later(self, exc: OSError) -> None:
        # Reported on the next iteration, never from inside connect().
        state = self._conn
        if state is not None:
            state.phase = _WAITING  # events (none are watched) are ignored meanwhile
        self.loop.add_timer(0, self._connect_failed, exc)

    def _connect_resolved(self, future: Future[Any]) -> None:
        state = self._conn
        if state is None or self.closed or state.phase != _RESOLVING:
            return  # timed out or closed meanwhile
        exc = future.exception()
        if exc is not None:
            self._connect_failed(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return
        infos = future.result()
        family = self.sock.family
        chosen = next((info for info in infos if info[0] == family), None)
        if chosen is None:
            if not infos:
                self._connect_failed(OSError(errno.EADDRNOTAVAIL, "no address"))
                return
            chosen = infos[0]
            try:
                self._connect_new_socket(chosen[0])
            except OSError as exc2:
                self._connect_failed(exc2)
                return
        self._connect_start(chosen[4])

    def _connect_new_socket(self, family: int) -> None:
        # The name resolved to another family than the socket the factory was given:
        # the object gets a socket of that family (and so maybe another fd number).
        new = _UnconnectedSocket(family, _socket.SOCK_STREAM)
        new.setblocking(False)
        old = self.sock
        self.loop._detach(cast("Socket", self), old, steal=True)
        old.close()
        self.sock = self._io = new
        self.fd = new.fileno()
        self._peer = self._local = None
        self.loop._register(cast("Socket", self), "danga.connect()")

    def _connect_event(self) -> None:
        """A WRITE, ERR or HUP event while connecting: the connect has completed."""
        state = self._conn
        if state is None or state.phase != _IN_PROGRESS or self.closed:
            return  # an event of this batch after the connect ended: not for the object
        try:
            err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EBADF
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return
        self._connect_end(state)
        self._event_watch = ERR | HUP | state.watch
        self._write_set_watch = state.wset
        self.loop._registry.dirty[self.fd] = self
        if self._tls is not None:
            self._tls.after_connect(self)  # the handshake reads from now on
        self.on_connect()
        if not self.closed and self.write_buf_size:
            self.write(None)

    def _connect_failed(self, exc: OSError) -> None:
        state = self._conn
        if state is None or self.closed:
            return
        self._connect_end(state, failed=True)
        self._event_watch = 0  # a failed socket reports HUP for ever: watch nothing
        self.loop._registry.dirty[self.fd] = self
        self.on_connect_error(exc)

    def _connect_timed_out(self) -> None:
        state = self._conn
        if state is None:
            return
        state.timer = None
        self._connect_failed(TimeoutError(
            errno.ETIMEDOUT, f"connect timed out after {state.timeout:g} s"))

    def _connect_end(self, state: _State, failed: bool = False) -> None:
        self.connecting = False
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        sock = self.sock
        if sock.__class__ is _UnconnectedSocket:
            sock.__class__ = _socket.socket  # type: ignore[assignment]
            self._send = _socket.socket.send
            self._recv = _socket.socket.recv
            self._sendv = getattr(_socket.socket, "sendmsg", None)
        if failed:
            # Events of this batch may still be dispatched to the object: its own class
            # comes back in the next iteration (the connecting class ignores them).
            state.phase = _FAILED
            self.loop.add_timer(0, self._connect_restore)
        else:
            self._conn = None
            self.__class__ = state.cls

    def _connect_abandon(self) -> None:
        """Closed or stolen (connecting, or failed and not yet restored): no hook runs
        any more, and a stolen socket is a plain ``socket.socket`` again."""
        state = self._conn
        if state is None:
            return
        self.connecting = False
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if self.sock is not None and self.sock.__class__ is _UnconnectedSocket:
            self.sock.__class__ = _socket.socket  # type: ignore[assignment]
        # A closed object gets no more events: its own class can come back at once.
        self._conn = None
        self.__class__ = state.cls

    def _connect_restore(self) -> None:
        state = self._conn
        if state is not None and state.phase == _FAILED:
            self._conn = None
            self.__class__ = state.cls

    def _connect_watch(self, bit: int, on: bool) -> bool:
        """A watch change while connecting: kept for later (True), or applied (False)."""
        state = self._conn
        if state is None or not self.connecting:
            return False
        state.watch = state.watch | bit if on else state.watch & ~bit
        if bit == WRITE and on:
            state.wset = False
        elif bit == READ and self._tls is not None:
            self._tls.user_read = on  # the TLS engine reads for itself meanwhile
        return True

    def _connect_reclass(self, make: Callable[[type[Socket]], type[Socket]]) -> None:
        """Give a connecting object the class ``make(own class)`` once connected (TLS
        started while connecting)."""
        state = self._conn
        assert state is not None
        state.cls = make(state.cls)
        if self.__class__ is not state.cls:  # connecting (not a failed connect)
            self.__class__ = _connecting_class(state.cls)

    def _connect_wants_read(self) -> bool:
        """Whether the object asked to watch read (applied once connected)."""
        state = self._conn
        return state is not None and bool(state.watch & READ)


_CLASSES: dict[type[Socket], type[Socket]] = {}


def _connecting_class(cls: type[Socket]) -> type[Socket]:
    """The private subclass a connecting object of class *cls* has (made once)."""
    sub = _CLASSES.get(cls)
    if sub is not None:
        return sub

    def event(self: Any) -> None:
        self._connect_event()

    def watch_read(self: Any, on: bool = True) -> None:
        if not self._connect_watch(READ, on):
            cls.watch_read(self, on)

    def watch_write(self: Any, on: bool = True) -> None:
        if not self._connect_watch(WRITE, on):
            cls.watch_write(self, on)

    def on_incomplete_write(self: Any) -> None:
        if not self.connecting:  # a failed connect: the subclass's own rule
            cls.on_incomplete_write(self)
        # while connecting, the connect's WRITE watch is what completes it

    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "event_read": event,
        "event_write": event,
        "event_err": event,
        "event_hup": event,
        "watch_read": watch_read,
        "watch_write": watch_write,
        "on_incomplete_write": on_incomplete_write,
    }
    sub = type(cls.__name__, (cls,), namespace)
    _CLASSES[cls] = sub
    return sub


def _reason(exc: BaseException) -> str:
    """``timeout``, ``ECONNREFUSED``, ``EAI_NONAME``, ... for a close reason."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, TimeoutError) or code == errno.ETIMEDOUT:
        return "timeout"
    if isinstance(exc, _socket.gaierror) and code in _EAI_NAMES:
        return _EAI_NAMES[code]
    if isinstance(code, int) and code in errno.errorcode:
        return errno.errorcode[code]
    return str(exc) or type(exc).__name__


def connect(address: Any, factory: Callable[..., Socket], *, loop: Loop | None = None,
            timeout: float | None = 10.0, source_address: Any = None, ssl: Any = None,
            server_hostname: str | None = None) -> Socket:
    """Connect to *address* without blocking; returns ``factory(sock, loop=loop)`` at once,
    with ``connecting == True``.

    *address* is ``(host, port)`` (``(host, port, flowinfo, scope_id)`` for IPv6) or an
    AF_UNIX path (str, bytes or path-like). A numeric host or a path is connected at
    once; a host name is resolved on the loop's executor (``loop.run_in_thread``), never
    on the loop thread (if it resolves to another family than IPv4 only, the object is
    given a new socket of that family before the connect starts). The first address of
    the resolution is used (no Happy Eyeballs).

    The object's ``on_connect()`` runs when the connect succeeds, ``on_connect_error(exc)``
    when it fails (refused, unreachable, a resolution failure, the *timeout* in seconds:
    ``TimeoutError``; None waits for the kernel). Writes made meanwhile, including in the
    factory's ``__init__``, are queued and sent in order after ``on_connect()``.
    *source_address* is bound before connecting.

    ``ssl`` (an ``ssl.SSLContext``) starts TLS on the object as soon as the factory has
    made it (``start_tls(ssl, server_side=False, server_hostname=...)``), so that even
    writes made in its ``__init__`` are plaintext held until the handshake completes;
    the handshake itself starts once connected. The peer is verified as the context
    says, against *server_hostname*, which defaults to the host of *address* (for an
    AF_UNIX path there is no default). ``on_tls_handshake()`` runs when it completes,
    ``on_tls_error(exc)`` when it fails (docs/tls.md).

    Raises:
        TypeError: *address*, *factory*, *timeout* or the factory's result is of the
            wrong type (the socket is closed when the factory did not return a Socket).
        TypeError: *ssl* is not an ``ssl.SSLContext``.
        ValueError: a port out of range, a timeout <= 0 or NaN, *server_hostname*
            without *ssl*, a context that checks host names with no host name to check
            (an AF_UNIX path and no *server_hostname*), or an AF_UNIX path where the
            platform has no AF_UNIX.
        RuntimeError: the loop is closed.
        OSError: the socket cannot be created (out of fds), or the factory's errors.
    """
    from .loop import get_loop
    from .socket import TLS_PENDING, Socket

    if ssl is None and server_hostname is not None:
        raise ValueError("danga.connect(): server_hostname is only meaningful with ssl")
    if not callable(factory):
        raise TypeError(f"danga.connect(): factory must be callable (a Socket subclass), "
                        f"not {type(factory).__name__}")
    timeout = _check_timeout(timeout)
    family, numeric, host, port = _parse_address(address)
    tls = None if ssl is None else _tls_spec(ssl, server_hostname, host, family)
    if loop is None:
        loop = get_loop()
    loop._check_open()
    sock = _UnconnectedSocket(family, _socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if tls is not None:
            TLS_PENDING[sock.fileno()] = (sock, ssl, tls)
        try:
            obj = factory(sock, loop=loop)
        finally:
            if tls is not None:
                TLS_PENDING.pop(sock.fileno(), None)
        if not isinstance(obj, Socket) or obj.sock is not sock:
            raise TypeError(
                f"danga.connect(): the factory must return a danga.Socket made on the "
                f"socket it was given, not {type(obj).__name__}")
    except BaseException:
        sock.close()
        raise
    obj._connect_setup(timeout, source_address)
    if numeric is not None:
        obj._connect_start(numeric)
    else:
        loop.run_in_thread(_resolve, host, port, callback=obj._connect_resolved)
    return obj


def _tls_spec(context: Any, server_hostname: Any, host: str, family: int) -> dict[str, Any]:
    """The start_tls keywords for connect(ssl=context); see connect for what is raised."""
    from .tls import check_context

    check_context(context, "danga.connect(ssl=...)")
    if server_hostname is None and family != _AF_UNIX:
        server_hostname = host.partition("%")[0]
    if server_hostname is not None and not isinstance(server_hostname, str):
        raise TypeError(f"danga.connect(): server_hostname must be a str, not "
                        f"{type(server_hostname).__name__}")
    if server_hostname is None and context.check_hostname:
        raise ValueError("danga.connect(): the context checks host names and an AF_UNIX "
                         "path has none; pass server_hostname=...")
    return {"server_side": False, "server_hostname": server_hostname}


def _resolve(host: str, port: int) -> list[Any]:
    # Looked up at call time (tests observe which thread resolves).
    return _socket.getaddrinfo(host, port, type=_socket.SOCK_STREAM)


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"danga.connect(): timeout must be seconds (a number) or None, "
                        f"not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"danga.connect(): timeout must be > 0 seconds (or None), "
                         f"not {timeout!r}")
    return float(timeout)


def _parse_address(address: Any) -> tuple[int, Any, str, int]:
    """(family, numeric sockaddr or None, host, port) for *address*."""
    if isinstance(address, (str, bytes, os.PathLike)):
        if _AF_UNIX is None:
            raise ValueError("danga.connect(): AF_UNIX paths are not supported on this "
                             "platform; pass (host, port)")
        path = os.fspath(address)
        return _AF_UNIX, path, "", 0
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"danga.connect(): address must be (host, port), (host, port, "
                        f"flowinfo, scope_id) or an AF_UNIX path, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError(f"danga.connect(): the host must be a str, not "
                        f"{type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"danga.connect(): the port must be an int, not "
                        f"{type(port).__name__}")
    if not 0 < port <= 65535:
        raise ValueError(f"danga.connect(): the port must be in 1..65535, not {port}")
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host.partition("%")[0])
        except (OSError, ValueError):
            continue
        if family == _socket.AF_INET6 and (len(address) == 4 or "%" in host):
            # A scope id (or flowinfo): let the C resolver parse it, numerically only.
            info = _socket.getaddrinfo(host, port, family, _socket.SOCK_STREAM, 0,
                                       _socket.AI_NUMERICHOST)
            sockaddr: Any = info[0][4]
            if len(address) == 4:
                sockaddr = (sockaddr[0], port, address[2], address[3])
            return family, sockaddr, host, port
        return family, (host, port), host, port
    return _socket.AF_INET, None, host, port
