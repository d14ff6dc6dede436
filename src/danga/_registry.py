"""The registry: the one owner of fd state, and the only caller of the backend.

For every fd danga watches there is one record: the :class:`~danga.Socket` that owns it
(a Socket *is* its own record, so the hot path needs one dict lookup, not two), or a
:class:`Foreign` record for a callback of ``loop.other_fds``. A record has the wanted
mask (``_event_watch``), the generation of its registration (``_gen``), the identity of
the file it was registered for (``_ident``), ``fd`` and ``closed``. The registry adds
what the kernel has (``kernel``: fd -> mask), which records wait for a change to reach
the kernel (``dirty``), and which fds were removed in the current batch (``removed``).

Shared names. Modules talk through documented methods, except for these names, shared
for speed (or because one job spans two modules) and listed here only:

- Socket slots that the registry and ``Loop``'s dispatch read or write: ``_event_watch``,
  ``_gen``, ``_ident``, ``closed``, ``fd``, ``_pb`` and ``_pb_size`` (push-back re-fire),
  and the method ``_lost_fd()`` (close without ever closing the fd number again).
- ``Loop._registry`` (this object): a Socket marks itself changed with
  ``loop._registry.dirty[fd] = self`` (batched interest changes).
- ``Loop`` methods a Socket calls about itself: ``_check_open()``, ``_register()``,
  ``_detach()``, ``_set_plc()``, and ``_push_back[fd] = self``; ``Listener`` reports a
  failed ``on_accept`` through ``Loop._callback_failed()``.
- ``Loop._stamp_now``, which ``Socket.set_idle_timeout`` sets so that the loop keeps
  ``loop.now`` up to date (a clock read per iteration only where idle timeouts exist).
- ``TimerHeap._heap`` and ``_due``, which ``Loop`` reads to skip the timers when none
  is scheduled (two attribute reads instead of a call per iteration).
- TLS (``tls.py``), one job spanning the Socket and its engine: the engine reads and
  writes a Socket's ``_tls``, ``_pb`` / ``_pb_size`` (its plaintext joins the push-back
  re-fire), ``_wbuf`` (ciphertext goes into the ordinary write queue), ``_event_watch``,
  ``_ident`` and ``_lost_fd()`` (a close's stand-in never takes a lost fd) and
  ``_raw_read()``, ``Loop._push_back``, ``Loop._callback_failed()`` (a held write
  callable that raises) and ``Loop._owned`` (the stand-in that finishes a TLS close
  joins it: the loop's ``close()``/``reset()`` close it), and
  ``connect.py``'s ``Connecting`` names
  ``_conn``, ``_connect_reclass`` and ``_connect_wants_read`` (TLS started while a
  connect is in flight).

Generations (docs/internals.md#fd-reuse-in-a-batch): ``gen`` is incremented
right before every poll. A record registered after a poll began has ``_gen >= `` that
poll's generation and never receives its events, even when the number was reused in a
nested ``run_once()``; an fd removed at or after a poll's generation may still be in
that poll's list, and such an event is dropped. An fd removed *before* a poll began and
reported by it is a registration the kernel cannot remove (epoll after dup-then-close):
only a fresh poller forgets it.

Interrupted changes (docs/internals.md#interrupted-interest-flush): a signal
handler may raise (KeyboardInterrupt) between any two bytecodes of :meth:`flush`. The
popped record is put back, and an fd whose change may or may not have reached the kernel
is marked ``UNKNOWN``; the next flush removes whatever the kernel has for it and adds it
again, so no change is ever lost.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .poller import (
    ERR,
    HUP,
    READ,
    WRITE,
    FdOutOfRange,
    capabilities,
    check_pollable,
    fd_identity,
)

if TYPE_CHECKING:
    from .poller import Poller
    from .socket import Socket

__all__ = ["GRAVEYARD", "UNKNOWN", "Foreign", "OtherFds", "Registry", "as_fd", "disown"]

logger = logging.getLogger("danga")

#: The kernel mask of an fd whose last change was interrupted: nobody knows it.
UNKNOWN = -1
_ALL = READ | WRITE | ERR | HUP
# errnos of a refused change that mean "the file registered under this number is gone".
_GONE = (errno.EBADF, errno.ENOENT)

OtherFdCallback = Callable[[int], Any]

#: Objects that must never be closed or finalised in this process: pollers inherited
#: through fork, and objects whose fd number was closed behind danga's back (their
#: finaliser would close whoever reused the number).
GRAVEYARD: list[Any] = []


def disown(raw: Any) -> None:
    """Keep *raw* alive for ever, so its finaliser never closes an fd number that is no
    longer its own (an fd closed behind danga's back)."""
    GRAVEYARD.append(raw)


def as_fd(fd: object, call: str) -> int:
    """*fd* as a non-negative int (an int, or an object with ``fileno()``).

    Raises:
        TypeError: neither an int nor something with ``fileno()``.
        ValueError: negative (a closed object's ``fileno()`` says -1).
    """
    if isinstance(fd, bool) or not isinstance(fd, int):
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(f"{call} takes an fd (an int, or an object with fileno()), "
                            f"not {type(fd).__name__}")
        fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{call}: invalid fd {fd!r}; it must be a non-negative int "
                         "(is the object closed?)")
    return fd


class Foreign:
    """The record of an fd that no Socket owns: a ``loop.other_fds`` callback."""

    __slots__ = ("_event_watch", "_gen", "_ident", "callback", "closed", "fd")

    def __init__(self, fd: int, callback: OtherFdCallback) -> None:
        self.fd = fd
        self.callback = callback
        self.closed = False
        self._event_watch = READ
        self._gen = 0
        self._ident = 0


class Registry:
    """fd state for one loop; see the module documentation."""

    __slots__ = (
        "backend",
        "binds_files",
        "caps_max_fd",
        "closed",
        "descriptor_map",
        "dirty",
        "floor",
        "foreign",
        "forked",
        "gen",
        "kernel",
        "on_lost",
        "other_fds",
        "poller_cls",
        "removed",
        "track_idents",
        "waker_fd",
    )

    def __init__(self, poller_cls: type[Poller],
                 on_lost: Callable[[Any, str, bool], None]) -> None:
        """Raises OSError: the poller cannot be created (out of fds)."""
        self.poller_cls = poller_cls
        self.backend: Poller = poller_cls()
        self._capabilities(poller_cls)
        self.forked = False
        #: fd -> Socket, live (the public ``loop.descriptor_map``).
        self.descriptor_map: dict[int, Socket] = {}
        #: fd -> Foreign record (``loop.other_fds`` is a mapping view over it).
        self.foreign: dict[int, Foreign] = {}
        self.other_fds = OtherFds(self)
        self.kernel: dict[int, int] = {}
        self.dirty: dict[int, Any] = {}
        self.removed: dict[int, int] = {}
        self.gen = 0
        self.floor = 0  # events of polls before this generation are stale (reset, rebuild)
        self.closed = False  # the loop is closed: nothing may be added
        self.waker_fd = -1
        # on_lost(socket, why, gone): the loop closes it; gone: its fd number is not its
        # file any more, so it must never be closed again.
        self.on_lost = on_lost

    # -- registration ------------------------------------------------------------------

    def _capabilities(self, poller_cls: type[Poller]) -> None:
        caps = capabilities(poller_cls)
        self.caps_max_fd = caps.max_fd
        # Where the kernel binds registrations to open files (epoll), a change of an
        # existing registration for a number that now names another file fails by
        # itself (ENOENT): no identity check is needed for it. A first registration
        # (and a redone interrupted one) is checked on every backend.
        self.binds_files = caps.binds_open_files

    def validate(self, fd: int, call: str) -> int:
        """Check *fd* can be watched here; returns its identity.

        Raises:
            FdOutOfRange: above the backend's ``max_fd``.
            OSError: EBADF (not open).
            UnsupportedFileType: a regular file or directory.
        """
        limit = self.caps_max_fd
        if limit is not None and fd >= limit:
            raise FdOutOfRange(
                f"{call}: fd {fd} is out of range for the {self.backend.name} backend "
                f"(it watches fds below {limit}); use the poll or epoll backend "
                "(DANGA_BACKEND=poll) for more fds")
        return check_pollable(fd)

    def add(self, obj: Socket, ident: int) -> None:
        """Put a validated Socket in the map; its interest reaches the kernel at the
        next flush (one system call for registration and first interest)."""
        fd = obj.fd
        obj._gen = self.gen
        obj._ident = ident
        self.removed.pop(fd, None)
        self.descriptor_map[fd] = obj
        self.dirty[fd] = obj

    def add_foreign(self, fd: int, callback: OtherFdCallback) -> None:
        """Watch *fd* for READ on behalf of *callback* (replacing an earlier one).

        Raises:
            OSError, UnsupportedFileType, FdOutOfRange: as :meth:`validate`.
        """
        if self.closed:
            raise RuntimeError("loop.other_fds: this danga.Loop is closed; create a new one "
                               "with danga.Loop() (or call reset() to reopen it)")
        old = self.foreign.get(fd)
        if old is not None:
            old.callback = callback
            return
        rec = Foreign(fd, callback)
        rec._ident = self.validate(fd, "loop.other_fds")
        rec._gen = self.gen
        self.foreign[fd] = rec
        self.dirty[fd] = rec

    def remove_foreign(self, fd: int) -> Foreign:
        """Stop watching *fd* for its callback (never closing it).

        Raises:
            KeyError: no callback is registered for *fd*.
        """
        rec = self.foreign[fd]
        self._drop_foreign(rec)
        return rec

    def _drop_foreign(self, rec: Foreign) -> None:
        # Forget an other_fds record and its kernel registration (a live Socket on the
        # same number keeps its own); the fd was never danga's to close.
        fd = rec.fd
        if self.foreign.get(fd) is rec:
            del self.foreign[fd]
            if not self._owned(fd):
                self._unwatch(fd)
        rec.closed = True

    def detach(self, obj: Socket, *, forget: bool) -> None:
        """Remove *obj*'s kernel registration now (before its fd can be closed). With
        *forget* it also leaves the descriptor map now (steal_socket); otherwise it stays
        until the loop really closes it."""
        fd = obj.fd
        dmap = self.descriptor_map
        if dmap.get(fd) is not obj:
            return
        if forget:
            del dmap[fd]
        self.dirty.pop(fd, None)
        if fd in self.foreign:  # an other-fd callback for the same number resumes
            self.dirty[fd] = self.foreign[fd]
        else:
            self._unwatch(fd)

    def _owned(self, fd: int) -> bool:
        obj = self.descriptor_map.get(fd)
        return obj is not None and not obj.closed

    def _unwatch(self, fd: int) -> None:
        have = self.kernel.pop(fd, 0)
        self.removed[fd] = self.gen
        if not have or self.forked:  # forked: never touch the parent's poller
            return
        try:
            self._remove(fd, have)
        except (OSError, RuntimeError) as exc:
            logger.debug("danga: unregistering fd %d failed: %s", fd, exc)

    def _remove(self, fd: int, have: int) -> None:
        # UNKNOWN: an interrupted change; whatever the kernel has goes (a removal of
        # nothing is harmless on every built-in backend; a plugin may raise, ignored).
        if have == UNKNOWN:
            try:
                self.backend.modify(fd, _ALL, 0)
            except (OSError, KeyError, ValueError):
                pass
            return
        self.backend.modify(fd, have, 0)

    # -- the waker's registration (the loop's own fd, invisible to users) ---------------

    def watch_waker(self, fd: int) -> None:
        """Register the loop's self-pipe for READ at once (it is never batched).

        Raises:
            OSError: the backend refuses it.
        """
        if not self.forked:  # else the rebuild registers it
            self.backend.modify(fd, 0, READ)
        self.waker_fd = fd

    def unwatch_waker(self) -> None:
        fd, self.waker_fd = self.waker_fd, -1
        if fd >= 0 and not self.forked:
            try:
                self.backend.modify(fd, READ, 0)
            except (OSError, RuntimeError):
                pass

    # -- applying changes --------------------------------------------------------------

    def flush(self) -> None:
        """Apply every pending interest change (called right before each poll).

        A record leaves ``dirty`` only after its change was applied (and only if it was
        not marked again meanwhile), so a KeyboardInterrupt anywhere in here loses no
        change: the next flush finishes the work."""
        dirty = self.dirty
        while dirty:
            for fd in list(dirty):
                rec = dirty.get(fd)
                if rec is None:
                    continue
                self._apply(fd)
                if dirty.get(fd) is rec:
                    del dirty[fd]

    def _apply(self, fd: int) -> None:
        kernel = self.kernel
        owner: Any = self.descriptor_map.get(fd)
        if owner is None or owner.closed:
            owner = self.foreign.get(fd)
            if owner is None:
                return  # closed, stolen or forgotten: detach removed it
        want = owner._event_watch
        have = kernel.get(fd, 0)
        if want == have:
            return
        # The kernel is about to watch more of this number (a first registration, an
        # interrupted change redone, or more interest where the kernel would not notice
        # a reused number itself): is it still the owner's file? A number closed behind
        # danga's back and reused must never be registered for it.
        more = have == UNKNOWN or (want & ~have and not (have and self.binds_files))
        if more and owner._ident and fd_identity(fd) != owner._ident:
            self._lost(owner, "its fd number now names another file")
            return
        kernel[fd] = UNKNOWN  # in flight: if interrupted, nobody knows
        if have == UNKNOWN:
            self._remove(fd, UNKNOWN)
            have = 0
        try:
            self.backend.modify(fd, have, want)
        except Exception as exc:  # OSError; a plugin's FdOutOfRange (ValueError)
            self._refused(owner, have, exc)
            return
        kernel[fd] = want

    def _refused(self, owner: Any, have: int, exc: Exception) -> None:
        fd = owner.fd
        if have:  # Poller API v2: a refused change leaves the kernel as it was
            self.kernel[fd] = have
        else:
            self.kernel.pop(fd, None)
        code = getattr(exc, "errno", None)
        if code in _GONE or (owner._ident and fd_identity(fd) != owner._ident):
            self._lost(owner, f"the kernel says {getattr(exc, 'strerror', None) or exc}")
            return
        if isinstance(owner, Foreign):
            self._drop_foreign(owner)
            logger.error("danga: cannot watch other_fds fd %d (%s); its callback is "
                         "removed (the fd is not closed)", fd, exc)
            return
        logger.error("danga: cannot change the watch of fd %d: %s", fd, exc)
        self.on_lost(owner, f"watch failed: {exc}", False)

    def _lost(self, owner: Any, why: str) -> None:
        # The number is not this owner's file any more: drop the kernel's entry for it
        # if any (it is the stranger's now, or nothing) without ever closing the fd.
        fd = owner.fd
        if self.kernel.get(fd) and (self.descriptor_map.get(fd) is owner
                                    or self.foreign.get(fd) is owner):
            self._unwatch(fd)
        if isinstance(owner, Foreign):
            self._drop_foreign(owner)
            logger.warning("danga: other_fds fd %d was closed behind danga's back (%s); "
                           "its callback is removed", fd, why)
            return
        self.on_lost(owner, f"fd closed behind danga's back ({why})", True)

    def check_alive(self, owner: Any) -> bool:
        """On ERR: is the owner's file still open under its number? If not, it is lost
        (poll's POLLNVAL and select's EBADF would report it for ever otherwise)."""
        ident = fd_identity(owner.fd)
        if ident is not None and (not owner._ident or ident == owner._ident):
            return True
        self._lost(owner, "it is no longer open" if ident is None else
                   "its number now names another file")
        return False

    # -- events for fds no Socket owns --------------------------------------------------

    def unowned(self, fd: int, batch: int) -> Foreign | None:
        """The Foreign record an event of poll generation *batch* for *fd* goes to, or
        None (a stale event: dropped, and a registration the kernel keeps reporting
        after its removal gets the poller rebuilt)."""
        rec = self.foreign.get(fd)
        if rec is not None:
            return None if rec._gen >= batch else rec
        if batch < self.floor:
            return None  # polled before a reset or a rebuild: nothing it names is known
        removed = self.removed.get(fd)
        if removed is not None and removed >= batch:
            return None  # removed after this poll began: its events are stale
        have = self.kernel.get(fd, 0)
        if have:  # watched with no owner (cannot happen; repaired anyway)
            logger.debug("danga: fd %d is watched but nothing owns it; removing it", fd)
            self._unwatch(fd)
            return None
        self.rebuild(f"fd {fd} kept reporting events after its registration was removed "
                     "(docs/internals.md#dup-then-close)")
        return None

    # -- the poller's life -------------------------------------------------------------

    def rebuild(self, why: str) -> None:
        """Register everything again with a fresh poller of the same class.

        The old poller is closed, or, after fork, parked for ever (see :func:`park`).

        Raises:
            OSError: the fresh poller cannot be created (out of fds).
        """
        old = self.backend
        self.backend = self.poller_cls()
        self._discard(old)
        self.removed.clear()
        self.floor = self.gen + 1
        logger.info("danga: rebuilt the %s poller: %s", self.backend.name, why)
        backend = self.backend
        if self.waker_fd >= 0:
            backend.modify(self.waker_fd, 0, READ)
        for fd, mask in list(self.kernel.items()):
            if mask == UNKNOWN:
                mask = self._wanted(fd)
            if not mask:
                del self.kernel[fd]
                continue
            owner = self.descriptor_map.get(fd) or self.foreign.get(fd)
            if owner is not None and owner._ident and fd_identity(fd) != owner._ident:
                del self.kernel[fd]  # never register a stranger's file for the owner
                if not owner.closed:
                    self._lost(owner, "its fd number now names another file")
                continue
            try:
                backend.modify(fd, 0, mask)
            except OSError as exc:
                del self.kernel[fd]
                owner = self.descriptor_map.get(fd) or self.foreign.get(fd)
                if owner is not None and not owner.closed:
                    self._lost(owner, f"cannot be registered again: {exc}")
            else:
                self.kernel[fd] = mask

    def _wanted(self, fd: int) -> int:
        obj = self.descriptor_map.get(fd)
        if obj is not None and not obj.closed:
            return obj._event_watch
        return READ if fd in self.foreign else 0

    def _discard(self, old: Poller) -> None:
        if self.forked:
            self.forked = False  # park() already keeps it: never closed in this process
            return
        old.close()

    def close(self) -> None:
        """Close the poller (Loop.close); after fork it stays parked instead."""
        self.closed = True
        self._discard(self.backend)

    def reset(self, poller_cls: type[Poller]) -> None:
        """Forget everything and start over with a fresh *poller_cls* (Loop.reset).

        Raises:
            OSError: the fresh poller cannot be created.
        """
        backend = poller_cls()
        self.descriptor_map.clear()
        for rec in self.foreign.values():
            rec.closed = True
        self.foreign.clear()
        self.kernel.clear()
        self.dirty.clear()
        self.removed.clear()
        self.floor = self.gen + 1
        old, self.backend = self.backend, backend
        self.poller_cls = poller_cls
        self._capabilities(poller_cls)
        was_closed, self.closed = self.closed, False
        self.waker_fd = -1
        if not was_closed:
            self._discard(old)

    def park(self) -> None:
        """In a forked child: keep the inherited poller object alive for ever, so it is
        never closed or finalised here (a kqueue object finalised in a child closes
        whatever file has reused its number: CPython gh-110395; an epoll set is the
        parent's). The next poll, change or removal first builds a fresh poller."""
        GRAVEYARD.append(self.backend)
        self.forked = True


class OtherFds(MutableMapping[int, OtherFdCallback]):
    """The live map ``fd -> callback(mask)`` of fds that no Socket owns.

    A real mapping over the loop's registry: every way of changing it (``m[fd] = cb``,
    ``del``, ``pop``, ``update``, ``|=``, ``clear``, ...) registers or unregisters the fd.
    Each fd is watched for READ; danga never closes these fds. A callback is called with
    the event mask (READ, and ERR/HUP where the backend reports them).

    Raises (on adding):
        TypeError: the key is not an fd or the callback is not callable.
        ValueError: a negative fd.
        OSError: the fd is not open (EBADF), or UnsupportedFileType, FdOutOfRange.
    """

    __slots__ = ("_reg",)

    def __init__(self, registry: Registry) -> None:
        self._reg = registry

    def __getitem__(self, fd: int) -> OtherFdCallback:
        return self._reg.foreign[fd].callback

    def __setitem__(self, fd: int, callback: OtherFdCallback) -> None:
        fd = as_fd(fd, "loop.other_fds[fd] = callback")
        if not callable(callback):
            raise TypeError(f"loop.other_fds[{fd}] = callback: the callback must be "
                            f"callable, not {type(callback).__name__}")
        self._reg.add_foreign(fd, callback)

    def __delitem__(self, fd: int) -> None:
        self._reg.remove_foreign(fd)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._reg.foreign))

    def __len__(self) -> int:
        return len(self._reg.foreign)

    def __contains__(self, fd: object) -> bool:
        return fd in self._reg.foreign

    def __ior__(self, other: Any) -> OtherFds:
        self.update(other)
        return self

    def __or__(self, other: Any) -> dict[int, OtherFdCallback]:
        merged = dict(self)
        merged.update(other)
        return merged

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (dict, OtherFds)):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OtherFds({dict(self.items())!r})"
