"""The event loop: descriptor map, interest changes, dispatch, post-event work, run().

One iteration, in order (DESIGN.md §1):

    run due timers -> flush pending interest changes -> poller.poll(timeout)
    -> dispatch each (fd, mask): read, write, err, hup, skipping closed objects
    -> post-event work: re-fire pushed-back reads, really close deferred closes,
       per-object then global post-loop callbacks -> next iteration (or stop)

The loop owns every piece of state; the poller is a thin translation to the kernel.
Recovery lives here so that every backend gets it:

- an fd that nothing owns has its registration removed (danga never closes it); if the
  kernel keeps reporting it (epoll's dup-then-close trap), the poller is rebuilt;
- an fd closed behind danga's back (ERR with EBADF) closes its object instead of spinning;
- objects created during a batch never receive that batch's events (fd reuse);
- a loop used in a forked child rebuilds its poller before its first poll there.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import weakref
from collections.abc import Callable, Mapping
from heapq import heappush
from time import monotonic
from typing import TYPE_CHECKING, Any

from . import backends as _backends
from .poller import ERR, HUP, READ, WRITE, fd_is_open
from .timers import Timer, TimerHeap, check_delay

if TYPE_CHECKING:
    from .poller import Poller
    from .socket import Socket

__all__ = ["Loop", "get_loop"]

logger = logging.getLogger("danga")

PostLoopCallback = Callable[[dict[int, "Socket"], "OtherFds"], Any]
ExceptionHandler = Callable[["Loop", dict[str, Any]], Any]
OtherFdCallback = Callable[[int], Any]

_STAGES = ("event_read", "event_write", "event_err", "event_hup")
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()
_graveyard: list[Any] = []  # pollers inherited through fork that must not be closed


def _after_fork_in_child() -> None:
    for loop in list(_live_loops):
        loop._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_callable(cb: object, what: str) -> None:
    if not callable(cb):
        raise TypeError(f"{what} must be callable, not {type(cb).__name__}")


class OtherFds(dict[int, OtherFdCallback]):
    """The live map fd -> callback(mask) for fds that no Socket owns.

    Changes take effect at once, whether made through :meth:`Loop.add_other_fds`,
    :meth:`Loop.set_other_fds` or directly on this dict: the fd is registered for READ
    when added and unregistered when removed. danga never closes these fds.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: Loop) -> None:
        super().__init__()
        self._loop = loop

    def __setitem__(self, fd: int, callback: OtherFdCallback) -> None:
        fd = _as_fd(fd)
        _check_callable(callback, f"the other_fds callback for fd {fd}")
        self._loop._watch_other(fd, True)
        super().__setitem__(fd, callback)

    def __delitem__(self, fd: int) -> None:
        super().__delitem__(fd)
        self._loop._watch_other(fd, False)

    def pop(self, fd: int, *default: Any) -> Any:
        had = fd in self
        value = super().pop(fd, *default)
        if had:
            self._loop._watch_other(fd, False)
        return value

    def popitem(self) -> tuple[int, OtherFdCallback]:
        fd, cb = super().popitem()
        self._loop._watch_other(fd, False)
        return fd, cb

    def setdefault(self, fd: int, default: Any = None) -> Any:
        if fd not in self:
            self[fd] = default
        return self[fd]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for fd, cb in dict(*args, **kwargs).items():
            self[fd] = cb

    def clear(self) -> None:
        for fd in list(self):
            del self[fd]


def _as_fd(fd: object) -> int:
    if isinstance(fd, bool) or not isinstance(fd, int):
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(f"an fd must be an int or have fileno(), not {type(fd).__name__}")
        fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"invalid fd {fd!r}: it must be a non-negative int (is it closed?)")
    return fd


class Loop:
    """An event loop over one backend.

    ``backend`` is a backend name (or a comma-separated preference list), a Poller class,
    or None for the automatic choice (``DANGA_BACKEND``, else the best available).

    Raises:
        UnknownBackend: a named backend does not exist.
        BackendUnavailable: the chosen backend cannot be used here.
    """

    def __init__(self, backend: str | type[Poller] | None = None) -> None:
        self._spec = backend
        self._poller_cls: type[Poller] = _backends.choose(backend)
        #: The Poller instance (``loop.backend.name`` says which).
        self.backend: Poller = self._poller_cls()
        #: fd -> Socket, live. Closed objects stay until post-event work reaps them.
        self.descriptor_map: dict[int, Socket] = {}
        #: fd -> callback(mask) for fds no Socket owns, live.
        self.other_fds: OtherFds = OtherFds(self)
        self._kernel: dict[int, int] = {}  # what the poller has, per fd
        self._dirty: dict[int, Socket] = {}  # objects whose wanted mask may differ
        self._push_back: dict[int, Socket] = {}
        self._to_close: list[tuple[Socket, Any]] = []
        self._plc: dict[Socket, PostLoopCallback] = {}
        self._post_loop_callback: PostLoopCallback | None = None
        self._timers = TimerHeap()
        self._loop_timeout: float | None = None  # seconds; None blocks (Danga's -1)
        self._profiling = False
        self._profile: dict[str, list[float]] = {}
        self._exception_handler: ExceptionHandler | None = None
        self._running = False
        self._stopping = False
        self._closed = False
        self._forked = False
        self._batch = 0  # incremented after every poll; Socket._born compares with it
        self._strays: dict[int, int] = {}  # unowned fd -> batch it was last removed in
        self._in_poll = False  # a signal handler or thread changing timers must wake us
        # The self-pipe exists from the start: poll and select cannot see an fd that is
        # registered by a signal handler while they wait (CPython retries EINTR with the
        # fd array it built before).
        self._waker: _Waker | None = None
        self._make_waker()
        _live_loops.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._running else "idle"
        return (
            f"<danga.Loop backend={self.backend.name} {state} "
            f"sockets={len(self.descriptor_map)} timers={len(self._timers)}>"
        )

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Run iterations until a post-loop callback returns false or :meth:`stop` is called.

        Raises:
            RuntimeError: the loop is closed or already running.
            Exception: whatever a custom exception handler raises.
        """
        self._check_open()
        if self._running:
            raise RuntimeError("this danga.Loop is already running; run() is not re-entrant")
        self._running = True
        # A stop() that came before run() is kept, as asyncio does: one iteration, then out.
        try:
            while self._run_once() and not self._stopping:
                pass
        finally:
            self._running = False
            self._stopping = False

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration (from a callback, a signal
        handler or another thread: a sleeping poll is woken). Called before :meth:`run`,
        it makes the next run() do one iteration without waiting and return."""
        self._stopping = True
        if self._in_poll:
            self.wakeup()

    def wakeup(self) -> None:
        """Make a sleeping poll return now. Safe from signal handlers and other threads;
        calls coalesce (one byte at most waits in the loop's self-pipe)."""
        waker = self._waker
        if waker is not None:
            waker.wake()

    def run_once(self, timeout: float | None = None) -> bool:
        """Run one iteration, waiting at most *timeout* seconds (None: as :meth:`run` would).

        Returns the post-loop callbacks' verdict (False: a callback asked to stop).

        Raises:
            RuntimeError: the loop is closed.
        """
        self._check_open()
        return self._run_once(timeout)

    def _run_once(self, limit: float | None = None) -> bool:
        if self._forked:
            self._after_fork()
        timeout = self._loop_timeout if limit is None else limit
        timers = self._timers
        if timers._heap or timers._due:
            timeout = self._timers_then_wait(timeout)
        if self._dirty:
            self._flush()
        if self._stopping or self._closed:
            timeout = 0.0
        self._in_poll = True
        try:
            events = self.backend.poll(timeout)
        finally:
            self._in_poll = False
        self._batch += 1
        if events:
            if self._profiling:
                self._dispatch_profiled(events)
            else:
                self._dispatch(events)
        if (self._push_back or self._to_close or self._plc
                or self._post_loop_callback is not None):
            return self._post_event()
        return True

    def _timers_then_wait(self, timeout: float | None) -> float | None:
        """Run the due timers; return the wait: the earlier of the next timer and *timeout*."""
        timers = self._timers
        deadline = timers.next_deadline()
        if deadline is None:
            return timeout
        now = monotonic()
        if deadline <= now:
            timers.run_due(now, self._timer_failed)
            if (self._plc or self._post_loop_callback is not None or self._push_back
                    or self._to_close):
                # Don't sleep before post-event work has seen what the timers did: with
                # the last timer gone and no fds, Danga 1.62 blocked forever here (§4.2).
                return 0.0
            deadline = timers.next_deadline()
            if deadline is None:
                return timeout
            now = monotonic()
        wait = deadline - now if deadline > now else 0.0
        return wait if timeout is None or wait < timeout else timeout

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        # The hot path: one dict lookup per fd, bit tests on local constants, no allocation.
        dmap = self.descriptor_map
        batch = self._batch
        for fd, mask in events:
            obj = dmap.get(fd)
            if obj is None:
                self._unowned(fd, mask)
                continue
            if obj.closed or obj._born == batch:
                continue  # closed earlier in this batch, or new on a reused fd number
            mask &= obj._event_watch
            stage = 0
            try:
                if mask & READ:
                    obj.event_read()
                if mask & WRITE and not obj.closed:
                    stage = 1
                    obj.event_write()
                if mask & (ERR | HUP):
                    if mask & ERR and not obj.closed and self._fd_alive(obj):
                        stage = 2
                        obj.event_err()
                    if mask & HUP and not obj.closed:
                        stage = 3
                        obj.event_hup()
            except Exception as exc:
                self._callback_failed(exc, obj, getattr(obj, _STAGES[stage], None),
                                      _STAGES[stage])

    def _dispatch_profiled(self, events: list[tuple[int, int]]) -> None:
        dmap = self.descriptor_map
        profile = self._profile
        for fd, mask in events:
            obj = dmap.get(fd)
            if obj is None:
                self._unowned(fd, mask)
                continue
            if obj.closed or obj._born == self._batch:
                continue
            mask &= obj._event_watch
            cls = type(obj).__name__
            for bit, stage, short in ((READ, 0, "read"), (WRITE, 1, "write"),
                                      (ERR, 2, "err"), (HUP, 3, "hup")):
                if not mask & bit or obj.closed or (bit == ERR and not self._fd_alive(obj)):
                    continue
                before = os.times()
                try:
                    getattr(obj, _STAGES[stage])()
                except Exception as exc:
                    self._callback_failed(exc, obj, getattr(obj, _STAGES[stage], None),
                                          _STAGES[stage])
                after = os.times()
                row = profile.setdefault(f"{cls}-{short}", [0.0, 0.0, 0])
                row[0] += after.user - before.user
                row[1] += after.system - before.system
                row[2] += 1

    def _unowned(self, fd: int, mask: int) -> None:
        if self._waker is not None and fd == self._waker.fd:
            self._waker.drain()
            return
        callback = self.other_fds.get(fd)
        if callback is not None:
            try:
                callback(mask)
            except Exception as exc:
                self._callback_failed(exc, None, callback, f"the other_fds callback of fd {fd}")
            return
        logger.debug("fd %d reported %#x but nothing owns it; removing its registration",
                     fd, mask)
        last = self._strays.get(fd)
        self._strays[fd] = self._batch
        if last is not None and last >= self._batch - 1:
            # Removed last time and reported again: a registration that cannot be removed
            # (epoll after dup-then-close, pitfalls C3). Only a fresh poller forgets it.
            self._strays.clear()
            self._rebuild_poller(f"fd {fd} kept reporting events after it was removed")
            return
        if len(self._strays) > 4096:
            self._strays = {fd: self._batch}
        have = self._kernel.pop(fd, 0)
        self.backend.modify(fd, have or (mask & (READ | WRITE)) or mask, 0)

    def _fd_alive(self, obj: Socket) -> bool:
        """On ERR: is the fd still open? One closed behind danga's back (poll's POLLNVAL,
        select's EBADF) would report ERR forever, so its object is closed here, without
        closing the fd number again. Errors are rare: the check is off the hot path."""
        if fd_is_open(obj.fd):
            return True
        logger.warning("%s: its fd %d was closed behind danga's back; closing it",
                       obj.as_string(), obj.fd)
        obj._lost_fd()
        return False

    def _timer_failed(self, exc: Exception, callback: Any) -> None:
        self._callback_failed(exc, None, callback, "a timer callback")

    def _post_event(self) -> bool:
        if self._push_back:
            self._refire_push_back()
        if self._to_close:
            self._reap()
        keep = True
        dmap, other = self.descriptor_map, self.other_fds
        if self._plc:
            for obj, callback in list(self._plc.items()):
                try:
                    ok = callback(dmap, other)
                except Exception as exc:
                    self._callback_failed(exc, obj, callback, "a post-loop callback")
                    continue
                if not ok:  # Danga's short-circuit: the rest wait for the next iteration
                    return False
        global_cb = self._post_loop_callback
        if global_cb is not None:
            try:
                keep = bool(global_cb(dmap, other))
            except Exception as exc:
                self._callback_failed(exc, None, global_cb, "the post-loop callback")
        return keep

    def _refire_push_back(self) -> None:
        """Re-fire event_read for objects with pushed-back data while they watch read.

        Unlike Danga, an event_read that consumes none of it is not re-fired again in this
        iteration (Danga spun forever); it is tried again after the next poll.
        """
        pending = self._push_back
        stuck: set[int] = set()
        while True:
            fired = False
            for fd, obj in list(pending.items()):
                if obj.closed or not obj._pb:
                    if pending.get(fd) is obj:
                        del pending[fd]
                    continue
                if fd in stuck or not obj._event_watch & READ:
                    continue
                before = obj._pb_size
                try:
                    obj.event_read()
                except Exception as exc:
                    self._callback_failed(exc, obj, obj.event_read, "event_read")
                if obj._pb and obj._pb_size >= before and not obj.closed:
                    stuck.add(fd)
                else:
                    fired = True
            if not fired:
                return

    def _reap(self) -> None:
        dmap = self.descriptor_map
        while self._to_close:
            batch, self._to_close = self._to_close, []
            for obj, raw in batch:
                if dmap.get(obj.fd) is obj:
                    del dmap[obj.fd]
                if raw is not None:
                    try:
                        raw.close()
                    except OSError as exc:
                        logger.debug("closing %r failed: %s", raw, exc)

    # -- exceptions ----------------------------------------------------------------------

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Call ``handler(loop, context)`` for exceptions raised by callbacks.

        ``context`` has ``"message"``, ``"exception"``, ``"object"`` (the Socket whose
        callback raised, or None) and ``"callback"``. The handler replaces the default
        completely; an exception it raises stops :meth:`run`. None restores the default.

        Raises:
            TypeError: *handler* is neither callable nor None.
        """
        self._check_open()
        if handler is not None:
            _check_callable(handler, "the exception handler")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log the traceback on the ``danga`` logger and close ``context["object"]``."""
        obj = context.get("object")
        where = f" ({obj.as_string()})" if obj is not None else ""
        logger.error("%s%s", context["message"], where, exc_info=context.get("exception"))
        if obj is not None and not obj.closed:
            obj.close("exception")

    def _callback_failed(self, exc: Exception, obj: Socket | None, callback: Any,
                         what: str) -> None:
        context = {
            "message": f"exception in {what}",
            "exception": exc,
            "object": obj,
            "callback": callback,
        }
        handler = self._exception_handler
        if handler is None:
            self.default_exception_handler(context)
        else:
            handler(self, context)

    # -- registration (used by Socket) ---------------------------------------------------

    def _register(self, obj: Socket) -> None:
        self._check_open()
        if self._forked:  # never touch the parent's epoll set from a child
            self._after_fork()
        fd = obj.fd
        mask = obj._event_watch
        self.backend.modify(fd, self._kernel.get(fd, 0), mask)
        self._kernel[fd] = mask
        self.descriptor_map[fd] = obj

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        kernel, dmap = self._kernel, self.descriptor_map
        modify = self.backend.modify
        for fd, obj in dirty.items():
            if obj.closed or dmap.get(fd) is not obj:
                continue  # closed, or forgotten by reset()
            want = obj._event_watch
            have = kernel.get(fd, 0)
            if want != have:
                try:
                    modify(fd, have, want)
                except OSError as exc:
                    kernel.pop(fd, None)
                    if not fd_is_open(fd):  # epoll/kqueue forget a closed fd silently
                        self._fd_alive(obj)
                        continue
                    logger.error("%s: cannot change its watch: %s", obj.as_string(), exc)
                    obj.close(f"watch failed: {exc}")
                    continue
                kernel[fd] = want

    def _detach(self, obj: Socket, raw: Any, steal: bool) -> None:
        """Unregister *obj* now; queue the real close (or, when stolen, forget it now)."""
        fd = obj.fd
        dmap = self.descriptor_map
        if self._forked and not self._closed:  # never touch the parent's epoll set
            self._after_fork()
        if dmap.get(fd) is obj:
            have = self._kernel.pop(fd, 0)
            if have and not self._closed:
                try:
                    self.backend.modify(fd, have, 0)
                except (OSError, RuntimeError) as exc:
                    logger.debug("unregistering fd %d failed: %s", fd, exc)
            if fd in self.other_fds:  # an other-fd callback for the same number resumes
                self._watch_other(fd, True)
            if self._push_back.get(fd) is obj:
                del self._push_back[fd]
            self._dirty.pop(fd, None)
            if steal:
                del dmap[fd]
        self._plc.pop(obj, None)
        if steal:
            return
        self._to_close.append((obj, raw))
        if self._closed:  # no post-event work will come: close it now
            self._reap()

    def _watch_other(self, fd: int, on: bool) -> None:
        self._check_open()
        if self._forked:  # never touch the parent's epoll set from a child
            self._after_fork()
        owner = self.descriptor_map.get(fd)
        if owner is not None and not owner.closed:
            return  # the Socket's interest wins; Danga dispatches to the Socket too
        want = READ if on else 0
        have = self._kernel.get(fd, 0)
        if want != have:
            self.backend.modify(fd, have, want)
            if want:
                self._kernel[fd] = want
            else:
                self._kernel.pop(fd, None)

    def _make_waker(self) -> None:
        # Kept out of _kernel and the maps: it is the loop's own, invisible to users.
        self._waker = _Waker()
        self.backend.modify(self._waker.fd, 0, READ)

    def _renew_waker(self) -> None:
        # For a fresh poller: the old one (discarded, or the parent's) must not be asked
        # to unregister it.
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()
        self._make_waker()

    def _drop_waker(self) -> None:
        waker, self._waker = self._waker, None
        if waker is not None:
            if not self._closed:
                try:
                    self.backend.modify(waker.fd, READ, 0)
                except (OSError, RuntimeError):
                    pass
            waker.close()

    def _set_plc(self, obj: Socket, callback: PostLoopCallback | None) -> None:
        if callback is None:
            self._plc.pop(obj, None)
        else:
            _check_callable(callback, "a post-loop callback")
            self._plc[obj] = callback

    # -- poller life ---------------------------------------------------------------------

    def _discard_poller(self, old: Poller) -> None:
        if self._forked:
            # The child must not close what may not be its fd (kqueue is not inherited).
            after_fork = getattr(old, "after_fork", None)
            if after_fork is not None:
                after_fork()
            else:
                _graveyard.append(old)
        else:
            old.close()

    def _rebuild_poller(self, why: str) -> None:
        old, self.backend = self.backend, self._poller_cls()
        self._discard_poller(old)
        self._renew_waker()  # after fork the self-pipe is shared with the parent
        self._forked = False
        logger.info("danga: rebuilt the %s poller: %s", self.backend.name, why)
        for fd, mask in list(self._kernel.items()):
            try:
                self.backend.modify(fd, 0, mask)
            except OSError as exc:
                del self._kernel[fd]
                obj = self.descriptor_map.get(fd)
                if obj is not None and not obj.closed:
                    obj.close(f"cannot be re-registered: {exc}")

    def _after_fork(self) -> None:
        # Documented choice (docs/reliability.md): a loop used in a forked child without
        # reset() gets a fresh poller with every registration re-armed, so the child never
        # changes the parent's epoll set.
        self._rebuild_poller(f"used in a forked child (pid {os.getpid()})")

    def reset(self) -> None:
        """Forget everything (sockets, other fds, timers, callbacks, settings) and build a
        fresh poller, chosen again as the first one was. For use after fork.

        Existing Socket objects are not closed; they are simply forgotten.

        Raises:
            UnknownBackend, BackendUnavailable: the backend can no longer be chosen.
        """
        cls = _backends.choose(self._spec)
        self.descriptor_map.clear()
        dict.clear(self.other_fds)
        self._kernel.clear()
        self._dirty.clear()
        self._push_back.clear()
        self._to_close.clear()
        self._plc.clear()
        self._post_loop_callback = None
        self._timers.clear()
        self._loop_timeout = None
        self._profiling = False
        self._profile.clear()
        self._exception_handler = None
        self._strays.clear()
        old, self._poller_cls = self.backend, cls
        self.backend = cls()
        if not self._closed:
            self._discard_poller(old)
        self._renew_waker()
        self._forked = False
        self._closed = False

    def close(self) -> None:
        """Really close pending closes, drop the timers and close the poller. Idempotent.

        Open Socket objects are not closed. Any later use of the loop raises RuntimeError.

        Raises:
            RuntimeError: the loop is running (call stop() first).
        """
        if self._closed:
            return
        if self._running:
            raise RuntimeError("cannot close a running danga.Loop; call stop() first")
        self._reap()
        self._timers.clear()
        self._drop_waker()
        self._closed = True
        self._discard_poller(self.backend)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this danga.Loop is closed; create a new one with danga.Loop() "
                "(or call reset() to reopen it)"
            )

    # -- timers and settings -------------------------------------------------------------

    def add_timer(self, seconds: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(*args)`` after *seconds* (fractional; negative: due now).

        Raises:
            TypeError: *seconds* is not a number or *callback* is not callable.
            ValueError: *seconds* is NaN.
            RuntimeError: the loop is closed.
        """
        # Inlined (it is a hot path for timer-heavy servers): validate, stamp, push.
        if self._closed:
            self._check_open()
        cls = seconds.__class__
        # Fast path for plain numbers; x != x is NaN's test without a call to math.isnan.
        if (cls is not float and cls is not int) or seconds != seconds:  # noqa: PLR0124
            check_delay(seconds)
        if not callable(callback):
            raise TypeError(f"timer callback must be callable, not {type(callback).__name__}")
        timers = self._timers
        now = monotonic()
        timers._seq = seq = timers._seq + 1
        deadline = now + seconds if seconds > 0 else now
        timer = Timer((deadline, seq, callback, args, timers))
        heap = timers._heap
        if timers._sorted and (not heap or deadline >= heap[-1][0]):
            heap.append(timer)  # in order, the usual case: the list stays sorted
        else:
            timers._sorted = False
            heappush(heap, timer)
        if self._in_poll:  # added by a signal handler (or a thread) while we sleep
            self.wakeup()
        return timer

    def set_loop_timeout(self, ms: float) -> float:
        """The longest wait per iteration, in milliseconds, as Danga's *code* does it:
        negative blocks (the default, -1), 0 returns at once, > 0 is milliseconds.
        (Danga's POD says the opposite for 0 and -1; the POD is wrong.) Returns *ms*.

        Raises:
            TypeError: *ms* is not a number.
            ValueError: *ms* is NaN.
        """
        self._check_open()
        if isinstance(ms, bool) or not isinstance(ms, (int, float)):
            raise TypeError(f"loop timeout must be a number of milliseconds, "
                            f"not {type(ms).__name__}")
        if math.isnan(ms):
            raise ValueError("loop timeout is NaN; pass milliseconds (-1 blocks)")
        self._loop_timeout = None if ms < 0 else ms / 1000.0
        return ms

    def set_post_loop_callback(self, callback: PostLoopCallback | None) -> None:
        """The global post-loop callback, ``callback(descriptor_map, other_fds)``, called
        after each iteration; a false return ends :meth:`run`. None removes it.

        Raises:
            TypeError: *callback* is neither callable nor None.
        """
        self._check_open()
        if callback is not None:
            _check_callable(callback, "the post-loop callback")
        self._post_loop_callback = callback

    def add_other_fds(self, mapping: Mapping[int, OtherFdCallback]) -> None:
        """Watch more foreign fds for READ: ``{fd: callback(mask)}``; later entries win.

        Raises:
            TypeError: a callback is not callable or a key is not an fd.
            OSError: an fd cannot be watched (nothing of *mapping* is kept then).
        """
        self._check_open()
        items = self._validate_other(mapping)
        done: list[int] = []
        try:
            for fd, cb in items:
                fresh = fd not in self.other_fds
                self.other_fds[fd] = cb
                if fresh:
                    done.append(fd)
        except BaseException:
            for fd in done:
                self.other_fds.pop(fd, None)
            raise

    def set_other_fds(self, mapping: Mapping[int, OtherFdCallback]) -> None:
        """Replace the whole foreign-fd map (see :meth:`add_other_fds`).

        Raises:
            TypeError: a callback is not callable or a key is not an fd.
        """
        self._check_open()
        items = self._validate_other(mapping)
        wanted = dict(items)
        for fd in [fd for fd in self.other_fds if fd not in wanted]:
            del self.other_fds[fd]
        self.add_other_fds(wanted)

    @staticmethod
    def _validate_other(mapping: Mapping[int, OtherFdCallback]) -> list[tuple[int, Any]]:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"other fds must be a mapping fd -> callback, "
                            f"not {type(mapping).__name__}")
        items = []
        for fd, cb in mapping.items():
            fd = _as_fd(fd)
            _check_callable(cb, f"the other_fds callback for fd {fd}")
            items.append((fd, cb))
        return items

    # -- introspection -------------------------------------------------------------------

    def watched_sockets(self) -> int:
        """How many objects the descriptor map holds (closed ones until reaped)."""
        return len(self.descriptor_map)

    def to_close(self) -> list[Socket]:
        """The Socket objects closed but not yet really closed (post-event work does)."""
        return [obj for obj, _ in self._to_close]

    def have_epoll(self) -> bool:
        """True when this loop's backend is epoll (Danga's HaveEpoll question)."""
        return self.backend.name == "epoll"

    def timers(self) -> int:
        """How many timers are still going to fire."""
        return len(self._timers)

    # -- profiling and debugging ---------------------------------------------------------

    def enable_profiling(self) -> bool:
        """Start (clearing) per-class CPU profiling of event handlers. Returns True.

        Raises:
            RuntimeError: the loop is closed.
        """
        self._check_open()
        self._profile.clear()
        self._profiling = True
        return True

    def disable_profiling(self) -> None:
        """Stop profiling; the data stays."""
        self._profiling = False

    def profiling_data(self) -> dict[str, list[float]]:
        """The live dict ``"Class-read|write|err|hup" -> [user s, system s, calls]``."""
        return self._profile

    def debug_msg(self, fmt: str, *args: Any) -> None:
        """Danga's DebugMsg: ``>>> message`` on stderr, and DEBUG on the ``danga`` logger."""
        debug_msg(fmt, *args)


def debug_msg(fmt: str, *args: Any) -> None:
    msg = (fmt % args if args else fmt).rstrip("\n")
    sys.stderr.write(f">>> {msg}\n")
    logger.debug("%s", msg)


class _Waker:
    """A self-pipe: one byte at most outstanding, drained fully, never blocking."""

    __slots__ = ("_r", "_w", "fd")

    def __init__(self) -> None:
        import socket

        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.fd = self._r.fileno()

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except OSError:  # full (a wake is pending anyway) or closed by a racing close
            pass

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


_default: Loop | None = None


def get_loop() -> Loop:
    """The process's default loop (created on first use, anew after it was closed)."""
    global _default
    if _default is None or _default._closed:
        _default = Loop()
    return _default
