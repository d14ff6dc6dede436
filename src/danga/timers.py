"""Timers: a heap keyed by (deadline, sequence) on the monotonic clock.

- Equal deadlines fire in the order they were added (the sequence number breaks ties).
- A cancelled timer is marked, not searched for; it never fires and never shortens the
  loop's wait (the heap's head is cleaned before the wait is computed). When most of the
  heap is cancelled it is rebuilt in place, so cancel-heavy code does not grow it without
  bound.
- A timer added while timers are running (delay 0 included) fires in the next iteration:
  a run only fires timers whose sequence predates it, so a callback that re-arms itself
  cannot starve I/O.

Why a Timer *is* a list: making one costs no Python ``__init__``, and the loop reads and
writes its slots by index; the named attributes below are views of the slots. The heap
holds ``(deadline, seq, timer)`` tuples: CPython compares tuples about twice as fast as
lists, and the unique sequence number means the timer itself is never compared.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from time import monotonic
from typing import Any

__all__ = ["Timer", "TimerHeap"]

# Slots of a Timer.
_DEADLINE, _SEQ, _CALLBACK, _ARGS, _HEAP = range(5)


class Timer(list[Any]):
    """A scheduled call, returned by :meth:`danga.Loop.add_timer`.

    Once it has fired or been cancelled, its callback slot is None and :attr:`cancelled`
    is True: cancelling then is a no-op.
    """

    __slots__ = ()

    @property
    def deadline(self) -> float:
        """When it is due, on the ``time.monotonic()`` clock."""
        return self[_DEADLINE]  # type: ignore[no-any-return]

    @property
    def seq(self) -> int:
        """Its place among timers with the same deadline (FIFO)."""
        return self[_SEQ]  # type: ignore[no-any-return]

    @property
    def callback(self) -> Callable[..., Any] | None:
        """The callable, or None once fired or cancelled."""
        return self[_CALLBACK]  # type: ignore[no-any-return]

    @property
    def args(self) -> tuple[Any, ...]:
        """The arguments the callback is called with."""
        return self[_ARGS]  # type: ignore[no-any-return]

    @property
    def cancelled(self) -> bool:
        """True once cancelled (or fired): it will not run (again)."""
        return self[_CALLBACK] is None

    def cancel(self) -> None:
        """Cancel the timer; idempotent, and harmless after it fired."""
        if self[_CALLBACK] is None:
            return
        self[_CALLBACK] = None
        heap = self[_HEAP]
        if heap is not None:
            self[_HEAP] = None
            heap._cancelled = n = heap._cancelled + 1
            if n > heap.COMPACT_MIN and n * 2 > len(heap._heap):
                heap.compact()

    def __repr__(self) -> str:
        if self[_CALLBACK] is None:
            return "<danga.Timer done or cancelled>"
        name = getattr(self[_CALLBACK], "__qualname__", repr(self[_CALLBACK]))
        return f"<danga.Timer {name} due in {self[_DEADLINE] - monotonic():.3f}s>"

    # Hashable by identity (a set of timers works). Equality stays list equality, which
    # for two timers is identity too: their sequence numbers differ. No Python __eq__:
    # it would route the heap's C comparisons through Python.
    __hash__ = object.__hash__  # type: ignore[assignment]


class TimerHeap:
    """The loop's timers. ``Loop.add_timer`` pushes onto ``_heap`` directly (its hot path)
    and ``Timer.cancel`` counts ``_cancelled``."""

    __slots__ = ("_cancelled", "_heap", "_seq")

    #: Compact when more than half the heap (and at least this many) is cancelled.
    COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers that are still going to fire."""
        return len(self._heap) - self._cancelled

    def compact(self) -> None:
        """Drop the cancelled timers (Timer.cancel calls it when most are cancelled)."""
        heap = self._heap
        # In place: the loop may hold this list while callbacks cancel timers.
        heap[:] = [t for t in heap if t[_CALLBACK] is not None]
        heapq.heapify(heap)
        self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The deadline of the next live timer, dropping cancelled ones at the head."""
        heap = self._heap
        while heap:
            head = heap[0]
            if head[_CALLBACK] is not None:
                return head[_DEADLINE]  # type: ignore[no-any-return]
            heapq.heappop(heap)
            self._cancelled -= 1
        return None

    def run_due(self, now: float, failed: Callable[[Exception, Any], None]) -> None:
        """Fire the timers due at *now* that existed before this call, in order.

        ``failed(exc, callback)`` is called for an exception raised by a callback.
        """
        heap = self._heap
        limit = self._seq
        pop = heapq.heappop
        while heap:
            head = heap[0]
            if head[0] > now or head[1] > limit:
                return  # not due, or added by a callback of this run: next iteration
            timer = pop(heap)
            callback = timer[_CALLBACK]
            if callback is None:
                self._cancelled -= 1
                continue
            timer[_CALLBACK] = None  # fired: cancel() and a second run are no-ops
            timer[_HEAP] = None
            try:
                callback(*timer[_ARGS])
            except Exception as exc:
                failed(exc, callback)

    def clear(self) -> None:
        for timer in self._heap:
            timer[_HEAP] = None
        self._heap.clear()
        self._cancelled = 0


def check_delay(seconds: object) -> None:
    """Raises TypeError unless *seconds* is a real number, ValueError if it is NaN."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"timer delay must be a number of seconds (int or float), "
            f"not {type(seconds).__name__}"
        )
    if math.isnan(seconds):
        raise ValueError("timer delay is NaN; pass a number of seconds")
