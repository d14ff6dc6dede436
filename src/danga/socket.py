"""danga.Socket: the Danga::Socket base class (read/write queues, watches, close).

Subclass it and override ``event_read`` (and ``event_write``, ``event_err``,
``event_hup`` as needed). The object registers itself in its loop's descriptor map on
construction, interested in ERR|HUP only; ``watch_read`` / ``watch_write`` change the
interest, and the loop applies the change just before it next polls (the registration
itself too: a new connection that watches read costs one system call).

Writes go straight to the kernel when nothing is queued (one ``send()``); a remainder is
queued as a zero-copy ``memoryview`` slice and several queued buffers are flushed with
one ``sendmsg()``. Reads are one ``recv()``, after any pushed-back data.
"""

from __future__ import annotations

import errno
import io
import math
import os
import socket as _socket
import stat
import sys
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from ._registry import disown
from .compat import DangaNames
from .connect import Connecting
from .loop import debug_msg, get_loop, logger
from .poller import ERR, HUP, READ, WRITE

if TYPE_CHECKING:
    from .connect import _State
    from .loop import Loop, PostLoopCallback
    from .timers import Timer
    from .tls import TLSEngine

__all__ = ["MAX_READ", "Socket"]

#: The most one read() asks of the kernel (Danga's 1 MiB cap; recv(n) allocates n).
MAX_READ = 1 << 20
#: The most buffers one sendmsg() is handed.
_MAX_IOV = 64

if sys.platform.startswith("linux"):
    _CORK_OPT: int | None = getattr(_socket, "TCP_CORK", 3)
elif sys.platform == "darwin" or "bsd" in sys.platform:
    _CORK_OPT = getattr(_socket, "TCP_NOPUSH", 4)  # BSD's push/nopush (Danga's gap)
else:
    _CORK_OPT = None

# errnos a setsockopt(TCP_CORK) may give that mean "not applicable here": ignored.
_CORK_IGNORED = {errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EINVAL}
_WRITE_REASONS = {errno.EPIPE: "EPIPE", errno.ECONNRESET: "ECONNRESET"}
_BUFFER_TYPES = (bytes, bytearray, memoryview)
#: The default of ``Socket.sendfile_max_chunk``: the most one writable event hands
#: os.sendfile, in one call, so that a big file cannot starve the other connections
#: (Perlbal's step, 128 KiB). A server of big files on fast clients raises it per class,
#: as nginx's ``sendfile_max_chunk`` (2 MiB by default) does: a 1 MiB file is then one
#: sendfile, not eight, and needs no write watch at all.
SENDFILE_CHUNK = 128 * 1024
#: The most the read-and-send fallback of write_file() reads at once.
_PREAD_CHUNK = 64 * 1024
# errnos of a first sendfile() that mean "not for this pair of files": read and send.
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP,
                getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class Socket(DangaNames, Connecting):
    """An event-driven, non-blocking socket (or pipe) in a :class:`danga.Loop`.

    ``sock`` is a socket, or any object with ``fileno()`` and ``close()`` (pipes and
    fifos are read and written with ``os.read``/``os.write``). danga sets it non-blocking
    and owns it from now on: ``close()`` closes it.

    Attributes:
        sock: the socket (or pipe object); None once closed or stolen.
        fd: its file descriptor number (kept after close).
        loop: the :class:`danga.Loop` it belongs to.
        closed: True once :meth:`close` (or :meth:`steal_socket`) was called.
        close_reason: the reason given to :meth:`close` (None before, or if none).
        write_buf_size: bytes (plus one per queued callable) waiting in the write queue;
            a file region queued by :meth:`write_file` counts the bytes it has left.
        connecting: True while a connect made by :func:`danga.connect` is in flight.
        max_idle_time: a class attribute: seconds of inactivity after which every
            instance's :meth:`on_idle_timeout` runs (Perlbal's name; None or 0: off).
            :meth:`set_idle_timeout` changes it per instance.
        sendfile_max_chunk: a class attribute: the most bytes :meth:`write_file` hands
            ``os.sendfile`` per writable event (default 128 KiB, Perlbal's step; nginx's
            ``sendfile_max_chunk`` is the same knob).

    Raises:
        TypeError: *sock* has no ``fileno()`` or no ``close()``, or is an
            ``ssl.SSLSocket`` (pass the plain socket and call :meth:`start_tls`).
        ValueError: *sock* is closed or has no file descriptor, or its fd is owned by
            another Socket (a live one, or a closed one whose real close is pending).
        OSError: the fd cannot be watched (EBADF; UnsupportedFileType for regular files).
        FdOutOfRange: the fd is too large for the backend (select).
        RuntimeError: the loop is closed.
    """

    __slots__ = (
        "__weakref__",
        "_conn",
        "_corked",
        "_event_watch",
        "_gen",
        "_ident",
        "_idle",
        "_idle_timer",
        "_io",
        "_last_active",
        "_local",
        "_pb",
        "_pb_size",
        "_peer",
        "_recv",
        "_send",
        "_sendv",
        "_tcp",
        "_tls",
        "_wbuf",
        "_write_set_watch",
        "_writer",
        "close_reason",
        "closed",
        "connecting",
        "fd",
        "loop",
        "sock",
        "write_buf_size",
    )

    #: Perlbal's idle limit for every instance of the class, in seconds (None: none).
    max_idle_time: float | None = None
    #: The most bytes one writable event hands os.sendfile (fairness between sockets).
    sendfile_max_chunk: int = SENDFILE_CHUNK

    def __init__(self, sock: Any, *, loop: Loop | None = None) -> None:
        if loop is None:
            loop = get_loop()
        loop._check_open()
        fd = _fd_of(sock)
        existing = loop.descriptor_map.get(fd)
        if existing is not None:
            if not existing.closed:
                raise ValueError(
                    f"danga.Socket(): fd {fd} is already owned by {existing.as_string()}; "
                    "close() or steal_socket() that object first")
            raise ValueError(
                f"danga.Socket(): fd {fd} belongs to a {type(existing).__name__} that was "
                "closed and is really closed at the end of this loop iteration, which "
                "would close it under the new object; to keep the socket, take it with "
                "steal_socket() instead of close()")
        is_socket = isinstance(sock, _socket.socket)
        if is_socket and type(sock) is not _socket.socket:
            _refuse_ssl_socket(sock)
        try:
            # getblocking() reads the socket object's own state (no system call): an
            # accepted connection that the Listener made non-blocking costs no second
            # ioctl here.
            was_blocking = sock.getblocking() if is_socket else os.get_blocking(fd)
            if was_blocking:
                if is_socket:
                    sock.setblocking(False)
                else:
                    os.set_blocking(fd, False)
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"danga.Socket(): cannot use {sock!r} (fd {fd}): "
                f"{exc.strerror}; pass an open socket or pipe"
            ) from exc
        self.sock: Any = sock
        self.fd: int = fd
        self.loop: Loop = loop
        self.closed: bool = False
        self.close_reason: str | None = None
        self.write_buf_size = 0
        self._event_watch = ERR | HUP
        # No deque until something is queued: an idle connection costs ~760 bytes less.
        self._wbuf: deque[Any] | tuple[()] = ()
        self._write_set_watch = False
        self._pb: deque[bytes] | None = None
        self._pb_size = 0
        self._corked = False
        self._writer: Callable[[Any], int] | None = None
        self._peer: tuple[str | None, str | None] | None = None
        self._local: tuple[str | None, str | None] | None = None
        self.connecting = False
        self._conn: _State | None = None
        self._tls: TLSEngine | None = None  # the TLS layer (tls.py), once start_tls ran
        # Idle timeouts: seconds (0.0: off); _last_active and _idle_timer are only read
        # while it is on, so an object without one pays one false test per read/write.
        self._idle = 0.0
        self._gen = 0  # set by the registry: the poll generation it was registered in
        self._ident = 0  # set by the registry: the identity of the file behind fd
        # The I/O functions are the class's (shared, unbound) and are called with _io
        # (the socket, or the fd of a pipe): no bound method is allocated per object.
        if is_socket:
            cls = type(sock)
            self._io: Any = sock
            self._recv: Callable[[Any, int], bytes] = cls.recv
            self._send: Callable[[Any, Any], int] = cls.send
            # Exact type only: ssl.SSLSocket and friends override send but not sendmsg.
            plain = cls is _socket.socket and hasattr(sock, "sendmsg")
            self._sendv: Callable[[Any, list[Any]], int] | None = (
                _socket.socket.sendmsg if plain else None)
            self._tcp = (sock.family in (_socket.AF_INET, _socket.AF_INET6)
                         and sock.type == _socket.SOCK_STREAM)
        else:
            self._io = fd
            self._recv = os.read
            self._send = os.write
            self._sendv = getattr(os, "writev", None)
            self._tcp = False
        try:
            loop._register(self, "danga.Socket()")
        except BaseException:
            if was_blocking:
                try:
                    if is_socket:
                        sock.setblocking(True)
                    else:
                        os.set_blocking(fd, True)
                except OSError:
                    pass
            raise
        if self.max_idle_time:
            self.set_idle_timeout(self.max_idle_time)
        if TLS_PENDING:  # Listener(ssl=...) / connect(ssl=...): TLS from the first write
            spec = TLS_PENDING.pop(fd, None)
            # The connection itself, or a new socket object its fd was handed to
            # (socket.socket(fileno=conn.detach())): the same file, so TLS all the same.
            if spec is not None and (spec[0] is sock or spec[0].fileno() < 0):
                self.start_tls(spec[1], **spec[2])

    # -- the events (override these) -----------------------------------------------------

    def event_read(self) -> None:
        """Called when readable (or pushed-back data waits). Override it.

        Raises:
            NotImplementedError: always, in the base class (Danga dies the same way); the
                default exception handler then logs it and closes the object.
        """
        raise NotImplementedError(
            f"{type(self).__name__} watches read but does not override event_read"
        )

    def event_write(self) -> None:
        """Called when writable. The default flushes the write queue (``write(None)``)."""
        self.write(None)

    def event_err(self) -> None:
        """Called on an error condition. The default closes the object ("event_err")."""
        self.close("event_err")

    def event_hup(self) -> None:
        """Called on hang-up. The default closes the object ("event_hup")."""
        self.close("event_hup")

    # -- watches -------------------------------------------------------------------------

    def watch_read(self, on: bool = True) -> None:
        """Watch (or stop watching) readability. No system call if nothing changes; the
        change reaches the kernel just before the loop next polls."""
        if self.closed:
            return
        mask = self._event_watch
        new = mask | READ if on else mask & ~READ
        if new != mask:
            self._event_watch = new
            self.loop._registry.dirty[self.fd] = self

    def watch_write(self, on: bool = True) -> None:
        """Watch (or stop watching) writability.

        Turning it on here hands the watch to the subclass: it stays on after the write
        queue drains, even if danga had turned it on itself (Danga 1.60).
        """
        if self.closed:
            return
        if on:
            self._write_set_watch = False
        self._set_write_watch(on)

    def _set_write_watch(self, on: bool) -> None:
        mask = self._event_watch
        new = mask | WRITE if on else mask & ~WRITE
        if new != mask:
            self._event_watch = new
            self.loop._registry.dirty[self.fd] = self

    def on_incomplete_write(self) -> None:
        """Called when a write could not hand everything to the kernel (partial write or
        EAGAIN). The default turns the write watch on, as danga's own (released when the
        queue drains). Override to wait for something else (TLS wanting a read)."""
        if not self._event_watch & WRITE:
            self._write_set_watch = True
            self._set_write_watch(True)

    # -- writing -------------------------------------------------------------------------

    def write(self, data: Any = None) -> bool:
        """Send or queue *data*: bytes-like, a callable (run, with no arguments, once all
        before it is written), or None (flush the queue).

        Returns True when everything has been handed to the kernel, False while data is
        still queued (or the write failed and closed the object). On a closed object it
        returns True and sends nothing, as Danga does. EPIPE, ECONNRESET and other errors
        call ``self.close(reason)`` ("EPIPE", "ECONNRESET", "write_error").

        Raises:
            TypeError: *data* is a str or another type that is not bytes-like or callable.
        """
        if (data.__class__ is not bytes or self.write_buf_size or self._writer is not None
                or self._write_set_watch or self.closed):
            return self._write_general(data)
        # The common case, written out (it runs once per echo): bytes, nothing queued, the
        # plain send, no write watch of danga's to release, open.
        try:
            sent = self._send(self._io, data)
        except BlockingIOError:
            sent = 0
        except InterruptedError:
            return self._write_general(data)  # it retries
        except OSError as exc:
            return self._write_failed(exc)
        except BaseException as exc:
            self._interrupted(exc, "write")
            raise
        if self._idle and sent:
            self._last_active = self.loop.now
        if sent >= len(data):
            return True
        return self._write_rest(data, sent)

    def _write_general(self, data: Any) -> bool:
        # write() for everything: closed, flush, callables, other buffers, a queue, a
        # writer function.
        if self.closed:
            return True
        if data is None:
            return self._flush() if self._wbuf else True
        cls = data.__class__
        if cls is not bytes and cls is not bytearray and cls is not memoryview:
            if callable(data):
                if self.write_buf_size:
                    self._queue().append(data)
                    self.write_buf_size += 1
                    return False
                data()  # nothing queued before it: run it now
                return self._flush() if self._wbuf and not self.closed else True
            data = _as_bytes_view(data, "write()")
        elif cls is memoryview and (data.format != "B" or data.ndim != 1
                                    or not data.c_contiguous):
            data = _byte_view(data)  # len() counts bytes; send() takes it as it is
        if self.write_buf_size:
            self._enqueue(data)
            return False
        writer = self._writer
        while True:
            try:
                sent = self._send(self._io, data) if writer is None else writer(data)
                break
            except BlockingIOError:
                sent = 0
                break
            except InterruptedError:
                continue
            except OSError as exc:
                return self._write_failed(exc)
        if self._idle and sent:
            self._last_active = self.loop.now
        if sent >= len(data):
            if self._write_set_watch:
                self._write_set_watch = False
                self._set_write_watch(False)
            return True
        return self._write_rest(data, sent)

    def _write_rest(self, data: Any, sent: int) -> bool:
        # A partial write (or EAGAIN): queue what is left and say so.
        self._enqueue(memoryview(data)[sent:] if sent else data)
        self.on_incomplete_write()
        return False

    def _enqueue(self, data: Any) -> None:
        # bytes and read-only buffers are queued as zero-copy views; a mutable buffer's
        # unsent part is copied, so the caller may reuse (or resize) it at once.
        if data.__class__ is not bytes:
            view = _byte_view(data if data.__class__ is memoryview else memoryview(data))
            data = view if view.readonly else bytes(view)
        if data:
            self._queue().append(data)
            self.write_buf_size += len(data)

    def _queue(self) -> deque[Any]:
        wbuf = self._wbuf
        if isinstance(wbuf, deque):
            return wbuf
        new: deque[Any] = deque()
        self._wbuf = new
        return new

    def _flush(self) -> bool:
        wbuf = self._wbuf
        if not isinstance(wbuf, deque):
            return True  # nothing was ever queued
        try:
            return self._flush_queue(wbuf)
        except BaseException as exc:
            self._interrupted(exc, "write")
            raise

    def _flush_queue(self, wbuf: deque[Any]) -> bool:
        while wbuf:
            head = wbuf[0]
            if callable(head):
                if head.__class__ is _FileRegion:  # callable only to end a sendmsg batch
                    done = self._send_file(head)
                    if self.closed:
                        return False
                    if not done:
                        self.on_incomplete_write()
                        return False
                    wbuf.popleft()
                    continue
                wbuf.popleft()
                self.write_buf_size -= 1
                head()
                if self.closed:
                    return True
                continue
            sendv = self._sendv
            bufs: list[Any] = []
            if sendv is not None and self._writer is None and len(wbuf) > 1:
                for item in wbuf:
                    if callable(item) or len(bufs) == _MAX_IOV:
                        break
                    bufs.append(item)
            try:
                if len(bufs) > 1:
                    assert sendv is not None
                    want = sum(map(len, bufs))
                    sent = sendv(self._io, bufs)
                else:
                    want = len(head)
                    writer = self._writer
                    sent = self._send(self._io, head) if writer is None else writer(head)
            except BlockingIOError:
                self.on_incomplete_write()
                return False
            except InterruptedError:
                continue
            except OSError as exc:
                return self._write_failed(exc)
            self.write_buf_size -= sent
            if self._idle and sent:
                self._last_active = self.loop.now
            left = sent
            while left:
                first = wbuf[0]
                if left >= len(first):
                    left -= len(first)
                    wbuf.popleft()
                else:
                    wbuf[0] = memoryview(first)[left:]
                    left = 0
            if sent < want:
                self.on_incomplete_write()
                return False
        if self._write_set_watch:
            self._write_set_watch = False
            self._set_write_watch(False)
        return True

    def _interrupted(self, exc: BaseException, what: str) -> None:
        # A KeyboardInterrupt (or SystemExit) raised by a signal handler right after a
        # send or recv returned: the count is lost, so the stream position is unknown (a
        # resend would duplicate bytes, a dropped read leaves a hole). Close: the only
        # answer that never corrupts the stream. Ordinary exceptions pass untouched.
        if not isinstance(exc, Exception) and not self.closed:
            self.close(f"{what} interrupted")

    def _write_failed(self, exc: OSError) -> bool:
        if exc.errno == errno.EBADF:
            self._disown_fd()  # closed behind our back: never close the number
        reason = _WRITE_REASONS.get(exc.errno or 0, "write_error")
        logger.debug("%s: write failed (%s), closing", self.as_string(), exc)
        self.close(reason)
        return False

    def set_writer_func(self, fn: Callable[[Any], int] | None) -> None:
        """Replace ``send`` with ``fn(buffer) -> bytes written`` (None restores it).

        *fn* follows send's contract: it may write less than asked, raises
        BlockingIOError when it can write nothing now, and another OSError on failure.

        Raises:
            TypeError: *fn* is neither callable nor None.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"the writer function must be callable, not {type(fn).__name__}")
        self._writer = fn

    # -- files ---------------------------------------------------------------------------

    def write_file(self, file: Any, offset: int = 0, count: int | None = None) -> bool:
        """Queue *count* bytes of *file* from *offset* (to its end when None) after what
        is queued, and start sending them: ``os.sendfile`` where it works, else the bytes
        are read (``os.pread``) and sent. Perlbal's ``post_sendfile_cb`` is a callable
        written after it: it runs once the region has been sent.

        *file* is a file object with ``fileno()`` or an fd: a regular file (or a
        device ``pread`` can read, with *count* given). The file position is never
        moved, and danga never closes the file (it keeps a reference to the object until
        the region is sent or dropped). The region counts in ``write_buf_size``. At most
        ``sendfile_max_chunk`` bytes (128 KiB unless the class says otherwise, in one
        ``sendfile`` call) go per writable event, so one big file cannot starve other
        connections: the next chunk waits for the next writable event, after the other
        ready connections of that poll were served.
        The fallback to reading is chosen before the first byte only (sendfile missing,
        EINVAL/ENOSYS/ENOTSUP/EOPNOTSUPP/ENOTSOCK, a writer function set, a file that is
        not regular); a file that turns out shorter than the region closes the object
        with ``"file_truncated"``.

        Returns as :meth:`write`: True when everything (this region included) has been
        handed to the kernel, False while something is queued; a 0-byte region changes
        nothing (True on an empty queue). On a closed object it returns True.

        Raises:
            TypeError: *file* has no fd, or *offset* / *count* is not an int.
            ValueError: a negative *offset* or *count*, a closed file, a pipe or socket
                as the source, a device without *count*, or a ``sendfile_max_chunk``
                that is not a positive int.
            OSError: ``fstat`` of the file fails.
        """
        if isinstance(file, bool) or not isinstance(file, int):
            fileno = getattr(file, "fileno", None)
            if fileno is None:
                raise TypeError(f"write_file() takes a file object or an fd, not "
                                f"{type(file).__name__}")
            try:
                fd = fileno()
            except (OSError, ValueError) as exc:
                raise ValueError(f"write_file(): cannot use {file!r}: {exc}") from exc
        else:
            fd = file
        for name, value in (("offset", offset), ("count", count)):
            if value is None and name == "count":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"write_file(): {name} must be an int, not "
                                f"{type(value).__name__}")
            if value < 0:
                raise ValueError(f"write_file(): {name} must be >= 0, not {value}")
        if fd < 0:
            raise ValueError(f"write_file(): invalid fd {fd}")
        chunk = self.sendfile_max_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"write_file(): {type(self).__name__}.sendfile_max_chunk must "
                             f"be a positive int, not {chunk!r}")
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        if not regular:
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                raise ValueError("write_file() takes a regular file, not a pipe or a "
                                 "socket; read it and write() the data")
            if count is None:
                raise ValueError("write_file(): count is needed for a file that is not "
                                 "regular (its size is unknown)")
        if count is None:
            count = max(0, st.st_size - offset)
        if self.closed:
            return True
        if not count:
            return not self.write_buf_size
        if self._tls is not None:  # TLS: read, encrypt and send (tls.py), no sendfile
            return self._tls.write_file(self, fd, offset, count, file)
        region = _FileRegion(fd, offset, count, file if file is not fd else None,
                             native=regular and self._writer is None)
        self._queue().append(region)
        self.write_buf_size += count
        if self.write_buf_size > count or self.connecting:
            return False  # behind other data (or the connect): sent in turn
        return self._flush()

    def _send_file(self, region: _FileRegion) -> bool:
        """Send one chunk of *region* (the queue's head): True when it is all sent,
        False when the kernel took what it could now (or the object closed)."""
        if self.connecting:
            return False
        want = min(region.left, self.sendfile_max_chunk)
        sendfile = getattr(os, "sendfile", None) if region.native else None
        while True:
            try:
                if sendfile is not None:
                    sent = sendfile(self.fd, region.fd, region.offset, want)
                    if not sent:
                        self.close("file_truncated")
                        return False
                else:
                    sent = self._send_file_read(region, want)
                    if sent < 0:
                        return False  # truncated: closed
                break
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            except OSError as exc:
                if sendfile is not None and not region.started and (
                        exc.errno in _NO_SENDFILE):
                    region.native = False  # not for this pair of files: read and send
                    sendfile = None
                    continue
                self._write_failed(exc)
                return False
        if sent:
            region.started = True
            region.offset += sent
            region.left -= sent
            self.write_buf_size -= sent
            if self._idle:
                self._last_active = self.loop.now
        if region.left:
            # More to send: wait for the next writable event (a chunk per event) even
            # when this one went whole.
            return False
        region.file = None
        return True

    def _send_file_read(self, region: _FileRegion, want: int) -> int:
        # The fallback: read at an explicit offset (the file position never moves) and
        # send; what the kernel does not take is simply read again next time.
        data = os.pread(region.fd, min(want, _PREAD_CHUNK), region.offset)
        if not data:
            self.close("file_truncated")
            return -1
        writer = self._writer
        return self._send(self._io, data) if writer is None else writer(data)

    # -- idle timeouts -------------------------------------------------------------------

    def set_idle_timeout(self, seconds: float | None) -> None:
        """Call :meth:`on_idle_timeout` after *seconds* without a read or write of at
        least one byte (None or 0 turns it off). Setting it starts the period afresh.

        It costs nothing per event: each read or write stamps the time the loop cached
        for the iteration (``loop.now``), and one timer per object re-arms itself for
        the rest of the period when it fires early (libev's "be smart about timeouts").

        Raises:
            TypeError: *seconds* is not a number or None.
            ValueError: *seconds* is negative or NaN.
        """
        if seconds is not None and (isinstance(seconds, bool)
                                    or not isinstance(seconds, (int, float))):
            raise TypeError(f"set_idle_timeout() takes seconds (a number) or None, not "
                            f"{type(seconds).__name__}")
        if seconds is not None and (math.isnan(seconds) or seconds < 0):
            raise ValueError(f"set_idle_timeout() takes seconds >= 0 or None, not "
                             f"{seconds!r}")
        if self._idle:
            self._idle_timer.cancel()
        self._idle = 0.0
        if not seconds or self.closed:
            return
        self._idle = float(seconds)
        loop = self.loop
        if not loop._stamp_now:  # from now on the loop keeps loop.now up to date
            loop._stamp_now = True
            loop.now = monotonic()
        self._last_active = now = monotonic()
        self._idle_timer: Timer = self.loop.add_timer(seconds, self._idle_check, now)

    def _idle_check(self, armed: float) -> None:
        if not self._idle or self.closed:
            return
        due = self._last_active + self._idle
        now = monotonic()
        if due > now:  # activity since: sleep for the rest of the period
            self._idle_timer = self.loop.add_timer(due - now, self._idle_check, now)
            return
        # Idle: the hook's own choice (close, or keep) stands; a kept object is checked
        # again a full period later.
        self._last_active = now
        self._idle_timer = self.loop.add_timer(self._idle, self._idle_check, now)
        self.on_idle_timeout()

    def on_idle_timeout(self) -> None:
        """Called after the idle timeout without activity. The default closes the
        object with ``"idle_timeout"``; an override that keeps the object is called again
        after another idle period."""
        self.close("idle_timeout")

    # -- reading -------------------------------------------------------------------------

    def read(self, n: int) -> bytes | None:
        """Up to *n* bytes: pushed-back data first (one chunk, split if larger than *n*),
        else one ``recv``. Returns b"" when nothing is available now, None at EOF, on an
        error or when closed. ``read(0)`` returns b"".

        Raises:
            TypeError: *n* is not an int.
            ValueError: *n* is negative.
        """
        if n.__class__ is not int or not 0 < n <= MAX_READ or self._pb or self.closed:
            return self._read_general(n)
        # The common case, written out (it runs once per event): one recv.
        try:
            data = self._recv(self._io, n)
        except BlockingIOError:
            return b""
        except InterruptedError:
            return self._read_general(n)  # it retries
        except OSError as exc:
            self._read_failed(exc)
            return None
        except BaseException as exc:
            self._interrupted(exc, "read")
            raise
        if data:
            if self._idle:
                self._last_active = self.loop.now
            return data
        return None

    def _read_general(self, n: Any) -> bytes | None:
        # read() for everything: checks, pushed-back data, closed, a large n.
        if n.__class__ is not int or n <= 0:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"read() takes a byte count (int), not {type(n).__name__}")
            if n < 0:
                raise ValueError(f"read() byte count must be >= 0, not {n}")
            return None if self.closed else b""
        if self.closed:
            return None
        pb = self._pb
        if pb:
            chunk = pb[0]
            if len(chunk) <= n:
                pb.popleft()
            else:
                pb[0] = chunk[n:]
                chunk = chunk[:n]
            self._pb_size -= len(chunk)
            return chunk
        while True:
            try:
                data = self._recv(self._io, n if n <= MAX_READ else MAX_READ)
                break
            except BlockingIOError:
                return b""
            except InterruptedError:
                continue
            except OSError as exc:
                self._read_failed(exc)
                return None
            except BaseException as exc:
                self._interrupted(exc, "read")
                raise
        if self._idle and data:
            self._last_active = self.loop.now
        return data if data else None

    def _read_failed(self, exc: OSError) -> None:
        logger.debug("%s: read failed: %s", self.as_string(), exc)
        if exc.errno == errno.EBADF:
            self._disown_fd()  # closed behind our back: never close the number

    def push_back_read(self, buf: Any) -> None:
        """Put *buf* back so the next read() returns it (FIFO after earlier push-backs).
        Post-event work re-fires event_read while the object watches read, until the
        pushed-back data is drained. Ignored on a closed object.

        Raises:
            TypeError: *buf* is not bytes-like.
        """
        if not isinstance(buf, _BUFFER_TYPES):
            buf = _as_bytes_view(buf, "push_back_read()")
        data = bytes(buf)
        if self.closed or not data:
            return
        if self._pb is None:
            self._pb = deque()
        self._pb.append(data)
        self._pb_size += len(data)
        self.loop._push_back[self.fd] = self

    # -- closing -------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Close: unregister now, drop the write queue, uncork; the OS close (and removal
        from the descriptor map) happens in post-event work, so the fd number cannot be
        reused within this batch. Idempotent; never raises for a socket whose fd was
        closed behind danga's back (it is then forgotten, never closed again)."""
        if self.closed:
            return
        raw = self.sock
        try:
            raw = self._shut(reason)
        finally:
            self._detach_if_shut(raw, steal=False)

    def steal_socket(self) -> Any:
        """Take the socket away: the object is closed and leaves the descriptor map at
        once, the socket stays open and is returned (None if already closed)."""
        if self.closed:
            return None
        raw = self.sock
        try:
            raw = self._shut("stolen")
        finally:
            self._detach_if_shut(raw, steal=True)
        return raw

    def _detach_if_shut(self, raw: Any, *, steal: bool) -> None:
        # In a finally: even when an interrupt cut _shut short, a closed object is
        # detached and queued for its real close (never a zombie left in the map).
        if self.closed:
            self.loop._detach(self, raw, steal=steal)

    def _shut(self, reason: str | None) -> Any:
        self.closed = True
        self.close_reason = reason
        if self._idle:
            self._idle = 0.0
            self._idle_timer.cancel()
        if self._conn is not None:
            self._connect_abandon()
        if self._corked:
            self._corked = False
            try:
                self._set_cork(False)
            except OSError as exc:  # the close goes on: nothing may stop the detach
                if exc.errno == errno.EBADF:
                    self._disown_fd()
                logger.debug("%s: uncorking on close failed: %s", self.as_string(), exc)
        wbuf = self._wbuf
        if isinstance(wbuf, deque):
            wbuf.clear()  # a _flush() running a queued callable sees the queue emptied
        self._wbuf = ()
        self._io = None
        self.write_buf_size = 0
        self._pb = None
        self._pb_size = 0
        raw, self.sock = self.sock, None
        return raw

    def _lost_fd(self) -> None:
        """The fd was closed behind danga's back: close the object without ever closing
        the fd number again (it may belong to someone else by now)."""
        self._disown_fd()
        self.close("fd closed behind danga's back")

    def _disown_fd(self) -> None:
        # Make sure the real close can never close this fd *number*: detach the socket
        # (its fd becomes -1) or, for other objects, keep them alive so that their
        # finaliser never runs, and forget them.
        raw = self.sock
        if isinstance(raw, _socket.socket):
            raw.detach()
        elif raw is not None:
            disown(raw)
            self.sock = None

    # -- TLS (the engine is in tls.py) -------------------------------------------------

    def start_tls(self, context: Any, *, server_side: bool,
                  server_hostname: str | None = None, handshake_timeout: float = 60.0,
                  shutdown_timeout: float = 30.0, discard_buffered: bool = False) -> None:
        """Start TLS on this connection (docs/tls.md): from now on :meth:`read` returns
        plaintext, :meth:`write` takes plaintext, and ``event_read`` fires only when
        plaintext can be read. Writes made before the handshake completes are held and
        sent after it; :meth:`on_tls_handshake` runs when it completes,
        :meth:`on_tls_error` when it fails. A handshake that takes longer than
        *handshake_timeout* seconds closes the object with ``"tls_handshake_timeout"``;
        :meth:`close` sends close_notify and gives the write queue at most
        *shutdown_timeout* seconds to drain.

        A client (``server_side=False``) verifies the peer as *context* says, against
        *server_hostname*. A server context gets ``ssl.OP_NO_RENEGOTIATION`` the first
        time it is used here (clear it from ``context.options`` to allow renegotiation).

        Raises:
            TypeError: *context* is not an ``ssl.SSLContext``, *server_side* is not a
                bool, or a timeout is not a number.
            ValueError: TLS was already started, the object is closed or not a
                socket, a timeout is not > 0, *server_hostname* is missing where the
                context checks host names, or plaintext was pushed back and is still
                unread (it would be taken as if it came over TLS: read it first, or
                pass ``discard_buffered=True`` to drop it).
        """
        from .tls import start_tls

        start_tls(self, context, server_side=server_side, server_hostname=server_hostname,
                  handshake_timeout=handshake_timeout, shutdown_timeout=shutdown_timeout,
                  discard_buffered=discard_buffered)

    @property
    def tls(self) -> Any:
        """The ``ssl.SSLObject`` of a TLS connection (``cipher()``, ``version()``,
        ``getpeercert()``, ``selected_alpn_protocol()``...), or None: before
        :meth:`start_tls` and after :meth:`close`."""
        engine = self._tls
        return None if engine is None else engine.obj

    def on_tls_handshake(self) -> None:
        """Called once the TLS handshake has completed (``self.tls`` tells the version,
        the cipher and the peer's certificate); the writes held meanwhile have been
        encrypted and queued just before. The default does nothing."""

    def on_tls_error(self, exc: Exception) -> None:
        """Called when TLS fails (*exc*: an ``ssl.SSLError``, e.g.
        ``ssl.SSLCertVerificationError``). The default closes the object with a reason
        that names the error, such as ``"tls_error: CERTIFICATE_VERIFY_FAILED: Hostname
        mismatch, certificate is not valid for 'example.org'."``; if an override returns
        without closing, danga closes with that reason anyway (the TLS session is
        unusable)."""
        from .tls import error_reason

        self.close(error_reason(exc))

    def _raw_read(self, n: int) -> bytes | None:
        # The TLS layer's ciphertext read: one recv, as read(), never the pushed-back
        # plaintext. b"": nothing now; None: EOF or an error.
        pb = self._pb
        self._pb = None
        try:
            return Socket.read(self, n)
        finally:
            if not self.closed:
                self._pb = pb

    # -- TCP_CORK ------------------------------------------------------------------------

    def tcp_cork(self, on: bool) -> None:
        """TCP_CORK on Linux, TCP_NOPUSH on BSD and macOS; a silent no-op on non-TCP
        sockets and pipes (never closes them)."""
        if self.closed or bool(on) == self._corked:
            return
        self._set_cork(bool(on))

    def _set_cork(self, on: bool) -> None:
        if not self._tcp or _CORK_OPT is None or self.sock is None:
            return
        try:
            self.sock.setsockopt(_socket.IPPROTO_TCP, _CORK_OPT, 1 if on else 0)
        except OSError as exc:
            if exc.errno not in _CORK_IGNORED:
                raise
            return
        self._corked = on

    # -- addresses -----------------------------------------------------------------------

    def _address(self, peer: bool) -> tuple[str | None, str | None]:
        if self.sock is None:  # closed or stolen: no address, as in Danga
            return (None, None)
        cached = self._peer if peer else self._local
        if cached is not None:
            return cached
        sock = self.sock
        if not isinstance(sock, _socket.socket):
            return (None, None)
        try:
            addr = sock.getpeername() if peer else sock.getsockname()
        except OSError:
            return (None, None)
        family = sock.family
        if family == _socket.AF_INET:
            result: tuple[str | None, str | None] = (addr[0], f"{addr[0]}:{addr[1]}")
        elif family == _socket.AF_INET6:
            result = (addr[0], f"[{addr[0]}]:{addr[1]}")
        elif family == getattr(_socket, "AF_UNIX", None):
            path = addr.decode(errors="replace") if isinstance(addr, bytes) else addr
            return (None, path or None)
        else:
            return (None, None)
        if peer:
            self._peer = result
        else:
            self._local = result
        return result

    def peer_ip_string(self) -> str | None:
        """The peer's IP ("1.2.3.4", "::1"), or None (closed, unconnected, AF_UNIX)."""
        return self._address(True)[0]

    def peer_addr_string(self) -> str | None:
        """"ip:port", "[v6]:port", the AF_UNIX path, or None where there is none."""
        return self._address(True)[1]

    def local_ip_string(self) -> str | None:
        """The local IP, or None."""
        return self._address(False)[0]

    def local_addr_string(self) -> str | None:
        """The local "ip:port" / "[v6]:port" / AF_UNIX path, or None."""
        return self._address(False)[1]

    def as_string(self) -> str:
        """Danga's format: ``"Class(RW): open to 1.2.3.4:5"`` / ``"Class(R): closed"``."""
        watch = self._event_watch
        flags = ("R" if watch & READ else "") + ("W" if watch & WRITE else "")
        text = f"{type(self).__name__}({flags}): {'closed' if self.closed else 'open'}"
        if not self.closed:
            peer = self.peer_addr_string()
            if peer:
                text += f" to {peer}"
        return text

    def __repr__(self) -> str:
        return self.as_string()

    # -- callbacks and debugging ---------------------------------------------------------

    def set_post_loop_callback(self, callback: PostLoopCallback | None) -> None:
        """This object's post-loop callback, ``callback(descriptor_map, other_fds)``, run
        after each iteration until the object closes; None removes it.

        Raises:
            TypeError: *callback* is neither callable nor None.
        """
        if self.closed:
            return
        self.loop._set_plc(self, callback)

    def debugmsg(self, fmt: str, *args: Any) -> None:
        """Danga's debugmsg: ``>>> message`` on stderr and DEBUG on the ``danga`` logger."""
        debug_msg(fmt, *args)

    def dump_error(self, msg: str) -> None:
        """Log ``ERROR: msg``, this object's as_string() and a traceback on ``danga``."""
        import traceback  # only on errors: keeps `import danga` light

        exc = sys.exc_info()[1]
        if exc is not None:
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            trace = "".join(traceback.format_stack()[:-1])
        logger.error("ERROR: %s\n\t%s\n%s", msg, self.as_string(), trace.rstrip("\n"))


class _FileRegion:
    """A region of a file in the write queue (queued by write_file()).

    It is callable only so that the queue's flush, which stops a sendmsg() batch at a
    callable, stops at a region too: it is never called."""

    __slots__ = ("fd", "file", "left", "native", "offset", "started")

    def __init__(self, fd: int, offset: int, left: int, file: Any, native: bool) -> None:
        self.fd = fd
        self.offset = offset
        self.left = left
        self.file = file  # keeps a file object (and so its fd) alive while queued
        self.native = native
        self.started = False

    def __call__(self) -> None:  # pragma: no cover - never called (see the docstring)
        raise AssertionError("a file region in the write queue is never called")


#: The TLS that Listener(ssl=...) and connect(ssl=...) start on the Socket made of a
#: socket: fd -> (socket, context, start_tls keywords), taken by Socket.__init__.
TLS_PENDING: dict[int, tuple[Any, Any, dict[str, Any]]] = {}


def _refuse_ssl_socket(sock: Any) -> None:
    """Raises TypeError for an ``ssl.SSLSocket``: danga keeps the raw socket and runs
    TLS itself (an SSLSocket hides plaintext from the poller and stalls)."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError(
            "danga.Socket() takes the plain socket, not an ssl.SSLSocket: wrap the "
            "socket itself and call start_tls(context, server_side=...) on the object "
            "(or use Listener(..., ssl=context) / danga.connect(..., ssl=context))")


def _fd_of(sock: Any) -> int:
    """The fd of an object danga.Socket() is given; see Socket for what is raised."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"danga.Socket() needs a socket or an object with fileno(), not "
            f"{type(sock).__name__}; wrap a raw fd with socket.socket(fileno=fd) "
            "or os.fdopen(fd)"
        )
    if not callable(getattr(sock, "close", None)):
        raise TypeError(
            f"danga.Socket() needs an object with close() (danga closes what it owns), "
            f"and {type(sock).__name__} has none; wrap the fd with "
            "socket.socket(fileno=fd) or os.fdopen(fd)"
        )
    try:
        fd = fileno()
    except io.UnsupportedOperation as exc:
        raise ValueError(
            f"danga.Socket(): {type(sock).__name__} has no file descriptor ({exc}); "
            "pass a socket or a pipe"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"danga.Socket(): cannot use {sock!r}: it is closed ({exc})"
                         ) from exc
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(
            f"danga.Socket(): cannot use {sock!r}: it is closed (fileno() returned "
            f"{fd!r}); pass an open socket or pipe"
        )
    return fd


def _byte_view(view: memoryview) -> memoryview:
    """A one-dimensional view of unsigned bytes over *view*, so len() counts bytes; a
    non-contiguous buffer (a strided slice) is copied, since send() cannot take it."""
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _as_bytes_view(data: Any, call: str) -> memoryview:
    if isinstance(data, str):
        raise TypeError(
            f"{call}: danga takes bytes, not str; encode the text first, e.g. "
            f"{call.rstrip('()')}(text.encode('utf-8'))"
        )
    try:
        view = memoryview(data)
    except TypeError:
        what = ("bytes-like data, a callable or None" if call == "write()"
                else "bytes-like data")
        raise TypeError(f"{call} takes {what}, not {type(data).__name__}") from None
    return _byte_view(view)
