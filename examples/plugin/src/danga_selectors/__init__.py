"""danga-selectors: a danga backend over ``selectors.DefaultSelector``.

An example of a complete third-party backend (see danga's docs/plugins.md). It is a
thin translation from danga's Poller protocol to the standard library's best selector
(epoll on Linux, kqueue on macOS and the BSDs, select on Windows).

Facts about selectors, and what this backend does about them:

- ``selectors`` knows only EVENT_READ and EVENT_WRITE: it folds a hang-up or an error
  into readable and writable, so this backend reports READ/WRITE, never ERR/HUP. It
  says so with ``err_hup = False`` (Poller API v2): danga's suite then expects a closed
  peer to show as readable only, and event_err/event_hup never run on it.
- danga passes the true old mask (Poller API v2); the selector's own map is the only
  state (it also tells apart danga's ERR|HUP-only interest, which selectors cannot
  express: such an fd is simply not in the selector).
- danga validates every fd before a backend sees it (closed fds, regular files,
  directories, and fds at or above ``max_fd``): this module does not.
- Where DefaultSelector is select() (Windows), ``max_fd`` says it watches fds below 512.
- ``select()`` may return a little before its timeout (epoll rounds to milliseconds):
  the wait is re-armed until the deadline, because danga promises ``poll(t)`` waits
  at least ``t`` when nothing is ready.
"""

from __future__ import annotations

import selectors
import sys
import time
from typing import ClassVar

from danga.poller import API_VERSION, READ, WRITE, BackendUnavailable

__all__ = ["SelectorsPoller"]
__version__ = "2.0.0"

_SELECT = selectors.DefaultSelector is selectors.SelectSelector


class SelectorsPoller:
    """Level-triggered readiness through ``selectors.DefaultSelector``."""

    name: ClassVar[str] = "selectors"
    # Below every built-in: an automatic choice never takes it; name it to use it.
    priority: ClassVar[int] = 5
    api_version: ClassVar[int] = API_VERSION
    max_fd: ClassVar[int | None] = (
        (512 if sys.platform == "win32" else 1024) if _SELECT else None)
    err_hup: ClassVar[bool] = False
    embeddable: ClassVar[bool] = False

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

        Raises OSError (the kernel refused the change) and RuntimeError after close().
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
        else:
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
