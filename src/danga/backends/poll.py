"""The poll backend (POSIX).

Facts about poll, and what danga does about them:

- poll(2) is stateless: the kernel sees the whole set each call, so cost grows with the
  number of registered fds (idle ones included). There is no kernel object to leak
  across fork or exec, and this module keeps no per-fd state: ``select.poll`` holds the
  set, and the core passes the true old mask (Poller API v2).
- POLLERR, POLLHUP and POLLNVAL are always reported. POLLNVAL means "this fd is not
  open": it is mapped to ERR, so an fd closed behind danga's back reaches the core once
  instead of making every later poll return at once (Danga::Socket 1.62 ignored POLLNVAL
  and spun).
- poll accepts any fd number (no FD_SETSIZE limit) and does not check that it is open;
  the core checks at registration (fstat), so a closed fd fails there as on epoll.
- Python's poll takes milliseconds and rounds up; the wait is re-armed if it returns
  early.
- macOS: poll does not support devices (its man page, BUGS) and returned early on
  10.12; it is deprioritised there but stays selectable explicitly.
"""

from __future__ import annotations

import select
import sys
from typing import ClassVar

from ..poller import API_VERSION, ERR, BackendUnavailable
from ._common import Events, closed_error, wait_at_least

_POLLNVAL = getattr(select, "POLLNVAL", 0x020)


class PollPoller:
    """Level-triggered poll(2)."""

    name: ClassVar[str] = "poll"
    # Below epoll/kqueue, above select; far below select on macOS (see the facts above).
    priority: ClassVar[int] = 10 if sys.platform == "darwin" else 50
    api_version: ClassVar[int] = API_VERSION
    max_fd: ClassVar[int | None] = None
    err_hup: ClassVar[bool] = True
    embeddable: ClassVar[bool] = False

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

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify. Raises RuntimeError after close()."""
        p = self._p
        if p is None:
            raise closed_error(self.name)
        if new:
            p.register(fd, new)  # the bits are the poll bits; it overwrites an entry
        else:
            try:
                p.unregister(fd)
            except KeyError:  # nothing to remove (an interrupted change being redone)
                pass

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
