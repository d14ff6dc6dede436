"""Timers: a heap keyed by (deadline, sequence) on the monotonic clock, which is most of
the time simply a sorted list.

- Equal deadlines fire in the order they were added (the sequence number breaks ties).
- A cancelled timer is marked, not searched for; it never fires and never shortens the
  loop's wait (the heap's head is cleaned before the wait is computed). When most of the
  heap is cancelled it is rebuilt in place, so cancel-heavy code does not grow it without
  bound.
- The deadline is ``now + seconds`` for every delay, negative ones included: a timer
  added with -1 fires before one added earlier with 0, as in Danga (it orders by the
  true deadline). ``math.inf`` is a valid delay (never fires; the loop's waits are
  clamped to a day, docs/internals.md#long-waits).
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
The due slice goes to one queue shared by every run (``_due``): a callback that runs the
loop again fires the rest of it first, in order, and a run cut short by
KeyboardInterrupt leaves it to the next run.

Why a Timer *is* a list: making one costs no Python ``__init__``, the heap compares
``[deadline, seq, ...]`` in C, and the loop reads and writes its slots by index; the named
attributes below are views of the slots. The unique sequence number means the callback
slot is never compared.

Signal and thread safety: a signal handler (or another thread) may add or cancel timers
at any moment, also while timers run. :meth:`TimerHeap.add` pushes first and then
wakes the loop if it is between computing its wait and polling (``Waker.polling``), so
a timer added from another thread is never slept through
(docs/internals.md#lost-wakeup). Every change to the heap is one C call, except
where a run scans or slices the sorted list: a signal handler can run at a call or a
backward jump in between, so those steps check afterwards that no timer was pushed out
of order (``_sorted``) and no compaction happened (``_epoch``), and redo the step
another way if one did.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from time import monotonic
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._waker import Waker

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
            # timer from the heap (or from the due queue) uncounts it and clears it.
            heap._cancelled = n = heap._cancelled + 1
            # Most of all it holds (the due queue's length is read only near that point).
            if (n > heap.COMPACT_MIN and n * 2 > len(heap._heap)
                    and n * 2 > len(heap._heap) + len(heap._due)):
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
    """The loop's timers. :meth:`add` is ``Loop.add_timer`` (the loop binds it directly:
    one Python call per timer) and ``Timer.cancel`` counts ``_cancelled``."""

    __slots__ = ("_cancelled", "_due", "_epoch", "_heap", "_seq", "_sorted", "waker")

    #: Compact when more than half the heap (and at least this many) is cancelled.
    COMPACT_MIN = 64
    #: A heap this large is sorted, not popped, when a sample says many timers are due.
    SORT_MIN = 256

    def __init__(self) -> None:
        self._heap: list[Timer] = []  # a heap, and sorted while _sorted
        self._seq = 0
        self._cancelled = 0  # cancelled timers still in _heap or _due
        self._sorted = True
        # Due timers a run has taken out of the sorted list and not fired yet, in order.
        # One queue for every run: a callback that runs the loop again (a nested run)
        # fires the rest of it first, and an interrupted run leaves it to the next one.
        self._due: deque[Timer] = deque()
        self._epoch = 0  # counts compactions: a run checks none happened mid-slice
        #: The loop's Waker (set by the loop); None once the loop is closed.
        self.waker: Waker | None = None

    def add(self, seconds: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(*args)`` after *seconds* (fractional; the deadline is
        ``now + seconds`` even when negative; ``math.inf`` never fires).

        Safe from a signal handler and from another thread (it wakes a sleeping loop).

        Raises:
            TypeError: *seconds* is not a number or *callback* is not callable.
            ValueError: *seconds* is NaN.
            RuntimeError: the loop is closed.
        """
        waker = self.waker
        if waker is None:
            raise RuntimeError("add_timer(): this danga.Loop is closed; create a new one "
                               "with danga.Loop() (or call reset() to reopen it)")
        cls = seconds.__class__
        # Fast path for plain numbers; x != x is NaN's test without a call to math.isnan.
        if (cls is not float and cls is not int) or seconds != seconds:  # noqa: PLR0124
            check_delay(seconds)
        if not callable(callback):
            raise TypeError(f"add_timer() callback must be callable, "
                            f"not {type(callback).__name__}")
        self._seq = seq = self._seq + 1
        try:
            deadline = monotonic() + seconds
        except OverflowError:  # an int too large for a float: as good as infinite
            deadline = math.inf if seconds > 0 else -math.inf
        timer = Timer((deadline, seq, callback, args, self))
        heap = self._heap
        if self._sorted and (not heap or deadline >= heap[-1][0]):
            heap.append(timer)  # in order, the usual case: the list stays sorted
        else:
            self._sorted = False
            heappush(heap, timer)
        if waker.polling:  # a signal handler or a thread, while the loop computes its wait
            waker.wake()
        return timer

    def __len__(self) -> int:
        """Timers that are still going to fire."""
        return len(self._heap) + len(self._due) - self._cancelled

    def compact(self) -> None:
        """Drop the cancelled timers from the heap (Timer.cancel calls it when most are)."""
        heap = self._heap
        # In place: a run may hold this list while callbacks cancel timers. Filtering
        # keeps a sorted list sorted.
        heap[:] = [t for t in heap if t[_CALLBACK] is not None]
        if not self._sorted:
            heapify(heap)
        due = self._due
        if due:  # in place too: a run is popping from it
            live = [t for t in due if t[_CALLBACK] is not None]
            due.clear()
            due.extend(live)
        self._cancelled = 0
        self._epoch += 1

    def next_deadline(self) -> float | None:
        """The deadline of the next live timer, dropping cancelled ones at the head."""
        due = self._due
        while due:
            timer = due[0]
            if timer[_CALLBACK] is not None:
                return timer[_DEADLINE]  # type: ignore[no-any-return]
            if timer[_HEAP] is None:  # an outer run is firing it (nested run)
                self._cancelled -= 1
                due.popleft()
                continue
            self._drop(due.popleft())
        heap = self._heap
        if not heap:
            self._sorted = True
            return None
        if heap[0][_CALLBACK] is not None:
            return heap[0][_DEADLINE]  # type: ignore[no-any-return]
        if self._sorted:
            epoch = self._epoch
            i = 1
            size = len(heap)
            while i < size and heap[i][_CALLBACK] is None:
                i += 1
            dropped = heap[:i]
            del heap[:i]  # one slice; the rest stays sorted
            if not self._sorted or self._epoch != epoch:
                # A signal handler (or a thread) added a timer out of order or compacted
                # the heap during the scan: the slice may hold live timers. Keep them.
                heap.extend(t for t in dropped if t[_CALLBACK] is not None)
                heapify(heap)
                self._sorted = False
            for timer in dropped:
                if timer[_CALLBACK] is None:
                    self._drop(timer)
        else:
            while heap and heap[0][_CALLBACK] is None:
                self._drop(heappop(heap))
        if not heap:
            self._sorted = True
            return None
        return heap[0][_DEADLINE]  # type: ignore[no-any-return]

    def _drop(self, timer: Timer) -> None:
        # A cancelled timer leaves the heap or the due queue: uncount it (once).
        if timer[_HEAP] is not None:
            timer[_HEAP] = None
            self._cancelled -= 1

    def run_due(self, now: float, failed: Callable[[Exception, Any], None]) -> None:
        """Fire the timers due at *now* that existed before this call, in order.

        ``failed(exc, callback)`` is called for an exception raised by a callback; any
        other exception (KeyboardInterrupt, SystemExit) propagates, and the due timers not
        yet run stay scheduled (the next run fires them first).
        """
        # First take every due timer out into _due (no callback runs meanwhile, so none
        # of theirs can join), then fire the queue: what a run that called us (a nested
        # run) or an interrupted one left there goes first, as it is the earliest.
        limit = self._seq
        if not self._sorted:
            heap = self._heap
            if len(heap) >= self.SORT_MIN and _many_due(heap, now):
                heap.sort()  # before popping: a heap fresh from heappush is nearly sorted
                self._sorted = True
            else:
                self._pop_due(now, limit)
        if self._sorted:
            self._take_sorted(now, limit)
        if self._due:
            self._fire_due(failed)

    def _pop_due(self, now: float, limit: int) -> None:
        """Move due timers from an unsorted heap to _due, one ``heappop`` each; when many
        are due, sort the rest instead (then _take_sorted takes them)."""
        heap, due = self._heap, self._due
        budget = max(32, len(heap) >> 3)
        while heap:
            head = heap[0]
            if head[0] > now or head[1] > limit:
                return  # not due, or added after this run began: next iteration
            if not budget:
                # Many due at once: sorting the rest (in C) is cheaper than popping it one
                # by one, and gives the sorted mode to what follows.
                heap.sort()
                self._sorted = True
                return
            due.append(heappop(heap))
            budget -= 1
        self._sorted = True  # empty

    def _take_sorted(self, now: float, limit: int) -> None:
        """Move the due prefix of the sorted list to _due: one bisect, one slice."""
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        epoch = self._epoch
        # Everything due that predates this run: [deadline, seq] < [now, limit + 1].
        k = bisect_right(heap, [now, limit + 1])
        chunk = heap[:k]
        del heap[:k]  # what is left is still sorted
        if not self._sorted or self._epoch != epoch:
            # A signal handler (or a thread) added a timer out of order or compacted the
            # heap between the bisect and the slice: the slice may be wrong. Undo it and
            # pop one by one instead (exact, and it honours *limit*).
            heap.extend(chunk)
            heapify(heap)
            self._sorted = False
            self._pop_due(now, limit)
            if self._sorted:
                self._take_sorted(now, limit)
            return
        self._due.extend(chunk)

    def _fire_due(self, failed: Callable[[Exception, Any], None]) -> None:
        due = self._due
        popleft = due.popleft
        while due:
            timer = due[0]
            callback = timer[_CALLBACK]
            if callback is None:
                if timer[_HEAP] is None:  # an outer run is firing it (nested run)
                    self._cancelled -= 1
                    popleft()
                    continue
                self._drop(popleft())  # cancelled while it waited
                continue
            timer[_CALLBACK] = None  # fired: cancel() and a second run are no-ops
            timer[_HEAP] = None
            self._cancelled += 1  # a dead entry of _due until it is popped below
            try:
                callback(*timer[_ARGS])
            except Exception as exc:
                failed(exc, callback)
            finally:
                if due and due[0] is timer:
                    self._cancelled -= 1
                    popleft()

    def clear(self) -> None:
        """Drop every timer (Loop.reset and Loop.close): none of them will fire, not even
        those a run in progress has yet to reach."""
        for timers in (self._heap, self._due):
            for timer in timers:
                timer[_CALLBACK] = None
                timer[_HEAP] = None
        self._heap.clear()
        self._due.clear()
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
            f"add_timer() delay must be a number of seconds (int or float), "
            f"not {type(seconds).__name__}"
        )
    if math.isnan(seconds):
        raise ValueError("add_timer() delay is NaN; pass a number of seconds "
                         "(math.inf: never)")
