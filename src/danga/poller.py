"""The Poller protocol: what a backend is, the event bits, and the backend errors.

A backend is a thin translation from danga's interest masks to one kernel primitive
(epoll, kqueue, poll, select). The core (:mod:`danga.loop`) owns all state: which fd has
which interest and which object owns it. Recovery logic (bad fds, fork, stale events)
lives in the core so that every backend, built-in or third-party, gets it.

The event bits equal the Linux ``poll``/``epoll`` bits, so the epoll and poll backends can
hand the kernel's list through untranslated.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "API_VERSION",
    "ERR",
    "HUP",
    "READ",
    "WRITE",
    "BackendError",
    "BackendUnavailable",
    "FdOutOfRange",
    "Poller",
    "UnknownBackend",
    "UnsupportedFileType",
    "check_pollable",
    "fd_is_open",
    "timeout_ms",
]

#: Readable (``POLLIN``/``EPOLLIN``).
READ = 0x001
#: Writable (``POLLOUT``/``EPOLLOUT``).
WRITE = 0x004
#: Error condition (``POLLERR``/``EPOLLERR``); always reported, never requested.
ERR = 0x008
#: Hang-up (``POLLHUP``/``EPOLLHUP``); always reported, never requested.
HUP = 0x010

#: Every bit a backend may report.
ALL_EVENTS = READ | WRITE | ERR | HUP

#: The version of the Poller protocol this danga implements. A backend declares the
#: version it was written against in ``api_version``; a plugin declaring another version
#: is skipped with a warning.
API_VERSION = 1


class BackendError(Exception):
    """Base class of the errors about backends."""


class BackendUnavailable(BackendError):
    """A backend cannot be used in this process.

    Attributes:
        name: the backend's name (for a failed explicit choice of several candidates,
            the names joined by commas).
        reason: why it cannot be used.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"danga backend {name!r} is not available here: {reason}")
        self.name = name
        self.reason = reason


class UnknownBackend(BackendError, LookupError):
    """No backend has this name.

    Attributes:
        name: the name that was asked for.
        known: the names that exist, sorted.
    """

    def __init__(self, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.name = name
        self.known = sorted(known)
        shown = ", ".join(self.known) or "(none)"
        super().__init__(f"unknown danga backend {name!r}; known backends: {shown}")

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class UnsupportedFileType(BackendError, OSError):
    """The fd refers to something no backend can poll meaningfully (a regular file or a
    directory). Every backend raises this at registration, so the outcome is the same
    everywhere (epoll would say EPERM; poll and select would report it ready forever)."""


class FdOutOfRange(BackendError, ValueError):
    """The fd is too large for this backend (select's ``FD_SETSIZE``)."""


def check_pollable(fd: int) -> None:
    """Refuse fds that cannot be polled, the same way on every backend.

    Raises:
        OSError: ``EBADF`` if *fd* is not open.
        UnsupportedFileType: if *fd* is a regular file or a directory.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        # Windows' os.fstat does not work on sockets; select() itself will judge them.
        if os.name == "nt" and exc.errno in (errno.EBADF, errno.EINVAL):
            return
        raise
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else "a directory"
        raise UnsupportedFileType(
            errno.EPERM,
            f"fd {fd} is {kind}, which is always ready and cannot be polled; "
            "read it directly instead of watching it",
        )


def fd_is_open(fd: int) -> bool:
    """Whether *fd* is an open descriptor (libev's fd_ebadf test), on every platform."""
    if os.name == "nt":  # os.fstat does not know sockets there; ask select about this fd
        import select

        try:
            select.select([fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return True
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno != errno.EBADF
    return True


def timeout_ms(timeout: float | None) -> int:
    """Seconds to whole milliseconds for the kernel, rounded *up* so a wait is never short.

    ``None`` and negative values mean "block" (-1).
    """
    if timeout is None or timeout < 0:
        return -1
    # Round away from zero: poll(0.0001) must not become a busy poll(0).
    return math.ceil(timeout * 1000)


@runtime_checkable
class Poller(Protocol):
    """What a backend implements. See DESIGN.md §2 and docs/plugins.md.

    The masks passed to :meth:`modify` and returned by :meth:`poll` are made of
    :data:`READ`, :data:`WRITE`, :data:`ERR` and :data:`HUP`. Semantics are
    level-triggered: a condition that still holds is reported again by the next poll.
    """

    #: The backend's name, as used by ``DANGA_BACKEND`` and ``Loop(backend=...)``.
    name: ClassVar[str]
    #: Higher wins the automatic choice.
    priority: ClassVar[int]
    #: The protocol version implemented (:data:`API_VERSION`).
    api_version: ClassVar[int]

    @classmethod
    def probe(cls) -> None:
        """Prove the primitive works in this process: create it and poll it once.

        Raises:
            BackendUnavailable: with the reason, if it does not.
        """

    def modify(self, fd: int, old: int, new: int) -> None:
        """Change the kernel interest of *fd* from *old* to *new*.

        ``old == 0`` starts watching, ``new == 0`` stops. Modifying an fd the backend does
        not know registers it; removing an fd that is unknown or already closed succeeds
        silently.

        Raises:
            OSError: if *fd* is not open (on starting to watch it).
            UnsupportedFileType: for regular files and directories.
            FdOutOfRange: if the backend cannot represent *fd*.
            RuntimeError: after :meth:`close`.
        """

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait for events.

        *timeout* is in seconds; ``None`` blocks, ``0`` returns at once, and a positive
        timeout with nothing ready waits at least that long. Returns every ready fd as
        ``(fd, mask)``, one entry per fd. EINTR is retried; an exception raised by a
        signal handler propagates.

        Raises:
            RuntimeError: after :meth:`close`.
        """
        ...

    def close(self) -> None:
        """Release the kernel object. Idempotent."""
