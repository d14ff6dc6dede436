"""Timers: a heap keyed by (deadline, sequence) on the monotonic clock, which is most of
the time simply a sorted list.

- Equal deadlines fire in the order they were added (the sequence number breaks ties).
- A cancelled timer is marked, not searched for; it never fires and never shortens the
  loop's wait (the heap's head is cleaned before the wait is computed). When most of the
  heap is cancelled it is rebuilt in place, so cancel-heavy code does not grow it without
  bound.
- A timer added while timers are running (delay 0 included) fires in the next iteration:
  a run only fires timers whose sequence predates it, so a callback that re-arms itself
  cannot starve I/O.

Why a sorted list: servers mostly add timers in deadline order (one timeout for every
connection), and a sorted list is a valid heap. While timers arrive in order, adding one
is an append and running the due ones is a bisect and one slice, where ``heappop`` would
compare ``log n`` timers through their rich comparison for each (popping 100k timers
that way is most of what firing them costs). A timer out of order turns the list into an
ordinary heap (``heappush``/``heappop``) until it is empty, or until a run with many due
timers sorts it: when a sample of its leaves says a sixteenth or more is due, or after
popping an eighth of it one by one (so a sort is always paid for by the pops it saves).

Why a Timer *is* a list: making one costs no Python ``__init__``, the heap compares
``[deadline, seq, ...]`` in C, and the loop reads and writes its slots by index; the named
attributes below are views of the slots. The unique sequence number means the callback
slot is never compared.

Thread and signal safety: a signal handler or another thread may add a timer while the
loop sleeps in ``poll()`` (the loop's own code is not touching the heap then). Each step
that must be atomic is one C call or, on CPython 3.11 and later, a run of instructions
with no eval-breaker check between them (no call, no backward jump).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from heapq import heapify, heappop
from time import monotonic
from typing import Any

__all__ = ["Timer", "TimerHeap"]

# Slots of a Timer.
_DEADLINE, _SEQ, _CALLBACK, _ARGS, _HEAP = range(5)


class Timer(list[Any]):
    """A scheduled call, returned by :meth:`danga.Loop.add_timer`.

    Once it has fired or been cancelled (or its loop was reset or closed), its callback
    slot is None and :attr:`cancelled` is True: cancelling then is a no-op.
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
            # The heap slot stays set: "counted in heap._cancelled". Whoever drops the
            # timer from the heap (or from a run's due list) uncounts it and clears it.
            heap._cancelled = n = heap._cancelled + 1
            if n > heap.COMPACT_MIN and n * 2 > len(heap._heap) and not heap._pending:
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
    """The loop's timers. ``Loop.add_timer`` adds to ``_heap`` directly (its hot path: an
    append while that keeps the list sorted, else ``heappush`` and ``_sorted = False``)
    and ``Timer.cancel`` counts ``_cancelled``."""

    __slots__ = ("_cancelled", "_heap", "_pending", "_seq", "_sorted")

    #: Compact when more than half the heap (and at least this many) is cancelled.
    COMPACT_MIN = 64
    #: A heap this large is sorted, not popped, when a sample says many timers are due.
    SORT_MIN = 256

    def __init__(self) -> None:
        self._heap: list[Timer] = []  # a heap, and sorted while _sorted
        self._seq = 0
        self._cancelled = 0  # cancelled timers still in _heap or in a _pending list
        self._sorted = True
        # The due lists that runs have taken out of _heap and not finished (a callback
        # may run the loop again: a stack). Compaction waits until it is empty.
        self._pending: list[list[Timer]] = []

    def __len__(self) -> int:
        """Timers that are still going to fire."""
        n = len(self._heap) - self._cancelled
        for due in self._pending:  # only while timers run: count what is waiting there
            for timer in due:
                if timer[_CALLBACK] is not None:
                    n += 1
                elif timer[_HEAP] is not None:
                    n += 1  # cancelled, counted in _cancelled but not in len(_heap)
        return n

    def compact(self) -> None:
        """Drop the cancelled timers (Timer.cancel calls it when most are cancelled)."""
        heap = self._heap
        # In place: the loop may hold this list while callbacks cancel timers. Filtering
        # keeps a sorted list sorted.
        heap[:] = [t for t in heap if t[_CALLBACK] is not None]
        if not self._sorted:
            heapify(heap)
        self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The deadline of the next live timer, dropping cancelled ones at the head."""
        heap = self._heap
        if not heap:
            self._sorted = True
            return None
        if heap[0][_CALLBACK] is not None:
            return heap[0][_DEADLINE]  # type: ignore[no-any-return]
        if self._sorted:
            i = 1
            size = len(heap)
            while i < size and heap[i][_CALLBACK] is None:
                i += 1
            del heap[:i]  # one slice; the rest stays sorted
            self._cancelled -= i
        else:
            while heap and heap[0][_CALLBACK] is None:
                heappop(heap)
                self._cancelled -= 1
        if not heap:
            self._sorted = True
            return None
        return heap[0][_DEADLINE]  # type: ignore[no-any-return]

    def run_due(self, now: float, failed: Callable[[Exception, Any], None]) -> None:
        """Fire the timers due at *now* that existed before this call, in order.

        ``failed(exc, callback)`` is called for an exception raised by a callback; any
        other exception (KeyboardInterrupt, SystemExit) propagates, and the due timers not
        yet run stay scheduled.
        """
        limit = self._seq
        if not self._sorted:
            heap = self._heap
            if len(heap) >= self.SORT_MIN and _many_due(heap, now):
                heap.sort()  # before popping: a heap fresh from heappush is nearly sorted
                self._sorted = True
            elif not self._pop_due(now, limit, failed):
                return
        self._run_sorted(now, limit, failed)

    def _pop_due(self, now: float, limit: int, failed: Callable[[Exception, Any], None]) -> bool:
        """Fire due timers from an unsorted heap, one ``heappop`` each. Returns True when
        the rest are to be run from the sorted list (the heap was sorted meanwhile)."""
        heap = self._heap
        budget = max(32, len(heap) >> 3)
        while heap:
            head = heap[0]
            if head[0] > now or head[1] > limit:
                return False  # not due, or added by a callback of this run: next iteration
            if self._sorted:
                return True  # a callback emptied and refilled it in order
            timer = heappop(heap)
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
            budget -= 1
            if not budget and not self._sorted and heap and heap[0][0] <= now:
                # Many due at once: sorting the rest (in C) is cheaper than popping it one
                # by one, and gives the sorted mode to what follows.
                heap.sort()
                self._sorted = True
                return True
        self._sorted = True  # empty
        return False

    def _run_sorted(self, now: float, limit: int, failed: Callable[[Exception, Any], None]) -> None:
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        # Everything due that predates this run: [deadline, seq] < [now, limit + 1].
        k = bisect_right(heap, [now, limit + 1])
        due = heap[:k]
        del heap[:k]  # what is left is still sorted
        pending = self._pending
        pending.append(due)
        try:
            for timer in due:
                callback = timer[_CALLBACK]
                if callback is None:
                    if timer[_HEAP] is not None:  # cancelled while it waited: uncount it
                        timer[_HEAP] = None
                        self._cancelled -= 1
                    continue
                timer[_CALLBACK] = None  # fired: cancel() and a second run are no-ops
                timer[_HEAP] = None
                try:
                    callback(*timer[_ARGS])
                except Exception as exc:
                    failed(exc, callback)
        except BaseException:
            # KeyboardInterrupt or SystemExit from a callback: what has not run stays.
            self._keep(due)
            raise
        finally:
            pending.pop()
        if not pending:  # compaction waited for the run to end
            n = self._cancelled
            if n > self.COMPACT_MIN and n * 2 > len(heap):
                self.compact()

    def _keep(self, due: list[Timer]) -> None:
        """Put the timers of an interrupted run that have not run back in the heap."""
        rest = []
        for timer in due:
            if timer[_CALLBACK] is not None:
                rest.append(timer)
            elif timer[_HEAP] is not None:  # cancelled meanwhile: drop and uncount it
                timer[_HEAP] = None
                self._cancelled -= 1
        if rest:
            heap = self._heap
            heap.extend(rest)
            heap.sort()
            self._sorted = True

    def clear(self) -> None:
        """Drop every timer (Loop.reset and Loop.close): none of them will fire, not even
        those a run in progress has yet to reach."""
        for timers in (self._heap, *self._pending):
            for timer in timers:
                timer[_CALLBACK] = None
                timer[_HEAP] = None
        self._heap.clear()
        self._cancelled = 0
        self._sorted = True


def _many_due(heap: list[Timer], now: float) -> bool:
    """Whether a sixteenth or more of *heap* looks due: one of 8 leaves spread over it is.

    Half of a heap's entries are leaves, and a due leaf has its ~log n ancestors due, so
    the sample estimates the fraction due without disturbing the heap.
    """
    size = len(heap)
    first = size >> 1
    step = (size - first) >> 3
    return any(heap[i][0] <= now for i in range(first, size, step))


def check_delay(seconds: object) -> None:
    """Raises TypeError unless *seconds* is a real number, ValueError if it is NaN."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"timer delay must be a number of seconds (int or float), "
            f"not {type(seconds).__name__}"
        )
    if math.isnan(seconds):
        raise ValueError("timer delay is NaN; pass a number of seconds")
