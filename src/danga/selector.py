"""``danga.Selector``: a :class:`selectors.BaseSelector` over any danga Poller.

asyncio's ``SelectorEventLoop`` takes any ``selectors.BaseSelector``, so this adapter runs
an asyncio application on every danga backend, a third-party plugin included::

    loop = asyncio.SelectorEventLoop(danga.Selector("poll"))

What it promises is the contract of the standard library's selectors (and what
``asyncio.BaseSelectorEventLoop`` relies on), checked by CPython's own test suites
through :mod:`danga.testing.peer`:

- It talks to the Poller directly: no Loop, no batching. ``register`` and ``modify``
  reach the kernel before they return, so a refusal comes back at once, and a refused
  ``register`` leaves no key behind (an adapter that kept the key would make its caller
  believe the fd is watched, and it would never fire).
- The key bookkeeping lives here; the Poller stays stateless. The Poller is always told
  the true ``old`` mask: the one this selector gave it for that fd.
- fds are validated here before the Poller sees them (``danga.poller.check_pollable``),
  so every backend refuses a closed fd (EBADF) and a regular file the same way.
- ``select()`` maps ERR and HUP to ``EVENT_READ | EVENT_WRITE``, restricted to what the key
  asked for, as the standard selectors do: the reader or the writer then finds the error
  with its own system call.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Iterator, Mapping
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey
from typing import TYPE_CHECKING, Any

from . import backends as _backends
from .poller import ERR, HUP, READ, WRITE, check_pollable

if TYPE_CHECKING:
    from collections.abc import Callable

    from .poller import Poller

__all__ = ["Selector"]

_BOTH = EVENT_READ | EVENT_WRITE
# selectors' events -> the Poller's mask, indexed by the events (1, 2 or 3).
_TO_MASK = (0, READ, WRITE, READ | WRITE)
# The Poller's mask (its low five bits) -> selectors' events, computed once: anything
# readable, in error or hung up is EVENT_READ; anything writable, in error or hung up
# is EVENT_WRITE.
_FROM_MASK = tuple(
    (EVENT_READ if m & (READ | ERR | HUP) else 0) | (EVENT_WRITE if m & (WRITE | ERR | HUP) else 0)
    for m in range(32)
)


def _fd_of(fileobj: Any) -> int:
    """The fd of *fileobj* (an int or an object with ``fileno()``).

    Raises:
        ValueError: it has no usable ``fileno()``, or the fd is negative (a closed socket).
    """
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                f"danga.Selector: {fileobj!r} is not a file object: it needs a fileno() "
                "method returning an fd, or pass the fd (an int >= 0)"
            ) from None
    if fd < 0:
        raise ValueError(f"danga.Selector: invalid file descriptor {fd} (it must be >= 0)")
    return fd


def _check_events(call: str, events: int) -> None:
    if not isinstance(events, int) or not events or events & ~_BOTH:
        raise ValueError(
            f"danga.Selector.{call}: events must be EVENT_READ, EVENT_WRITE or both "
            f"(1, 2 or 3), not {events!r}"
        )


class _KeyMap(Mapping[Any, SelectorKey]):
    """The live, read-only view ``get_map()`` returns: keyed by fd, and looked up by file
    object too. After ``close()`` it is empty (the selector clears its dict)."""

    __slots__ = ("_keys", "_lookup")

    def __init__(self, keys: dict[int, SelectorKey], lookup: Callable[[Any], int]) -> None:
        self._keys = keys
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> SelectorKey:
        try:
            return self._keys[self._lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)


class Selector(selectors.BaseSelector):
    """A :class:`selectors.BaseSelector` over a danga Poller.

    Args:
        backend: a backend name (or a comma-separated preference list), a Poller class, or
            None for the automatic choice (``DANGA_BACKEND``, else the best backend here),
            exactly as :class:`danga.Loop` chooses.

    Raises:
        UnknownBackend: a named backend does not exist.
        BackendUnavailable: no named backend works here.
        TypeError: *backend* is neither a name, a class nor None.

    The selector owns its Poller: :meth:`close` closes it. ``fileno()`` exists when the
    backend is embeddable (epoll, kqueue), so another loop can watch this selector.
    """

    def __init__(self, backend: str | type[Poller] | None = None) -> None:
        self._setup(_backends.choose(backend)())

    @classmethod
    def from_poller(cls, poller: Poller) -> Selector:
        """A selector over an existing Poller instance, which it then owns (and closes).

        The Poller must be fresh: it must watch no fd yet, because the selector passes
        it the true ``old`` mask of every fd and believes it starts from none.

        Raises:
            TypeError: *poller* lacks ``modify``, ``poll`` or ``close``.
        """
        missing = [name for name in ("modify", "poll", "close") if not hasattr(poller, name)]
        if missing or isinstance(poller, type):
            raise TypeError(
                f"danga.Selector.from_poller takes a Poller instance (with modify, poll "
                f"and close), not {poller!r}"
            )
        self = cls.__new__(cls)
        self._setup(poller)
        return self

    def _setup(self, poller: Poller) -> None:
        self._poller = poller
        self._keys: dict[int, SelectorKey] = {}
        self._map: _KeyMap | None = _KeyMap(self._keys, self._lookup)

    @property
    def poller(self) -> Poller:
        """The Poller this selector drives (``poller.name`` is the backend's name)."""
        return self._poller

    @property
    def fileno(self) -> Callable[[], int]:
        """The Poller's ``fileno`` (epoll's or kqueue's fd), where the backend declares
        ``embeddable`` (a v1 backend, which declares nothing: where it has a ``fileno``).

        Raises:
            AttributeError: the backend has no fd another loop could watch (poll,
                select), so ``hasattr(sel, "fileno")`` is False, as for the standard
                PollSelector.
        """
        poller = self._poller
        if not getattr(poller, "embeddable", hasattr(poller, "fileno")):
            raise AttributeError(
                f"danga.Selector over {getattr(poller, 'name', '?')!r} has no fileno(): "
                "the backend is not embeddable"
            )
        return poller.fileno  # type: ignore[attr-defined, no-any-return]

    def _lookup(self, fileobj: Any) -> int:
        """The fd of *fileobj*; a closed file object is found by identity among the keys,
        so it can still be unregistered after it was closed."""
        try:
            return _fd_of(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        """Watch *fileobj* for *events*; the kernel is told before this returns.

        Returns:
            the new :class:`selectors.SelectorKey`.

        Raises:
            ValueError: *events* is not EVENT_READ, EVENT_WRITE or both; the fd is < 0 or
                *fileobj* has no fd; the backend cannot represent the fd
                (``FdOutOfRange``, a ValueError: select above its ``max_fd``).
            KeyError: the fd is already registered (through this object or another).
            OSError: the fd is closed (EBADF), a regular file or a directory
                (``UnsupportedFileType``), or the kernel refused it. No key is left behind.
        """
        _check_events("register", events)
        fd = self._lookup(fileobj)
        if self._map is None:
            raise RuntimeError("danga.Selector.register: the selector is closed")
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        check_pollable(fd)
        self._poller.modify(fd, 0, _TO_MASK[events])
        key = self._keys[fd] = SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        """Stop watching *fileobj*; works after it was closed, or its fd reused.

        Returns:
            the key it had.

        Raises:
            KeyError: *fileobj* is not registered.
        """
        try:
            key = self._keys.pop(self._lookup(fileobj))
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        try:
            self._poller.modify(key.fd, _TO_MASK[key.events], 0)
        except OSError:
            # The fd was closed (or closed and reused) since it was registered: the
            # kernel has already forgotten it, which is what was asked.
            pass
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        """Change the events or the data of a registered *fileobj*.

        A change of *data* alone makes no system call.

        Returns:
            the new key.

        Raises:
            KeyError: *fileobj* is not registered.
            ValueError: *events* is not EVENT_READ, EVENT_WRITE or both.
            OSError: the kernel refused the change; *fileobj* is then unregistered.
        """
        try:
            fd = self._lookup(fileobj)
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        _check_events("modify", events)
        if events != key.events:
            try:
                self._poller.modify(fd, _TO_MASK[key.events], _TO_MASK[events])
            except BaseException:
                # Leave no key the kernel does not honour (bpo-30014's rule): the fd is
                # unregistered, and the original error is what the caller sees.
                del self._keys[fd]
                try:
                    self._poller.modify(fd, _TO_MASK[key.events], 0)
                except Exception:
                    pass
                raise
            key = key._replace(events=events, data=data)
        elif data is not key.data:
            key = key._replace(data=data)
        else:
            return key
        self._keys[fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        """Wait for events: every ready fd in one call.

        *timeout* is in seconds: None blocks, 0 or less returns at once. A signal whose
        handler returns lets the wait go on with the time that is left; an exception raised
        by a signal handler propagates.

        Returns:
            ``(key, events)`` pairs, *events* restricted to ``key.events``; an fd in error
            or hung up reports every event its key asked for.

        Raises:
            RuntimeError: the selector is closed.
        """
        if timeout is not None and timeout <= 0:
            timeout = 0
        try:
            ready = self._poller.poll(timeout)
        except InterruptedError:
            # The built-in backends retry EINTR themselves (PEP 475); a plugin might not.
            ready = self._poll_again(timeout)
        keys = self._keys
        table = _FROM_MASK
        result = []
        for fd, mask in ready:
            key = keys.get(fd)
            if key is not None:
                events = table[mask & 31] & key.events
                if events:
                    result.append((key, events))
        return result

    def _poll_again(self, timeout: float | None) -> list[tuple[int, int]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._poller.poll(left)
            except InterruptedError:
                continue

    def close(self) -> None:
        """Forget every key and close the Poller. Idempotent.

        Afterwards ``get_map()`` is None, ``get_key`` raises RuntimeError, and a mapping
        obtained before raises KeyError.
        """
        self._keys.clear()
        self._map = None
        self._poller.close()

    # The standard selectors return None after close() too; typeshed's signature omits it.
    def get_map(self) -> Mapping[Any, SelectorKey] | None:  # type: ignore[override]
        """The live, read-only mapping of file objects to keys; None after :meth:`close`."""
        return self._map

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{len(self._keys)} fds"
        return f"<danga.Selector {getattr(self._poller, 'name', '?')} {state}>"
