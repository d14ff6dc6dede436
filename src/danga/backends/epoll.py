"""The epoll backend (Linux).

Facts about epoll, and what danga does about them:

- Registrations belong to the *open file description*, not to the fd number. Closing an
  fd removes it only when no dup of it remains; a dup'ed-then-closed fd keeps reporting
  under the old number and cannot be unregistered (EBADF). The core notices such stale
  entries and rebuilds the poller (docs/internals.md#dup-then-close); this module
  only reports them.
- EPOLLERR and EPOLLHUP are always reported, whatever was asked for. danga's event bits
  are the epoll bits, so the kernel's list is handed through untranslated.
- ``epoll_ctl(ADD)`` refuses regular files with EPERM: mapped to UnsupportedFileType.
- MOD of an fd the kernel no longer has fails ENOENT: the file it was registered for was
  closed, and the number may name a stranger's file now. That is raised, never turned
  into a registration of whatever the number names today (the core closes the object
  without closing the number; docs/internals.md#fd-closed-behind-dangas-back).
- DEL of a closed fd fails EBADF (or ENOENT): that is success (the CPython contract).
- The epoll fd is created with EPOLL_CLOEXEC (CPython does so since 3.4). After fork the
  child shares the parent's epoll set; the core rebuilds the poller in the child.
- CPython rounds the timeout up to milliseconds; the wait is re-armed if the kernel
  returns early. ``maxevents`` is the number of registered fds, so one poll returns every
  ready fd (Danga capped batches at 1000).
"""

from __future__ import annotations

import errno
import select
from time import monotonic
from typing import ClassVar

from ..poller import API_VERSION, BackendUnavailable, UnsupportedFileType
from ._common import Events, closed_error, wait_at_least


class EpollPoller:
    """Level-triggered epoll."""

    name: ClassVar[str] = "epoll"
    priority: ClassVar[int] = 100
    api_version: ClassVar[int] = API_VERSION
    max_fd: ClassVar[int | None] = None
    err_hup: ClassVar[bool] = True
    embeddable: ClassVar[bool] = True
    binds_open_files: ClassVar[bool] = True

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
        self._count = 0  # registered fds: sizes maxevents (changed only on success)

    def modify(self, fd: int, old: int, new: int) -> None:
        """See Poller.modify.

        Raises OSError (ENOENT: the file registered under *fd* is gone; EEXIST),
        UnsupportedFileType, RuntimeError after close().
        """
        ep = self._ep
        if ep is None:
            raise closed_error(self.name)
        if not new:
            try:
                ep.unregister(fd)
            except OSError as exc:
                # Closed behind our back (EBADF), or dropped by the kernel (ENOENT).
                if exc.errno not in (errno.EBADF, errno.ENOENT):
                    raise
                return
            self._count -= 1
        elif old:
            ep.modify(fd, new)
        else:
            try:
                ep.register(fd, new)
            except PermissionError as exc:
                raise UnsupportedFileType(
                    errno.EPERM,
                    f"fd {fd} cannot be watched by epoll (a regular file or directory); "
                    "read it directly instead of watching it",
                ) from exc
            self._count += 1

    def poll(self, timeout: float | None) -> Events:
        """See Poller.poll. Raises RuntimeError after close()."""
        ep = self._ep
        if ep is None:
            raise closed_error(self.name)
        maxevents = self._count if self._count > 0 else 1
        if timeout is None:
            return ep.poll(-1, maxevents)
        if timeout <= 0:
            return ep.poll(0, maxevents)
        # The busy case first, with no closure and no call (a loop with a timer, an idle
        # timeout say, polls with a finite timeout every iteration): only an empty
        # return needs to know how long it waited.
        start = monotonic()
        ready = ep.poll(timeout, maxevents)
        if ready:
            return ready
        left = timeout - (monotonic() - start)
        return wait_at_least(lambda t: ep.poll(t, maxevents), left) if left > 0 else ready

    def close(self) -> None:
        """Close the epoll fd. Idempotent."""
        ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
            self._count = 0

    def fileno(self) -> int:
        """The epoll fd (readable when an event is pending), for embedding in another loop.

        Raises RuntimeError after close()."""
        ep = self._ep
        if ep is None:
            raise closed_error(self.name)
        return ep.fileno()
