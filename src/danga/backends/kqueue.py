"""The kqueue backend (macOS, FreeBSD and the other BSDs).

Facts about kqueue, and what danga does about them:

- Interest is a set of *filters*: EVFILT_READ and EVFILT_WRITE are separate knotes, and
  one fd that is readable and writable comes back as two kevents. danga merges them into
  one (fd, mask) entry per batch and sizes the event buffer by the number of filters
  (CPython's KqueueSelector once sized it by fds and needed two calls: gh-110038).
- EV_EOF on a filter means the peer hung up (HUP); with a non-zero fflags it carries a
  socket error (ERR). EV_ERROR on a returned event means the change failed (ERR).
- The kernel removes knotes when the fd is closed, so deleting a filter of a closed fd
  fails with EBADF (FreeBSD) or ENOENT (macOS): both are success here (trio does the same).
- Adding a filter for a tty or some devices fails with EINVAL on macOS: that is reported
  as UnsupportedFileType, never as a hang later (docs/internals.md#kqueue-einval).
  Regular files are refused by the core at registration, as on every backend.
- One modify() may need two changes (READ and WRITE are separate filters). If the
  kernel refuses the second, the first is undone, so a refused change leaves the kernel
  as it was (Poller API v2) and the filters recorded here stay exact.
- ERR and HUP need no filter of their own: an fd watched for neither READ nor WRITE has
  no knote and reports nothing (Danga added disabled filters to the same effect).
- The kqueue fd is close-on-exec (CPython) and is not inherited usefully across fork;
  the core rebuilds the poller in a child.
- The kqueue primitive is reached through ``_kq`` (the ``select`` module) so the tests
  can run this exact translation over an emulation on Linux.
"""

from __future__ import annotations

import errno
import select
from types import ModuleType
from typing import Any, ClassVar

from ..poller import (
    API_VERSION,
    ERR,
    HUP,
    READ,
    WRITE,
    BackendUnavailable,
    UnsupportedFileType,
)
from ._common import Events, closed_error, wait_at_least


class KqueuePoller:
    """Level-triggered kqueue (no EV_CLEAR)."""

    name: ClassVar[str] = "kqueue"
    priority: ClassVar[int] = 100
    api_version: ClassVar[int] = API_VERSION
    max_fd: ClassVar[int | None] = None
    err_hup: ClassVar[bool] = True
    embeddable: ClassVar[bool] = True
    #: The module providing kqueue, kevent and the KQ_* constants.
    _kq: ClassVar[ModuleType | Any] = select

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailable unless a kqueue can be created and polled here."""
        if not hasattr(cls._kq, "kqueue"):
            raise BackendUnavailable(cls.name, "select.kqueue does not exist on this platform")
        try:
            kq = cls._kq.kqueue()
            try:
                kq.control(None, 1, 0)
            finally:
                kq.close()
        except OSError as exc:
            raise BackendUnavailable(cls.name, f"kqueue does not work here: {exc}") from exc

    def __init__(self) -> None:
        m = self._kq
        self._q: Any = m.kqueue()
        self._filters = 0  # knotes registered: sizes the event buffer
        self._fds: dict[int, int] = {}  # fd -> the READ/WRITE filters it has
        # OS flags, mapped once.
        self._kevent = m.kevent
        self._f_read = m.KQ_FILTER_READ
        self._f_write = m.KQ_FILTER_WRITE
        self._ev_add = m.KQ_EV_ADD
        self._ev_delete = m.KQ_EV_DELETE
        self._ev_eof = m.KQ_EV_EOF
        self._ev_error = m.KQ_EV_ERROR

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify.

        Raises OSError, UnsupportedFileType (EINVAL: a tty or device), RuntimeError
        after close(). A refused change leaves every filter as it was.
        """
        q = self._q
        if q is None:
            raise closed_error(self.name)
        # The filters this fd really has (kept here: the only state kqueue needs).
        have = self._fds.get(fd, 0)
        done: list[tuple[int, bool]] = []  # (filter bit, added) applied by this call
        try:
            for bit in (READ, WRITE):
                if new & bit and not have & bit:
                    self._change(fd, bit, add=True)
                    done.append((bit, True))
                elif have & bit and not new & bit and self._change(fd, bit, add=False):
                    done.append((bit, False))
        except BaseException:
            for bit, added in reversed(done):  # undo: leave the kernel as it was
                try:
                    self._change(fd, bit, add=not added)
                except OSError:
                    pass
            raise
        if new:
            self._fds[fd] = new  # ERR/HUP-only: known, no knote
        else:
            self._fds.pop(fd, None)

    def _change(self, fd: int, bit: int, *, add: bool) -> bool:
        """Add or delete one filter; False if a delete found it already gone."""
        filt = self._f_read if bit == READ else self._f_write
        try:
            self._q.control([self._kevent(fd, filt, self._ev_add if add else self._ev_delete)],
                            0, 0)
        except OSError as exc:
            if not add and exc.errno in (errno.EBADF, errno.ENOENT):
                self._filters -= 1  # the kernel already dropped the knote of a closed fd
                return False
            if add and exc.errno == errno.EINVAL:
                raise UnsupportedFileType(
                    errno.EINVAL,
                    f"kqueue cannot watch fd {fd} (a tty or device?); "
                    "use DANGA_BACKEND=select for it",
                ) from exc
            raise
        self._filters += 1 if add else -1
        return True

    def poll(self, timeout: float | None) -> Events:
        """See Poller.poll. Raises RuntimeError after close()."""
        q = self._q
        if q is None:
            raise closed_error(self.name)
        n = self._filters if self._filters > 0 else 1
        if timeout is None or timeout <= 0:
            kevents = q.control(None, n, timeout if timeout is None else 0)
        else:
            kevents = wait_at_least(lambda t: q.control(None, n, t), timeout)
        if not kevents:
            return []
        masks: dict[int, int] = {}
        f_read, ev_eof, ev_error = self._f_read, self._ev_eof, self._ev_error
        for kev in kevents:
            flags = kev.flags
            if flags & ev_error:
                mask = ERR
            else:
                mask = READ if kev.filter == f_read else WRITE
                if flags & ev_eof:
                    mask |= ERR | HUP if kev.fflags else HUP
            fd = kev.ident
            masks[fd] = masks.get(fd, 0) | mask
        return list(masks.items())

    def close(self) -> None:
        """Close the kqueue fd. Idempotent."""
        q, self._q = self._q, None
        if q is not None:
            q.close()
            self._fds.clear()

    def fileno(self) -> int:
        """The kqueue fd (readable when an event is pending), for embedding in another
        loop. Raises RuntimeError after close()."""
        q = self._q
        if q is None:
            raise closed_error(self.name)
        return int(q.fileno())
