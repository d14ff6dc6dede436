"""danga-selectors: a danga backend over ``selectors.DefaultSelector``.

An example of a complete third-party backend (see danga's docs/plugins.md). It is a
thin translation from danga's Poller protocol to the standard library's best selector
(epoll on Linux, kqueue on macOS and the BSDs, select on Windows).

Facts about selectors, and what this backend does about them:

- ``selectors`` knows only EVENT_READ and EVENT_WRITE: it folds a hang-up or an error
  into readable and writable, so this backend reports READ/WRITE, never ERR/HUP (the
  protocol allows that: a closed peer shows as readable, and recv() returns b"").
- ``register`` refuses an fd that is already registered (KeyError) and ``modify`` one
  that is not: the backend looks in ``get_map()`` and calls the right one, so that
  "modify an unknown fd registers it" and "register twice" work as on every backend.
- Regular files and directories are refused with ``danga.UnsupportedFileType`` before
  the selector sees them (epoll would say EPERM, select would call them ready forever).
- ``select()`` may return a little before its timeout (epoll rounds to milliseconds):
  the wait is re-armed until the deadline, because danga promises ``poll(t)`` waits
  at least ``t`` when nothing is ready.
"""

from __future__ import annotations

import selectors
import time
from typing import ClassVar

from danga.poller import (
    API_VERSION,
    READ,
    WRITE,
    BackendUnavailable,
    FdOutOfRange,
    check_pollable,
)

__all__ = ["SelectorsPoller"]
__version__ = "1.0.0"

_FD_SETSIZE = 1024  # select's limit, if DefaultSelector is the SelectSelector


class SelectorsPoller:
    """Level-triggered readiness through ``selectors.DefaultSelector``."""

    name: ClassVar[str] = "selectors"
    # Below every built-in: an automatic choice never takes it; name it to use it.
    priority: ClassVar[int] = 5
    api_version: ClassVar[int] = API_VERSION

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailable unless a DefaultSelector can be made and polled."""
        try:
            sel = selectors.DefaultSelector()
            try:
                sel.select(0)
            finally:
                sel.close()
        except OSError as exc:  # e.g. ENOSYS: epoll exists but the kernel lacks it
            raise BackendUnavailable(cls.name, f"DefaultSelector does not work: {exc}") from exc

    def __init__(self) -> None:
        self._sel: selectors.BaseSelector | None = selectors.DefaultSelector()

    def modify(self, fd: int, old: int, new: int) -> None:
        """See danga.poller.Poller.modify.

        Raises OSError (the fd is not open), UnsupportedFileType (a regular file or a
        directory), FdOutOfRange (fd >= 1024 on a select-based selector) and
        RuntimeError after close().
        """
        sel = self._open()
        events = (selectors.EVENT_READ if new & READ else 0) | (
            selectors.EVENT_WRITE if new & WRITE else 0)
        known = fd in sel.get_map()
        if not events:
            if known:
                sel.unregister(fd)  # selectors ignores a closed fd's EBADF here
            return
        if known:
            sel.modify(fd, events)
            return
        if isinstance(sel, selectors.SelectSelector) and fd >= _FD_SETSIZE:
            raise FdOutOfRange(f"fd {fd} is out of range for select (FD_SETSIZE 1024)")
        check_pollable(fd)  # OSError if closed, UnsupportedFileType for files
        sel.register(fd, events)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """See danga.poller.Poller.poll. Raises RuntimeError after close()."""
        sel = self._open()
        if timeout is not None and timeout > 0:
            deadline = time.monotonic() + timeout
            while True:
                ready = sel.select(timeout)
                timeout = deadline - time.monotonic()
                if ready or timeout <= 0:
                    break
        else:
            ready = sel.select(None if timeout is None else 0)
        return [
            (key.fd, (READ if mask & selectors.EVENT_READ else 0)
             | (WRITE if mask & selectors.EVENT_WRITE else 0))
            for key, mask in ready
        ]

    def close(self) -> None:
        """Close the selector. Idempotent."""
        sel, self._sel = self._sel, None
        if sel is not None:
            sel.close()

    def _open(self) -> selectors.BaseSelector:
        if self._sel is None:
            raise RuntimeError("the selectors poller is closed; create a new one")
        return self._sel
