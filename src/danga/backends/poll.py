"""The poll backend (POSIX).

Facts about poll, and what danga does about them:

- poll(2) is stateless: the kernel sees the whole set each call, so cost grows with the
  number of registered fds (idle ones included). There is no kernel object to leak
  across fork or exec.
- POLLERR, POLLHUP and POLLNVAL are always reported. POLLNVAL means "this fd is not
  open": it is mapped to ERR, so an fd closed behind danga's back reaches the core once
  instead of making every later poll return at once (Danga::Socket 1.62 ignored POLLNVAL
  and spun).
- poll accepts any fd number (no FD_SETSIZE limit) and does not check that it is open;
  danga checks at registration (fstat) so that a closed fd fails there as on epoll, and
  a regular file raises UnsupportedFileType as on every backend.
- Python's poll takes milliseconds and rounds up; the wait is re-armed if it returns
  early.
- macOS: poll does not support devices (its man page, BUGS) and returned early on
  10.12; it is deprioritised there but stays selectable explicitly.
"""

from __future__ import annotations

import select
import sys
from typing import ClassVar

from ..poller import API_VERSION, ERR, BackendUnavailable, check_pollable
from ._common import Events, closed_error, wait_at_least

_POLLNVAL = getattr(select, "POLLNVAL", 0x020)


class PollPoller:
    """Level-triggered poll(2)."""

    name: ClassVar[str] = "poll"
    # Below epoll/kqueue, above select; far below select on macOS (see the facts above).
    priority: ClassVar[int] = 10 if sys.platform == "darwin" else 50
    api_version: ClassVar[int] = API_VERSION

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailable unless poll can be created and polled here."""
        if not hasattr(select, "poll"):
            raise BackendUnavailable(cls.name, "select.poll does not exist on this platform")
        try:
            select.poll().poll(0)
        except OSError as exc:
            raise BackendUnavailable(cls.name, f"poll does not work here: {exc}") from exc

    def __init__(self) -> None:
        self._p: select.poll | None = select.poll()
        self._fds: dict[int, int] = {}

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify. Raises OSError (EBADF), UnsupportedFileType, RuntimeError."""
        p = self._p
        if p is None:
            raise closed_error(self.name)
        if not new:
            if self._fds.pop(fd, None) is not None:
                p.unregister(fd)
            return
        if fd not in self._fds:
            check_pollable(fd)
        # The bits are the poll bits; register() overwrites an existing entry.
        p.register(fd, new)
        self._fds[fd] = new

    def poll(self, timeout: float | None) -> Events:
        """See Poller.poll. Raises RuntimeError after close()."""
        p = self._p
        if p is None:
            raise closed_error(self.name)
        if timeout is None:
            ready = p.poll()
        elif timeout <= 0:
            ready = p.poll(0)
        else:
            # Python's poll() rounds milliseconds up (ROUND_TIMEOUT).
            ready = wait_at_least(lambda t: p.poll(t * 1000), timeout)
        for i, (fd, mask) in enumerate(ready):
            if mask & _POLLNVAL:
                ready[i] = (fd, ERR)
        return ready

    def close(self) -> None:
        """Forget every registration. Idempotent."""
        self._p = None
        self._fds.clear()
