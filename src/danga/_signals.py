"""Signals delivered as callbacks on the loop thread (trio's model, not asyncio's).

The Python-level handler does only what is safe between any two bytecodes: it records
the signal number in a set and queues one delivery call on the loop's thread-safe queue
(:mod:`danga._waker`), which wakes the loop. The loop runs the delivery in its
post-event phase, where each recorded signal's callback is called once: N deliveries of
one signal before the loop gets to it give one call (signals are not counted; a
callback that needs a count keeps its own).

``signal.set_wakeup_fd`` points at the loop's self-pipe while this loop has handlers
(``warn_on_full_buffer=False``: a full pipe already means "wake up"), so a signal that
the kernel delivers to another thread still wakes a loop sleeping in the main thread.
An earlier owner of the wakeup fd (asyncio, say) gets a RuntimeWarning and gets its fd
back, as every signal gets its previous handler back, on the last removal and at
``close()``. All of it is main-thread only, as ``signal.signal`` is.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ._waker import Waker

__all__ = ["SignalHandlers"]

_UNCATCHABLE = {getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)}


def _main_thread_only(call: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{call} must be called from the main thread (Python runs "
                           "signal handlers only there)")


class SignalHandlers:
    """One loop's signal callbacks."""

    __slots__ = ("_callbacks", "_failed", "_installed", "_old_wakeup_fd", "_pending",
                 "_previous", "_scheduled", "_waker")

    def __init__(self, waker: Waker, failed: Callable[[Exception, Any], None]) -> None:
        self._waker = waker
        self._failed = failed
        self._callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._previous: dict[int, Any] = {}
        self._pending: set[int] = set()
        self._scheduled = False
        self._old_wakeup_fd: int | None = None  # held: the fd to give back
        self._installed = -1  # the fd number this object last made the wakeup fd

    def add(self, signum: int, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """See Loop.add_signal_handler.

        Raises:
            RuntimeError: not the main thread.
            TypeError: *callback* is not callable or *signum* not an int.
            ValueError: *signum* cannot be caught.
        """
        _main_thread_only("add_signal_handler()")
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(f"add_signal_handler() takes a signal number, "
                            f"not {type(signum).__name__}")
        if not callable(callback):
            raise TypeError(f"add_signal_handler() callback must be callable, "
                            f"not {type(callback).__name__}")
        if signum in _UNCATCHABLE or signum not in signal.valid_signals():
            raise ValueError(f"add_signal_handler(): signal {signum} cannot be caught")
        first = self._old_wakeup_fd is None
        if first:
            self._take_wakeup_fd()
        try:
            previous = signal.signal(signum, self._handler)
        except (OSError, ValueError) as exc:
            if first and not self._callbacks:
                self._give_back_wakeup_fd()
            raise ValueError(f"add_signal_handler(): cannot handle signal {signum}: "
                             f"{exc}") from exc
        self._previous.setdefault(signum, previous)
        self._callbacks[signum] = (callback, args)

    def remove(self, signum: int) -> bool:
        """See Loop.remove_signal_handler. Raises RuntimeError off the main thread."""
        _main_thread_only("remove_signal_handler()")
        if self._callbacks.pop(signum, None) is None:
            return False
        previous = self._previous.pop(signum, None)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._pending.discard(signum)
        if not self._callbacks:
            self._give_back_wakeup_fd()
        return True

    def close(self) -> None:
        """Remove every handler (Loop.close and Loop.reset); off the main thread the
        handlers cannot be restored and stay (they then only queue calls that are never
        run)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in list(self._callbacks):
            self.remove(signum)
        self._give_back_wakeup_fd()

    def rebind(self, *, unset_is_ours: bool = False) -> None:
        """Point the wakeup fd at the loop's renewed self-pipe (dead channel, fork), if
        the process's wakeup fd is still the one this object set: another owner that took
        it since keeps it. (After fork every live loop is renewed, also loops that a
        test or a program dropped without closing; the last of them must not win.)

        *unset_is_ours*: an unset wakeup fd (-1) is taken too. For the first use of the
        loop in a forked child: an at-fork hook registered after danga's may have cleared
        it (asyncio's does, in every child, from Python 3.12 on)."""
        if self._old_wakeup_fd is None:
            return
        mine = self._waker.write_fd
        try:
            current = signal.set_wakeup_fd(mine, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: the Python handler still wakes us
            return
        if current in (self._installed, mine) or (unset_is_ours and current == -1):
            self._installed = mine
        else:  # not ours any more: put the owner's back (a signal that lands in between
            # still runs its Python handler; only its wakeup byte went to our pipe)
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)

    # -- signal context ----------------------------------------------------------------

    def _handler(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of whatever the main thread was doing: record and
        # queue, nothing else. A set add and a deque append are single C calls.
        self._pending.add(signum)
        if not self._scheduled:
            self._scheduled = True
            self._waker.call_soon(self._deliver, ())

    def _deliver(self) -> None:
        # On the loop thread. Cleared first: a signal arriving from here on queues a
        # new delivery (or is picked up by the loop below).
        self._scheduled = False
        pending = self._pending
        try:
            for signum in list(pending):
                entry = self._callbacks.get(signum)
                if entry is None:
                    pending.discard(signum)
                    continue
                callback, args = entry
                pending -= {signum}  # no call: no signal lands between this and the call
                try:
                    callback(*args)
                except Exception as exc:
                    self._failed(exc, callback)
        finally:
            if pending and not self._scheduled:
                self._scheduled = True
                self._waker.call_soon(self._deliver, ())

    def after_fork(self) -> None:
        """In a forked child: the queued delivery was dropped with the calls."""
        self._scheduled = False
        self._pending.clear()

    # -- the process's wakeup fd -------------------------------------------------------

    def _take_wakeup_fd(self) -> None:
        mine = self._waker.write_fd
        old = signal.set_wakeup_fd(mine, warn_on_full_buffer=False)
        if old not in (-1, mine):
            warnings.warn(
                f"danga: the signal wakeup fd was held by another owner (fd {old}, e.g. "
                "asyncio); danga uses it while it has signal handlers and gives it back "
                "after", RuntimeWarning, stacklevel=4)
        self._old_wakeup_fd = old if old != mine else -1
        self._installed = mine

    def _give_back_wakeup_fd(self) -> None:
        old, self._old_wakeup_fd = self._old_wakeup_fd, None
        if old is None:
            return
        try:
            current = signal.set_wakeup_fd(old)
        except (OSError, ValueError):  # the old owner's fd is gone: leave none
            current = signal.set_wakeup_fd(-1)
        if current != self._installed:  # another owner took it after us: theirs stays
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)
