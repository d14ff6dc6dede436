"""The select backend (everywhere, including Windows).

Facts about select, and what danga does about them:

- select(2) takes fd sets limited to FD_SETSIZE (1024 on Linux and macOS; CPython's
  Windows build raises it to 512). CPython accepts a larger fd at registration and then
  fails *every* select() (ValueError). The class declares ``max_fd = FD_SETSIZE``, so
  the core refuses such an fd at registration with FdOutOfRange, and modify() refuses
  it too, so no other fd is disturbed.
- One closed fd in the sets makes the whole call fail with EBADF. danga then finds the
  bad fds (fstat, like libev's fd_ebadf), reports ERR for each, and still reports the
  other fds' readiness from a second select without them.
- select cannot report ERR or HUP (``err_hup = False``): a hang-up shows as readable
  (recv returns b"") and an error as readable and writable. An fd watched for neither
  is not in any set.
- On Windows select accepts sockets only, fails on empty sets (we sleep instead), and
  reports a failed non-blocking connect in exceptfds (merged into writable).
- Timeouts are rounded up to microseconds by CPython; the wait is re-armed if early.
"""

from __future__ import annotations

import errno
import select
import sys
import time
from typing import ClassVar

from ..poller import (
    API_VERSION,
    ERR,
    READ,
    WRITE,
    BackendUnavailable,
    FdOutOfRange,
    fd_is_open,
)
from ._common import Events, closed_error, wait_at_least

#: The largest fd + 1 that select can represent here.
FD_SETSIZE = 512 if sys.platform == "win32" else 1024
_WINDOWS = sys.platform == "win32"


class SelectPoller:
    """Level-triggered select(2)."""

    name: ClassVar[str] = "select"
    priority: ClassVar[int] = 20
    api_version: ClassVar[int] = API_VERSION
    max_fd: ClassVar[int | None] = FD_SETSIZE
    err_hup: ClassVar[bool] = False
    embeddable: ClassVar[bool] = False

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailable unless select can be called here."""
        if not hasattr(select, "select"):
            raise BackendUnavailable(cls.name, "select.select does not exist")
        if _WINDOWS:
            return  # empty sets fail on Windows; select itself always exists there
        try:
            select.select([], [], [], 0)
        except OSError as exc:
            raise BackendUnavailable(cls.name, f"select does not work here: {exc}") from exc

    def __init__(self) -> None:
        self._closed = False
        self._r: set[int] = set()
        self._w: set[int] = set()

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify.

        Raises FdOutOfRange for fd >= FD_SETSIZE, RuntimeError after close().
        """
        if self._closed:
            raise closed_error(self.name)
        if new and not 0 <= fd < FD_SETSIZE:
            raise FdOutOfRange(
                f"fd {fd} is out of range for select (FD_SETSIZE is {FD_SETSIZE}); "
                "use the poll or epoll backend (DANGA_BACKEND=poll) for more fds"
            )
        (self._r.add if new & READ else self._r.discard)(fd)
        (self._w.add if new & WRITE else self._w.discard)(fd)

    def poll(self, timeout: float | None) -> Events:
        """See Poller.poll. Raises RuntimeError after close()."""
        if self._closed:
            raise closed_error(self.name)
        if timeout is None or timeout <= 0:
            return self._select(timeout)
        return wait_at_least(self._select, timeout)

    def close(self) -> None:
        """Forget every registration. Idempotent."""
        self._closed = True
        self._r.clear()
        self._w.clear()

    # -- helpers -------------------------------------------------------------------------

    def _select(self, timeout: float | None) -> Events:
        r, w = self._r, self._w
        if not r and not w:
            self._sleep(timeout)
            return []
        try:
            if _WINDOWS:
                rl, wl, xl = select.select(r, w, w, timeout)
                wl = list(set(wl) | set(xl))
            else:
                rl, wl, _ = select.select(r, w, (), timeout)
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EBADF, errno.ENOTSOCK):
                raise
            return self._report_bad()
        return self._merge(rl, wl)

    def _report_bad(self) -> Events:
        """Some fd in the sets was closed behind our back: ERR for it, the rest polled."""
        bad = [fd for fd in self._r | self._w if not fd_is_open(fd)]
        good_r = [fd for fd in self._r if fd not in bad]
        good_w = [fd for fd in self._w if fd not in bad]
        ready: Events = []
        if good_r or good_w:
            rl, wl, _ = select.select(good_r, good_w, (), 0)
            ready = self._merge(rl, wl)
        ready.extend((fd, ERR) for fd in bad)
        return ready

    @staticmethod
    def _merge(rl: list[int], wl: list[int]) -> Events:
        if not wl:
            return [(fd, READ) for fd in rl]
        masks = dict.fromkeys(rl, READ)
        for fd in wl:
            masks[fd] = masks.get(fd, 0) | WRITE
        return list(masks.items())

    @staticmethod
    def _sleep(timeout: float | None) -> None:
        # Nothing to watch: select([], [], []) works on POSIX but fails on Windows.
        if timeout is None:
            while True:  # blocks like select with no fds; signals still interrupt
                time.sleep(3600)
        if timeout > 0:
            time.sleep(timeout)
