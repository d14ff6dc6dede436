"""TLS on a danga.Socket: ``ssl.SSLObject`` over two ``MemoryBIO``s (docs/tls.md).

danga keeps the raw, non-blocking fd: ciphertext goes through the Socket's ordinary
write queue (so ``write_buf_size``, back-pressure, queued callables and ``tcp_cork``
work on it, and a queue of records is flushed with one ``sendmsg``), and the TLS engine
never makes a system call, so EAGAIN and ``SSLWant*Error`` never reach the user.

How a TLS object is built: :func:`start_tls` gives the object a private subclass of its
own class (same name, no new slots; made once per class), ``_tls_class(cls)``, whose
method resolution order is ``[sub, cls..., _TLSSocket, Socket, ...]``:

- ``sub.event_read`` runs first on a readable fd: it feeds the engine with ciphertext,
  drives the handshake, and calls the class's own ``event_read`` only when plaintext
  (or the peer's close_notify) can be read;
- ``_TLSSocket`` sits *below* the user's class, so a subclass's own ``read``/``write``
  /``close`` overrides still run, and their ``super()`` calls reach the TLS versions.

A non-TLS Socket pays nothing per event for any of this. ``close()`` puts the object's
own class back.

Plaintext that OpenSSL holds (``pending()``), decrypted bytes not read yet and complete
records left in the incoming BIO are invisible to the poller (the trap that stalled
curl, mongoose and eggdrop): after each ``event_read`` a TLS object with such plaintext
joins the loop's push-back re-fire set, the same machinery as ``push_back_read``. Its
``_pb`` is a :class:`_PushBack` (a deque of the pushed-back chunks) that is also true
while the engine holds plaintext, and ``_pb_size`` goes down with every byte read, which
is how the re-fire sees progress.

Socket names used here (Socket's own, as a subclass uses them;
docs/internals.md#architecture): ``_tls``, ``_pb``, ``_pb_size``, ``_wbuf``, ``_event_watch``,
``_ident`` and ``_lost_fd()`` (a close never lingers on an fd lost behind its back),
``_raw_read()``, ``connecting``, ``_conn`` (through ``Connecting._connect_reclass``),
and the loop's ``_push_back``, ``_owned`` and ``_callback_failed()``.
"""

from __future__ import annotations

import os
import ssl
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .loop import logger
from .poller import READ, fd_identity
from .socket import MAX_READ, Socket

if TYPE_CHECKING:
    from .timers import Timer

# The public API is Socket.start_tls and friends (socket.py); nothing here is public.
__all__: list[str] = []

#: The most ciphertext one raw read takes from the kernel.
RAW_READ = 64 * 1024
#: Ciphertext is not read from the kernel while the incoming BIO holds this much
#: (a reader that does not consume plaintext gets TCP back-pressure, not a big BIO).
BIO_LIMIT = 1 << 20
#: One TLS record's worth of plaintext: what the readable event decrypts at once.
RECORD = 16 * 1024
#: The file bytes write_file() reads, encrypts and hands to the write queue at once.
FILE_CHUNK = 64 * 1024

_CONTEXTS_SEEN: Any = None  # a WeakSet of server contexts given OP_NO_RENEGOTIATION


def error_reason(exc: BaseException) -> str:
    """The close reason for a TLS failure: ``"tls_error: <reason>[: <detail>]"``, e.g.
    ``tls_error: CERTIFICATE_VERIFY_FAILED: Hostname mismatch, certificate is not valid
    for 'x'.`` or ``tls_error: CERTIFICATE_VERIFY_FAILED: self-signed certificate``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return f"tls_error: {exc.reason or 'CERTIFICATE_VERIFY_FAILED'}: {detail}"
    reason = getattr(exc, "reason", None)
    if reason:
        return f"tls_error: {reason}"
    return f"tls_error: {type(exc).__name__}: {exc}" if str(exc) else (
        f"tls_error: {type(exc).__name__}")


class _PushBack(deque):  # type: ignore[type-arg]
    """A TLS object's push-back deque: the chunks ``push_back_read`` put back, and true
    also while the engine has plaintext the poller cannot see (docs at the top)."""

    __slots__ = ("engine",)

    def __init__(self, engine: TLSEngine) -> None:
        super().__init__()
        self.engine = engine

    def __bool__(self) -> bool:
        engine = self.engine
        return len(self) > 0 or (engine.user_read and engine.available())


class _FilePump:
    """A region of a file that write_file() queued on a TLS object."""

    __slots__ = ("fd", "file", "left", "offset", "step")

    def __init__(self, fd: int, offset: int, left: int, file: Any) -> None:
        self.fd = fd
        self.offset = offset
        self.left = left
        self.file = file  # keeps a file object (and so its fd) alive while queued
        self.step: Callable[[], bool] | None = None


class TLSEngine:
    """The TLS state of one Socket: the SSLObject, its BIOs, the held writes."""

    __slots__ = (
        "eof",
        "established",
        "failed",
        "failure",
        "held",
        "incoming",
        "more",
        "obj",
        "outgoing",
        "pump",
        "shutdown_timeout",
        "starved",
        "stash",
        "stash_pos",
        "tail",
        "timer",
        "user_read",
        "want_read",
    )

    def __init__(self, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 shutdown_timeout: float) -> None:
        self.obj = obj
        self.incoming = incoming
        self.outgoing = outgoing
        self.shutdown_timeout = shutdown_timeout
        self.established = False
        self.eof = False  # the peer's close_notify was read
        self.failed = False  # the session failed: on_tls_error was called (once)
        # The last decrypt wanted more ciphertext than the BIO had (OpenSSL takes a
        # partial record out of the BIO, so bytes left there are whole records; the
        # flag keeps a stray remainder from being announced as plaintext regardless).
        self.starved = True
        self.stash = b""  # plaintext decrypted by the readable event, not read yet
        self.stash_pos = 0
        # The last decrypt filled its buffer: OpenSSL may hold the rest of the record
        # (pending() is asked only then; a shorter read emptied the record).
        self.more = False
        # A read that gathered several records stopped at the peer's close_notify or at
        # an error: the next read() meets it (OpenSSL repeats close_notify; the error is
        # kept in ``failure``), so it is announced like plaintext, though the kernel may
        # have nothing more to say.
        self.tail = False
        # The error that stopped such a read: OpenSSL does not repeat it (its next read
        # says EOF), so the next read raises it again from here.
        self.failure: ssl.SSLError | None = None
        self.user_read = False  # the object's own wish to watch read
        self.want_read = False  # a write waits for the peer (renegotiation)
        # Plaintext (bytes), callables and file regions written while writes cannot be
        # encrypted yet (handshake, a write wanting a read, a file being sent): in order.
        self.held: deque[Any] | None = deque()
        self.pump: _FilePump | None = None
        self.timer: Timer | None = None

    # -- what can be read without the poller ----------------------------------------------

    def available(self) -> bool:
        """Plaintext can be had without reading the fd."""
        return (self.stash_pos < len(self.stash) or self.tail
                or (not self.starved and self.incoming.pending > 0)
                or (self.more and self.obj.pending() > 0))

    def _feed(self, sock: Socket) -> bool:
        """One raw read into the incoming BIO. False when nothing came (EAGAIN)."""
        if self.incoming.eof or self.incoming.pending >= BIO_LIMIT:
            return False
        data = sock._raw_read(RAW_READ)
        if data is None:
            if sock.closed:
                return False
            self.incoming.write_eof()
        elif data:
            self.incoming.write(data)
        else:
            return False
        self.starved = False
        return True

    def _flush(self, sock: Socket) -> None:
        """Move what the TLS engine produced to the object's write queue."""
        if self.outgoing.pending:
            Socket.write(sock, self.outgoing.read())

    # -- the readable event -------------------------------------------------------------

    def readable(self, sock: Socket) -> bool:
        """Feed, handshake, decrypt: True when the object's event_read should run."""
        if self.stash_pos < len(self.stash) or len(sock._pb):  # type: ignore[arg-type]
            return True
        if not self.available():
            self._feed(sock)
            if sock.closed:
                return False
        if not self.established and not self._handshake(sock):
            return False
        if self.want_read:
            self._retry_writes(sock)
            if sock.closed:
                return False
        return self._decrypt(sock)

    def _decrypt(self, sock: Socket) -> bool:
        # Decrypt one record into the stash: only then is there plaintext to announce.
        if self.eof:
            return True  # read() keeps returning EOF, as on a plain socket
        self.tail = False
        try:
            data = self._obj_read(RECORD)
            self.more = len(data) == RECORD
        except ssl.SSLWantReadError:
            self.starved = True
            self._flush(sock)  # KeyUpdate answers, renegotiation
            return False
        except ssl.SSLZeroReturnError:
            data = b""
        except (ssl.SSLEOFError, ssl.SSLSyscallError):
            self._truncated(sock)
            return False
        except ssl.SSLError as exc:
            self._fail(sock, exc)
            return False
        self._flush(sock)
        if sock.closed:
            return False
        if not data:
            self.eof = True  # the peer's close_notify: read() returns EOF
            return True
        self.stash = data
        self.stash_pos = 0
        return True

    def after_event(self, sock: Socket) -> None:
        """Join the push-back re-fire set while plaintext waits that the poller cannot
        announce (docs/tls.md, "Why not ssl.SSLSocket")."""
        if not sock.closed and self.user_read and self.available():
            sock.loop._push_back[sock.fd] = sock

    # -- reading ------------------------------------------------------------------------

    def read(self, sock: Socket, n: int) -> bytes | None:
        """Up to *n* bytes of plaintext (see Socket.read for the return values)."""
        stash = self.stash
        pos = self.stash_pos
        if pos < len(stash):
            if pos == 0 and n >= len(stash):
                self.stash = b""
                data = stash
            else:
                data = stash[pos:pos + n]
                pos += len(data)
                if pos >= len(stash):
                    self.stash = b""
                    pos = 0
                self.stash_pos = pos
            if len(data) < n and not self.eof:
                data = self._top_up(sock, data, n)
            sock._pb_size -= len(data)
            return data
        if self.eof:
            return None
        if not self.established:
            return b""
        n = min(n, MAX_READ)
        fed = False
        self.tail = False
        while True:
            try:
                data = self._obj_read(n)
                self.more = len(data) == n
                if data and len(data) < n:
                    data = self._top_up(sock, data, n)
                break
            except ssl.SSLWantReadError:
                self.starved = True
                self._flush(sock)
                if fed or sock.closed or not self._feed(sock):
                    if self.want_read and not sock.closed:
                        self._retry_writes(sock)
                    return b"" if not sock.closed else None
                fed = True
            except ssl.SSLZeroReturnError:
                data = b""
                break
            except (ssl.SSLEOFError, ssl.SSLSyscallError):
                self._truncated(sock)
                return None
            except ssl.SSLError as exc:
                self._fail(sock, exc)
                return None
        if self.outgoing.pending:
            self._flush(sock)
        if not data:
            self.eof = True
            return None
        sock._pb_size -= len(data)
        if fed:
            if self.want_read:
                self._retry_writes(sock)
            self.after_event(sock)
        return data

    def _obj_read(self, n: int) -> bytes:
        # SSLObject.read, after the error a gathering read stopped at (see _top_up).
        exc = self.failure
        if exc is not None:
            self.failure = None
            raise exc
        return self.obj.read(n)

    def _top_up(self, sock: Socket, data: bytes, n: int) -> bytes:
        """*data* and the records after it that the incoming BIO already holds, up to *n*
        bytes in all, with no system call. ``SSLObject.read`` gives one record (16 KiB
        at most) per call: without this a reader asking for 64 KiB would need four
        events, and an echo four writes (four ``send`` calls) per 64 KiB message."""
        parts = [data]
        got = len(data)
        read = self.obj.read
        while got < n:
            try:
                more = read(n - got)
            except ssl.SSLWantReadError:
                self.starved = True  # no whole record left: the poller says when
                break
            except ssl.SSLError as exc:
                # Handled by the next read(), after this data is delivered: OpenSSL does
                # not repeat it (a bad record would be taken for truncation).
                self.failure = exc
                self.tail = True
                break
            if not more:  # close_notify: the next read() gets b"" again, and EOF
                self.tail = True
                break
            parts.append(more)
            got += len(more)
        self.more = got == n
        if self.outgoing.pending:
            self._flush(sock)  # a KeyUpdate answer, a ticket acknowledgement
        return data if len(parts) == 1 else b"".join(parts)

    # -- the handshake ------------------------------------------------------------------

    def _handshake(self, sock: Socket) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self.starved = True  # what the BIO holds is not a whole record yet
            self._flush(sock)
            return False
        except (ssl.SSLError, ssl.CertificateError) as exc:
            # The alert that tells the peer why is sent by the close, after on_tls_error:
            # sent first, a peer that has left would turn the failure into "EPIPE".
            self._fail(sock, exc)
            return False
        self._flush(sock)
        if sock.closed:
            return False
        self.established = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._update_watch(sock)
        self._release(sock)  # what was written during the handshake goes first
        if sock._tls is not self:  # closed meanwhile (close() drops the engine)
            return False
        sock.on_tls_handshake()
        return sock._tls is self

    def timed_out(self, sock: Socket) -> None:
        self.timer = None
        if not self.established and sock._tls is self and not sock.closed:
            sock.close("tls_handshake_timeout")

    # -- writing ------------------------------------------------------------------------

    def write(self, sock: Socket, data: Any) -> bool:
        """Encrypt and queue *data* (or hold it); see Socket.write."""
        cls = data.__class__
        if cls is not bytes:
            if cls is not bytearray and cls is not memoryview and callable(data):
                if self.held is not None:
                    self.held.append(data)
                    return False
                return Socket.write(sock, data)
            data = _plain_bytes(data)
        if self.held is not None:
            if data:
                self.held.append(bytes(data))
            return False
        sent = self._seal(sock, data)
        if sent is None:  # renegotiation: this write, and all after it, wait for a read
            self.held = deque([bytes(data)])
            return False
        return sent

    def _seal(self, sock: Socket, data: Any) -> bool | None:
        """Encrypt *data* into the write queue: write()'s result, or None when the
        engine wants to read first (the same data must then be written again)."""
        try:
            self.obj.write(data)
        except ssl.SSLWantReadError:
            self._flush(sock)
            self.want_read = True
            self._update_watch(sock)
            return None
        except ssl.SSLError as exc:
            self._fail(sock, exc)
            return False
        return Socket.write(sock, self.outgoing.read())

    def _retry_writes(self, sock: Socket) -> None:
        self.want_read = False
        self._update_watch(sock)
        self._release(sock)

    def _release(self, sock: Socket) -> None:
        """Encrypt what was held, in order, until something holds writes again."""
        held = self.held
        if held is None:
            return
        while held and self.established and not self.want_read and self.pump is None:
            if sock.closed:
                return
            item = held.popleft()
            if item.__class__ is bytes:
                if self._seal(sock, item) is None:
                    held.appendleft(item)
                    return
            elif item.__class__ is _FilePump:
                self._start_pump(sock, item)
            else:
                try:
                    Socket.write(sock, item)
                except Exception as exc:
                    # Reported as a failed callback (the default handler closes the
                    # object); raised from here it would leave the writes after it, and
                    # every later one, held for ever.
                    sock.loop._callback_failed(exc, sock, item, "a write() callable")
        if (not held and self.held is held and self.established and not self.want_read
                and self.pump is None):
            self.held = None

    # -- files --------------------------------------------------------------------------

    def write_file(self, sock: Socket, fd: int, offset: int, count: int, file: Any) -> bool:
        """write_file() on a TLS object: read, encrypt and queue, a chunk at a time."""
        pump = _FilePump(fd, offset, count, file if file is not fd else None)
        if self.held is not None:
            self.held.append(pump)
            return False
        self.held = deque()
        return self._start_pump(sock, pump)

    def _start_pump(self, sock: Socket, pump: _FilePump) -> bool:
        self.pump = pump
        pump.step = partial(self._pump, sock)
        return self._pump(sock)

    def _pump(self, sock: Socket) -> bool:
        # Encrypt chunks until the kernel stops taking them; then wait for the queue to
        # drain (the step is a callable queued behind the ciphertext).
        pump = self.pump
        while pump is not None and not sock.closed and sock._tls is self:
            try:
                data = os.pread(pump.fd, min(pump.left, FILE_CHUNK), pump.offset)
            except OSError as exc:
                logger.debug("%s: write_file read failed: %s", sock.as_string(), exc)
                sock.close("file_read_error")
                return False
            if not data:
                sock.close("file_truncated")
                return False
            pump.offset += len(data)
            pump.left -= len(data)
            try:
                self.obj.write(data)
            except ssl.SSLError as exc:
                self._fail(sock, exc)
                return False
            sent = Socket.write(sock, self.outgoing.read())
            if not pump.left:
                self.pump = None
                pump.file = None
                self._release(sock)
                return sent and self.held is None and not sock.write_buf_size
            if not sent:
                assert pump.step is not None
                Socket.write(sock, pump.step)
                return False
        return False

    # -- watches ------------------------------------------------------------------------

    def _update_watch(self, sock: Socket) -> None:
        # The kernel's READ watch: the object's own wish, or the engine's need.
        if sock.connecting or sock.closed:
            return  # applied once connected (after_connect)
        Socket.watch_read(sock, self.user_read or not self.established or self.want_read)

    def after_connect(self, sock: Socket) -> None:
        """The connect made by danga.connect() completed: read for the handshake."""
        self._update_watch(sock)

    # -- failures and closing -----------------------------------------------------------

    def _truncated(self, sock: Socket) -> None:
        if not self.established:
            self._fail(sock, ssl.SSLEOFError("EOF in the handshake"))
            return
        sock.close("tls_truncated")

    def _fail(self, sock: Socket, exc: BaseException) -> None:
        if sock.closed or self.failed:
            return  # (a write in on_tls_error fails too: reported once, not recursively)
        self.failed = True
        self.established = False  # no close_notify on a failed session
        self.held = None
        try:
            sock.on_tls_error(exc)  # type: ignore[arg-type]
        finally:  # also when the override raises: the session is unusable
            if not sock.closed:
                sock.close(error_reason(exc))

    def close(self, sock: Socket, reason: str | None) -> None:
        """Close *sock*: close_notify once, after what is queued, within the shutdown
        timeout; nothing when writes would be dropped (the peer then sees truncation,
        which is the truth)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.established and not self.held and self.pump is None:
            try:
                self.obj.unwrap()
            except (ssl.SSLError, ValueError, OSError):
                pass  # wants the peer's reply (never waited for), or the peer is gone
        # close_notify, or the alert of a failure (_fail left it here).
        notify = self.outgoing.read() if self.outgoing.pending else b""
        self.held = None
        self.pump = None
        # Through the write queue (a writer function still applies); usually one send.
        # (A closed loop takes no stand-in: the queue is dropped, as close() drops it.)
        if (not notify or Socket.write(sock, notify) or sock.closed
                or sock.loop.closed):
            if not sock.closed:
                Socket.close(sock, reason)
            sock.close_reason = reason  # also when sending close_notify failed
            return
        # The queue (close_notify last) is not all out: a stand-in finishes sending it,
        # if the fd is still the object's (never one closed behind danga's back, or its
        # number now another file's: that is not danga's to write to, or to close).
        ident = fd_identity(sock.fd)
        if ident is None or (sock._ident and ident != sock._ident):
            sock._lost_fd()
            sock.close_reason = reason
            return
        queue = [item for item in (sock._wbuf or ()) if not callable(item)]
        loop = sock.loop
        raw = Socket.steal_socket(sock)
        sock.close_reason = reason
        if raw is not None:
            _Linger(raw, loop, queue, self.shutdown_timeout)


def _plain_bytes(data: Any) -> Any:
    """*data* as bytes or a byte memoryview SSLObject.write takes."""
    if isinstance(data, str):
        raise TypeError("write(): danga takes bytes, not str; encode the text first, "
                        "e.g. write(text.encode('utf-8'))")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"write() takes bytes-like data, a callable or None, not "
                        f"{type(data).__name__}") from None
    if view.readonly and view.c_contiguous and view.format == "B" and view.ndim == 1:
        return view
    return view.tobytes()


class _Linger(Socket):
    """Finishes sending what a closed TLS object had queued, and its close_notify,
    within the shutdown timeout; reads (and drops) whatever the peer still sends."""

    __slots__ = ("_timer",)

    def __init__(self, sock: Any, loop: Any, queue: list[Any], timeout: float) -> None:
        super().__init__(sock, loop=loop)
        loop._owned.add(self)  # loop.close() and reset() close it (nobody else can)
        self._timer = loop.add_timer(timeout, self.close, "tls_shutdown_timeout")
        for item in queue:
            self.write(item)
        if not self.closed:
            self.watch_read(True)
            self.write(self._sent)

    def _sent(self) -> None:
        self.close("tls_shutdown")

    def event_read(self) -> None:
        if self.read(RAW_READ) is None:
            self.close("tls_shutdown")

    def close(self, reason: str | None = None) -> None:
        self._timer.cancel()
        self.loop._owned.discard(self)
        super().close(reason)


class _TLSSocket(Socket):
    """The TLS versions of Socket's methods, below the object's own class."""

    __slots__ = ()

    def read(self, n: int) -> bytes | None:
        engine = self._tls
        pb = self._pb
        if (engine is None or n.__class__ is not int or n <= 0 or self.closed
                or (pb is not None and len(pb))):
            return Socket.read(self, n)
        return engine.read(self, n)

    def write(self, data: Any = None) -> bool:
        engine = self._tls
        if engine is None or data is None or self.closed:
            return Socket.write(self, data)
        return engine.write(self, data)

    def watch_read(self, on: bool = True) -> None:
        engine = self._tls
        if engine is None or self.closed:
            Socket.watch_read(self, on)
            return
        engine.user_read = bool(on)
        engine._update_watch(self)
        if on:
            engine.after_event(self)

    def close(self, reason: str | None = None) -> None:
        engine = self._tls
        if engine is None or self.closed:
            Socket.close(self, reason)
            return
        self._tls = None
        try:
            engine.close(self, reason)
        finally:
            if not self.closed:
                Socket.close(self, reason)
            _restore_class(self)

    def steal_socket(self) -> Any:
        """Take the raw socket away: the TLS session ends with the object (what the
        peer sent and what was queued is lost; ``tls`` is None)."""
        engine = self._tls
        if engine is not None:
            self._tls = None
            if engine.timer is not None:
                engine.timer.cancel()
        raw = Socket.steal_socket(self)
        _restore_class(self)
        return raw


def _restore_class(sock: Socket) -> None:
    cls = type(sock)
    own = _OWN.get(cls)
    if own is not None:
        sock.__class__ = own


_CLASSES: dict[type[Socket], type[Socket]] = {}
_OWN: dict[type[Socket], type[Socket]] = {}


def _tls_class(cls: type[Socket]) -> type[Socket]:
    """The private subclass of *cls* a TLS object has (made once per class)."""
    sub = _CLASSES.get(cls)
    if sub is not None:
        return sub

    def event_read(self: Any) -> None:
        engine = self._tls
        if engine is None:
            cls.event_read(self)
            return
        try:
            if engine.readable(self) and engine.user_read and not self.closed:
                cls.event_read(self)  # the object's own, looked up now (it may be replaced)
        finally:
            # Also after an exception: plaintext already decrypted is invisible to the
            # poller, and would wait for the peer's next record.
            if self._tls is engine:
                engine.after_event(self)

    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "event_read": event_read,
    }
    try:
        # (Socket itself cannot come before its own subclass _TLSSocket.)
        bases = (_TLSSocket,) if cls is Socket else (cls, _TLSSocket)
        sub = type(cls.__name__, bases, namespace)
    except TypeError as exc:
        raise TypeError(f"start_tls(): cannot add TLS to {cls.__qualname__}: {exc}") from exc
    _CLASSES[cls] = sub
    _OWN[sub] = cls
    return sub


def _check_timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"start_tls(): {name} must be seconds (a number), not "
                        f"{type(value).__name__}")
    if not value > 0:
        raise ValueError(f"start_tls(): {name} must be > 0 seconds, not {value!r}")
    return float(value)


def check_context(context: Any, call: str) -> None:
    """Raises TypeError unless *context* is an ``ssl.SSLContext``."""
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"{call} takes an ssl.SSLContext (e.g. ssl.create_default_context()"
                        f"), not {type(context).__name__}")


def _refuse_renegotiation(context: ssl.SSLContext) -> None:
    # Once per context, so that an application that clears the option keeps it cleared.
    global _CONTEXTS_SEEN
    import weakref

    if _CONTEXTS_SEEN is None:
        _CONTEXTS_SEEN = weakref.WeakSet()
    if context in _CONTEXTS_SEEN:
        return
    _CONTEXTS_SEEN.add(context)
    option = getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if option:
        context.options |= option


def start_tls(sock: Socket, context: Any, *, server_side: Any, server_hostname: Any,
              handshake_timeout: Any, shutdown_timeout: Any,
              discard_buffered: bool) -> None:
    """Socket.start_tls (see its docstring for what is raised)."""
    check_context(context, "start_tls(context)")
    if not isinstance(server_side, bool):
        raise TypeError(f"start_tls(): server_side must be True or False, not "
                        f"{type(server_side).__name__}")
    if server_hostname is not None and not isinstance(server_hostname, str):
        raise TypeError(f"start_tls(): server_hostname must be a str or None, not "
                        f"{type(server_hostname).__name__}")
    handshake = _check_timeout("handshake_timeout", handshake_timeout)
    shutdown = _check_timeout("shutdown_timeout", shutdown_timeout)
    if sock.closed:
        raise ValueError(f"start_tls() on a closed object ({sock.as_string()})")
    if sock._tls is not None:
        raise ValueError(f"start_tls(): TLS was already started on {sock.as_string()}")
    import socket as _socket

    if not isinstance(sock.sock, _socket.socket):
        raise ValueError(f"start_tls() needs a socket, and {sock.as_string()} has a "
                         f"{type(sock.sock).__name__}")
    if sock._pb:
        if not discard_buffered:
            raise ValueError(
                "start_tls(): plaintext read before the TLS handshake was pushed back and "
                "is still unread; it would be taken as if it came over TLS "
                "(a STARTTLS injection). Read it first, or pass discard_buffered=True "
                "to drop it")
        sock._pb.clear()
        sock._pb_size = 0
    if server_side:
        _refuse_renegotiation(context)
    elif context.check_hostname and not server_hostname:
        # (SSLObject does not check this itself: the host name would go unverified.)
        raise ValueError("start_tls(): the context checks host names "
                         "(check_hostname=True) and no server_hostname was given")
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    try:
        obj = context.wrap_bio(incoming, outgoing, server_side=server_side,
                               server_hostname=None if server_side else server_hostname)
    except ValueError as exc:
        raise ValueError(f"start_tls(): {exc} (pass server_hostname=...)") from exc
    engine = TLSEngine(obj, incoming, outgoing, shutdown)
    if sock._conn is not None:
        sock._connect_reclass(_tls_class)
        engine.user_read = sock._connect_wants_read()
    else:
        sock.__class__ = _tls_class(type(sock))
        engine.user_read = bool(sock._event_watch & READ)
    sock._tls = engine
    sock._pb = _PushBack(engine)
    engine.timer = sock.loop.add_timer(handshake, engine.timed_out, sock)
    engine._update_watch(sock)
    if not server_side:
        engine._handshake(sock)  # the ClientHello
