"""A kqueue EMULATION for Linux, used only by the tests.

kqueue does not exist on Linux, so the tests run the real translation in
``danga.backends.kqueue.KqueuePoller`` over this module instead of ``select``: it
provides ``kqueue()``, ``kevent(...)`` and the ``KQ_*`` constants with kqueue's
semantics, implemented over ``select.poll``:

- interest is a set of (ident, filter) knotes; EVFILT_READ and EVFILT_WRITE are
  separate, and an fd ready both ways comes back as **two** kevents. The returned list
  puts every read kevent before every write kevent, so a caller that sizes its buffer by
  fds instead of filters loses events (gh-110038) and the tests notice;
- level-triggered (no EV_CLEAR): a condition that holds is returned again;
- EV_EOF on hang-up: on the read filter when the peer stopped writing (POLLRDHUP or
  POLLHUP), on the write filter when the peer is gone (POLLHUP/POLLERR); with POLLERR,
  ``fflags`` is non-zero (``EIO`` as a placeholder: reading the real ``SO_ERROR`` would
  clear it for the application);
- closing an fd drops its knotes, as the kernel does (POLLNVAL, or an fd number that now
  names another file: identity is checked by (st_dev, st_ino) on every call);
- ``control(changes, max_events, timeout)``: a failing change is placed in the event
  list with EV_ERROR and the errno in ``data`` when there is room, and raises OSError
  otherwise; EV_ADD of a closed fd fails EBADF, EV_DELETE of a missing knote ENOENT
  (EBADF if the fd is closed); EV_ADD of an existing knote modifies it.

:meth:`_Kqueue.inject_error` is a fault-injection hook for the tests (EV_ERROR events
cannot be provoked through danga's use of kqueue, which submits changes with
``max_events=0``).
"""

from __future__ import annotations

import errno
import math
import os
import select
from typing import Any

KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000

# Linux (and FreeBSD) only: without it, a half-close sets no EV_EOF on the read filter.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE)


class kevent:  # noqa: N801 - the name of select.kevent
    """One change or event, like ``select.kevent``."""

    __slots__ = ("data", "fflags", "filter", "flags", "ident", "udata")

    def __init__(self, ident: Any, filter: int = KQ_FILTER_READ,  # noqa: A002
                 flags: int = KQ_EV_ADD, fflags: int = 0, data: int = 0,
                 udata: int = 0) -> None:
        self.ident = ident if isinstance(ident, int) else ident.fileno()
        self.filter = filter
        self.flags = flags
        self.fflags = fflags
        self.data = data
        self.udata = udata

    def __repr__(self) -> str:
        return (f"<emulated kevent ident={self.ident} filter={self.filter} "
                f"flags={self.flags:#x} fflags={self.fflags:#x} data={self.data}>")


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Kqueue:
    """An emulated kqueue object (``kqueue()`` returns one)."""

    def __init__(self) -> None:
        self._poll: Any = select.poll()
        self._knotes: dict[int, set[int]] = {}  # ident -> filters
        self._ids: dict[int, tuple[int, int]] = {}  # ident -> file identity at EV_ADD
        self._injected: list[kevent] = []
        self._refused: dict[tuple[int, int], int] = {}  # (ident, filter) -> errno
        self.closed = False
        #: Every max_events passed to control() that asked for events (for the tests).
        self.max_events_seen: list[int] = []

    # -- the kqueue API ------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        self._knotes.clear()
        self._poll = None

    def fileno(self) -> int:
        self._check_open()
        return -1  # no real descriptor behind an emulation

    def control(self, changelist: Any, max_events: int,
                timeout: float | None = None) -> list[kevent]:
        self._check_open()
        if max_events < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {max_events}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        errors: list[kevent] = []
        for change in changelist or ():
            failure = self._apply(change)
            if failure is not None:
                if len(errors) < max_events:  # room in the event list: report it there
                    errors.append(kevent(change.ident, change.filter,
                                         change.flags | KQ_EV_ERROR, data=failure))
                else:
                    raise OSError(failure, os.strerror(failure))
        if errors or max_events == 0:
            return errors
        self.max_events_seen.append(max_events)
        ready = self._collect(0 if self._injected else timeout)
        events = self._injected + errors + ready
        self._injected = []
        return events[:max_events]

    # -- test hooks ----------------------------------------------------------------------

    def inject_error(self, ident: int, filter: int, err: int) -> None:  # noqa: A002
        """Make the next ``control`` return an EV_ERROR event for (ident, filter)."""
        self._injected.append(kevent(ident, filter, KQ_EV_ERROR, data=err))

    def refuse(self, ident: int, filter: int, err: int) -> None:  # noqa: A002
        """Make the next EV_ADD of (ident, filter) fail with *err* (a kernel that
        refuses one filter of an fd that took the other)."""
        self._refused[(ident, filter)] = err

    def knotes(self) -> dict[int, set[int]]:
        """The live knotes (after dropping those of closed fds), for the tests."""
        self._forget_closed()
        return {fd: set(f) for fd, f in self._knotes.items()}

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed kqueue object")

    def _apply(self, change: kevent) -> int | None:
        """Apply one change; the errno if it fails."""
        fd, filt = change.ident, change.filter
        if filt not in _FILTERS:
            return errno.EINVAL
        ident = _identity(fd)
        if fd in self._ids and self._ids[fd] != ident:
            self._drop(fd)  # closed (and maybe reused) since: its knotes are gone
        if change.flags & KQ_EV_ADD:
            if ident is None:
                return errno.EBADF
            refused = self._refused.pop((fd, filt), None)
            if refused is not None:
                return refused
            self._knotes.setdefault(fd, set()).add(filt)  # re-adding modifies: no error
            self._ids[fd] = ident
        elif change.flags & KQ_EV_DELETE:
            if ident is None:
                return errno.EBADF
            filters = self._knotes.get(fd)
            if filters is None or filt not in filters:
                return errno.ENOENT
            filters.discard(filt)
            if not filters:
                del self._knotes[fd]
                self._ids.pop(fd, None)
        self._sync(fd)
        return None

    def _sync(self, fd: int) -> None:
        filters = self._knotes.get(fd)
        if not filters:
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass
            return
        mask = 0
        if KQ_FILTER_READ in filters:
            mask |= select.POLLIN | _POLLRDHUP
        if KQ_FILTER_WRITE in filters:
            mask |= select.POLLOUT
        self._poll.register(fd, mask)

    def _forget_closed(self) -> None:
        # The kernel drops the knotes of a closed fd; a reused number is a new file.
        for fd in [fd for fd, ident in self._ids.items() if _identity(fd) != ident]:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        self._knotes.pop(fd, None)
        self._ids.pop(fd, None)
        try:
            self._poll.unregister(fd)
        except KeyError:
            pass

    def _collect(self, timeout: float | None) -> list[kevent]:
        self._forget_closed()
        ms = -1 if timeout is None else math.ceil(timeout * 1000)
        reads: list[kevent] = []
        writes: list[kevent] = []
        for fd, revents in self._poll.poll(ms):
            if revents & select.POLLNVAL:
                self._drop(fd)  # closed while we slept: the kernel forgets it
                continue
            filters = self._knotes.get(fd, ())
            err = bool(revents & select.POLLERR)
            hup = bool(revents & select.POLLHUP)
            fflags = errno.EIO if err else 0
            if KQ_FILTER_READ in filters and revents & (select.POLLIN | _POLLRDHUP
                                                         | select.POLLHUP | select.POLLERR):
                eof = bool(revents & (_POLLRDHUP | select.POLLHUP)) or err
                reads.append(kevent(fd, KQ_FILTER_READ,
                                    KQ_EV_ADD | (KQ_EV_EOF if eof else 0), fflags))
            if KQ_FILTER_WRITE in filters and revents & (select.POLLOUT | select.POLLHUP
                                                          | select.POLLERR):
                eof = hup or err
                writes.append(kevent(fd, KQ_FILTER_WRITE,
                                     KQ_EV_ADD | (KQ_EV_EOF if eof else 0), fflags))
        return reads + writes


def kqueue() -> _Kqueue:
    """A new emulated kqueue."""
    return _Kqueue()
