"""The Poller protocol: what a backend is, the event bits, and the backend errors.

A backend is a thin translation from danga's interest masks to one kernel primitive
(epoll, kqueue, poll, select). The core (its registry, ``danga._registry``) owns all
state: which fd has which interest, what the kernel has, and which object owns it.
Recovery logic (bad fds, fork, stale events, interrupted changes) lives in the core so
that every backend, built-in or third-party, gets it.

Poller API v2 (docs/plugins.md) is about what the core guarantees a backend:

- ``modify(fd, old, new)`` gets the true ``old``: the mask this poller has for *fd*
  (0: it has nothing), so a backend needs no per-fd state of its own;
- every fd is validated once, at registration, before a backend sees it (a closed fd
  raises EBADF, a regular file or directory :class:`UnsupportedFileType`, an fd above
  the backend's ``max_fd`` :class:`FdOutOfRange`);
- every wait is clamped to :data:`MAX_TIMEOUT` seconds.

A backend declares what it can do as class attributes that the core and the shipped
conformance suite read (:func:`capabilities`): ``max_fd``, ``err_hup``, ``embeddable``.

The event bits equal the Linux ``poll``/``epoll`` bits, so the epoll and poll backends can
hand the kernel's list through untranslated.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "API_VERSION",
    "ERR",
    "HUP",
    "MAX_TIMEOUT",
    "READ",
    "SUPPORTED_API_VERSIONS",
    "WRITE",
    "BackendError",
    "BackendUnavailable",
    "Capabilities",
    "FdOutOfRange",
    "Poller",
    "UnknownBackend",
    "UnsupportedFileType",
    "capabilities",
    "check_pollable",
    "clamp_timeout",
    "fd_identity",
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
#: version it was written against in ``api_version``; a plugin declaring a version that
#: is not in :data:`SUPPORTED_API_VERSIONS` is skipped with a warning.
API_VERSION = 2
#: The Poller API versions this danga loads. The methods did not change between 1 and
#: 2 (only what the core guarantees did), so a v1 plugin keeps working unchanged.
SUPPORTED_API_VERSIONS = (1, 2)

#: The longest wait, in seconds, the core ever hands a backend (asyncio caps at a day
#: too). epoll and poll take a C int of milliseconds: 30 days would overflow it. A timer
#: further away simply makes the loop wake once a day and wait again.
MAX_TIMEOUT = 86400.0


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


def check_pollable(fd: int) -> int:
    """Refuse fds that cannot be polled, the same way on every backend.

    Returns the fd's identity (see :func:`fd_identity`), which the core keeps to notice
    later that the number now names another file.

    Raises:
        OSError: ``EBADF`` if *fd* is not open.
        UnsupportedFileType: if *fd* is a regular file or a directory.
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        # Windows' os.fstat does not work on sockets; select() itself will judge them.
        if os.name == "nt" and exc.errno in (errno.EBADF, errno.EINVAL):
            return 0
        raise
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else "a directory"
        raise UnsupportedFileType(
            errno.EPERM,
            f"fd {fd} is {kind}, which is always ready and cannot be polled; "
            "read it directly instead of watching it",
        )
    return st.st_ino


def fd_identity(fd: int) -> int | None:
    """What file *fd* names now: its inode number (sockets and pipes have one each), 0
    where the platform cannot say (Windows sockets), None if *fd* is not open.

    A socket's inode is unique while it is open, so a changed identity means the number
    was closed behind danga's back and reused by someone else.
    """
    if os.name == "nt":
        return 0 if fd_is_open(fd) else None
    try:
        return os.fstat(fd).st_ino
    except OSError as exc:
        return None if exc.errno == errno.EBADF else 0


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


def clamp_timeout(timeout: float | None) -> float | None:
    """A wait for a backend: None (block) stays None, negative becomes 0, and anything
    longer than :data:`MAX_TIMEOUT` (``math.inf`` included) becomes MAX_TIMEOUT."""
    if timeout is None:
        return None
    if timeout > MAX_TIMEOUT:
        return MAX_TIMEOUT
    return timeout if timeout > 0 else 0.0


def timeout_ms(timeout: float | None) -> int:
    """Seconds to whole milliseconds for the kernel, rounded *up* so a wait is never short.

    ``None`` and negative values mean "block" (-1).
    """
    if timeout is None or timeout < 0:
        return -1
    # Round away from zero: poll(0.0001) must not become a busy poll(0).
    return math.ceil(timeout * 1000)


class Capabilities(NamedTuple):
    """What a backend declares it can do (class attributes of the Poller class).

    Attributes:
        max_fd: the largest fd + 1 it can watch (select: ``FD_SETSIZE``), or None for no
            limit. The core refuses a larger fd at registration with FdOutOfRange.
        err_hup: True when the primitive reports ERR and HUP apart from READ (epoll,
            poll, kqueue); False when a hang-up or an error shows only as readable
            (select), so ``event_err``/``event_hup`` never run.
        embeddable: True when the poller has a ``fileno()`` that another loop can watch
            (epoll, kqueue), so it can run inside another event loop.
        binds_open_files: True when a registration belongs to the open file, not the fd
            number (epoll): closing the file drops it, and a change for a number that
            now names another file fails with ENOENT. The core then need not keep each
            fd's file identity to notice a number closed behind its back and reused.
    """

    max_fd: int | None
    err_hup: bool
    embeddable: bool
    binds_open_files: bool = False


def capabilities(cls: type[Any]) -> Capabilities:
    """The capabilities a Poller class declares, with the defaults for a v1 plugin that
    declares none: no fd limit, ERR/HUP reported, embeddable if it has ``fileno``,
    registrations bound to fd numbers.

    Raises:
        TypeError: a declared capability has the wrong type.
    """
    max_fd = getattr(cls, "max_fd", None)
    err_hup = getattr(cls, "err_hup", True)
    embeddable = getattr(cls, "embeddable", hasattr(cls, "fileno"))
    binds = getattr(cls, "binds_open_files", False)
    if max_fd is not None and (isinstance(max_fd, bool) or not isinstance(max_fd, int)):
        raise TypeError(f"{cls.__name__}.max_fd must be an int or None, not {max_fd!r}")
    if not all(isinstance(flag, bool) for flag in (err_hup, embeddable, binds)):
        raise TypeError(f"{cls.__name__}.err_hup, .embeddable and .binds_open_files "
                        "must be bools")
    return Capabilities(max_fd, err_hup, embeddable, binds)


@runtime_checkable
class Poller(Protocol):
    """What a backend implements. See docs/plugins.md.

    The masks passed to :meth:`modify` and returned by :meth:`poll` are made of
    :data:`READ`, :data:`WRITE`, :data:`ERR` and :data:`HUP`. Semantics are
    level-triggered: a condition that still holds is reported again by the next poll.

    Optional class attributes (API v2, see :class:`Capabilities`): ``max_fd``,
    ``err_hup``, ``embeddable``, ``binds_open_files``.
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

        ``old == 0`` starts watching, ``new == 0`` stops. *old* is what this poller has
        for *fd* (API v2: the core tracks it and never calls ``modify(fd, 0, new)`` for
        an fd the poller already watches). Removing an fd that was closed in the
        meantime succeeds silently. A refused change leaves the kernel as it was.

        Raises:
            OSError: the primitive refused the change (EBADF, ENOENT: the fd, or the
                file it named, is gone).
            UnsupportedFileType: for files the primitive cannot watch.
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
