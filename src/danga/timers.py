"""Timers: a heap keyed by (deadline, sequence) on the monotonic clock.

- Equal deadlines fire in the order they were added (the sequence number breaks ties).
- A cancelled timer is marked, not searched for; it never fires and never shortens the
  loop's wait (the heap's head is cleaned before the wait is computed). When most of the
  heap is cancelled it is rebuilt, so cancel-heavy code does not grow it without bound.
- A timer added while timers are running (delay 0 included) fires in the next iteration:
  each run only fires timers whose sequence predates it, so a callback that re-arms
  itself cannot starve I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from time import monotonic
from typing import Any

__all__ = ["Timer", "TimerHeap"]


class Timer:
    """A scheduled call, returned by :meth:`danga.Loop.add_timer`."""

    __slots__ = ("_heap", "args", "callback", "cancelled", "deadline", "seq")

    def __init__(
        self,
        deadline: float,
        seq: int,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        heap: TimerHeap,
    ) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._heap: TimerHeap | None = heap

    def cancel(self) -> None:
        """Cancel the timer; idempotent, and harmless after it fired."""
        if self.cancelled:
            return
        self.cancelled = True
        heap, self._heap = self._heap, None
        if heap is not None:
            heap.cancelled_one()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"due in {self.deadline - monotonic():.3f}s"
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<danga.Timer {name} {state}>"


class TimerHeap:
    """The loop's timers."""

    __slots__ = ("_cancelled", "_heap", "_seq")

    #: Compact when more than half the heap (and at least this many) is cancelled.
    COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers that are still going to fire."""
        return len(self._heap) - self._cancelled

    def add(self, seconds: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> Timer:
        """Schedule ``callback(*args)`` in *seconds* (negative: due now).

        Raises:
            TypeError: *seconds* is not a real number or *callback* is not callable.
            ValueError: *seconds* is NaN.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(
                f"timer delay must be a number of seconds (int or float), "
                f"not {type(seconds).__name__}"
            )
        if math.isnan(seconds):
            raise ValueError("timer delay is NaN; pass a number of seconds")
        if not callable(callback):
            raise TypeError(f"timer callback must be callable, not {type(callback).__name__}")
        deadline = monotonic() + seconds if seconds > 0 else monotonic()
        self._seq = seq = self._seq + 1
        timer = Timer(deadline, seq, callback, args, self)
        heapq.heappush(self._heap, (deadline, seq, timer))
        return timer

    def cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > self.COMPACT_MIN and self._cancelled * 2 > len(heap):
            self._heap = [item for item in heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The deadline of the next live timer, dropping cancelled ones at the head."""
        heap = self._heap
        while heap:
            item = heap[0]
            if not item[2].cancelled:
                return item[0]
            heapq.heappop(heap)
            self._cancelled -= 1
        return None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return the live timers due at *now*.

        The caller runs them after this returns, so timers they add wait for the next call.
        """
        heap = self._heap
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer._heap = None  # a late cancel() is a no-op
            due.append(timer)
        return due

    def clear(self) -> None:
        for _, _, timer in self._heap:
            timer._heap = None
        self._heap.clear()
        self._cancelled = 0
