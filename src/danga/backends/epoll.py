"""The epoll backend (Linux).

Facts about epoll, and what danga does about them:

- Registrations belong to the *open file description*, not to the fd number. Closing an
  fd removes it only when no dup of it remains; a dup'ed-then-closed fd keeps reporting
  under the old number and cannot be unregistered (EBADF). The core detects such stale
  entries and rebuilds the poller (pitfalls C3); this module only reports them.
- EPOLLERR and EPOLLHUP are always reported, whatever was asked for. danga's event bits
  are the epoll bits, so the kernel's list is handed through untranslated.
- ``epoll_ctl(ADD)`` refuses regular files with EPERM: mapped to UnsupportedFileType.
- MOD of an unregistered fd fails ENOENT, ADD of a registered one EEXIST: each is
  retried as the other, so "modify an unknown fd" means "register it" (trio, libev).
- DEL of a closed or unknown fd fails EBADF/ENOENT: that is success (CPython contract).
- The epoll fd is created with EPOLL_CLOEXEC (CPython does so since 3.4). After fork the
  child shares the parent's epoll set; the core rebuilds the poller in the child.
- CPython rounds the timeout up to milliseconds; the wait is still re-armed if the
  kernel returns early. ``maxevents`` is sized by the registered fds, so one poll
  returns every ready fd (Danga capped batches at 1000).
"""

from __future__ import annotations

import errno
import select
from typing import ClassVar

from ..poller import API_VERSION, BackendUnavailable, UnsupportedFileType
from ._common import Events, closed_error, wait_at_least


class EpollPoller:
    """Level-triggered epoll."""

    name: ClassVar[str] = "epoll"
    priority: ClassVar[int] = 100
    api_version: ClassVar[int] = API_VERSION

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailable unless epoll can be created and polled here."""
        if not hasattr(select, "epoll"):
            raise BackendUnavailable(cls.name, "select.epoll does not exist on this platform")
        try:
            ep = select.epoll()
            try:
                ep.poll(0)
            finally:
                ep.close()
        except OSError as exc:  # ENOSYS on kernels built without epoll (ESXi)
            raise BackendUnavailable(cls.name, f"epoll does not work here: {exc}") from exc

    def __init__(self) -> None:
        self._ep: select.epoll | None = select.epoll()
        self._fds: set[int] = set()  # registered fds: their number sizes maxevents

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify. Raises OSError (EBADF), UnsupportedFileType, RuntimeError."""
        ep = self._ep
        if ep is None:
            raise closed_error(self.name)
        # What the kernel has is tracked here, not taken from *old*: modify of an unknown
        # fd registers it, removing an unknown (or refused) fd is a no-op, and the count
        # that sizes maxevents stays exact.
        known = self._fds
        if not new:
            if fd in known:
                known.discard(fd)
                try:
                    ep.unregister(fd)
                except OSError as exc:
                    # Closed behind our back (EBADF), or dropped by the kernel (ENOENT).
                    if exc.errno not in (errno.EBADF, errno.ENOENT):
                        raise
            return
        try:
            if fd in known:
                try:
                    ep.modify(fd, new)
                except FileNotFoundError:  # the kernel forgot it (closed and reopened)
                    ep.register(fd, new)
            else:
                try:
                    ep.register(fd, new)
                except FileExistsError:  # registered behind our back (a dup): modify
                    ep.modify(fd, new)
        except PermissionError as exc:
            raise UnsupportedFileType(
                errno.EPERM,
                f"fd {fd} cannot be watched by epoll (a regular file or directory); "
                "read it directly instead of watching it",
            ) from exc
        known.add(fd)

    def poll(self, timeout: float | None) -> Events:
        """See Poller.poll. Raises RuntimeError after close()."""
        ep = self._ep
        if ep is None:
            raise closed_error(self.name)
        maxevents = len(self._fds) or 1
        if timeout is None:
            return ep.poll(-1, maxevents)
        if timeout <= 0:
            return ep.poll(0, maxevents)
        return wait_at_least(lambda t: ep.poll(t, maxevents), timeout)

    def close(self) -> None:
        """Close the epoll fd. Idempotent."""
        ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
            self._fds.clear()
