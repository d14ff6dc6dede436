"""The event loop: run/stop, one dispatch loop, post-event work, the exception handler.

One iteration, in order (docs/internals.md#architecture):

    run due timers -> compute the wait -> flush pending interest changes
    -> poller.poll(wait) -> dispatch each (fd, mask): read, write, err, hup, skipping
       closed objects and objects newer than the poll
    -> post-event work: re-fire pushed-back reads, really close deferred closes, run the
       calls from other threads and signal handlers, per-object then global post-loop
       callbacks -> next iteration (or stop)

The fd state and every call to the backend live in :mod:`danga._registry`; the
self-pipe and the queue of calls from other threads in :mod:`danga._waker`; timers in
:mod:`danga.timers`; signal handlers in :mod:`danga._signals`. This module orders them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from . import backends as _backends
from ._registry import OtherFds, Registry, as_fd
from ._waker import Waker
from .poller import ERR, HUP, MAX_TIMEOUT, READ, WRITE
from .timers import Timer, TimerHeap

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from ._signals import SignalHandlers
    from .poller import Poller
    from .socket import Socket

__all__ = ["Loop", "OtherFds", "get_loop"]

logger = logging.getLogger("danga")

PostLoopCallback = Callable[[dict[int, "Socket"], "OtherFds"], Any]
ExceptionHandler = Callable[["Loop", dict[str, Any]], Any]
OtherFdCallback = Callable[[int], Any]

_STAGES = ("event_read", "event_write", "event_err", "event_hup")
_WAKER_RETRY = 0.1  # seconds between tries to rebuild a dead wakeup channel
_SHORT = ("read", "write", "err", "hup")
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loop in list(_live_loops):
        try:
            loop._forked_child()
        except Exception:  # a failing loop must not break the child's other loops
            logger.exception("danga: preparing %r after fork failed", loop)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_callable(cb: object, what: str) -> None:
    if not callable(cb):
        raise TypeError(f"{what} must be callable, not {type(cb).__name__}")


class _Profiled:
    """Stands in for a Socket in the dispatch loop while profiling is on: each event
    method is timed (user and system CPU) into ``profiling_data()``; everything else is
    the object's own. The dispatch loop is the same one (profiling only changes how it
    looks objects up), so the order, the ``closed`` checks and the exception handling
    do not change with profiling, and cost nothing while it is off."""

    __slots__ = ("_obj", "_profile")

    def __init__(self, obj: Socket, profile: dict[str, list[float]]) -> None:
        self._obj = obj
        self._profile = profile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    def _timed(self, stage: int) -> None:
        before = os.times()
        try:
            getattr(self._obj, _STAGES[stage])()
        finally:
            after = os.times()
            key = f"{type(self._obj).__name__}-{_SHORT[stage]}"
            row = self._profile.setdefault(key, [0.0, 0.0, 0])
            row[0] += after.user - before.user
            row[1] += after.system - before.system
            row[2] += 1

    def event_read(self) -> None:
        self._timed(0)

    def event_write(self) -> None:
        self._timed(1)

    def event_err(self) -> None:
        self._timed(2)

    def event_hup(self) -> None:
        self._timed(3)


def _real(obj: Any) -> Any:
    """The Socket behind a _Profiled stand-in (off the hot path: errors only)."""
    return obj._obj if obj.__class__ is _Profiled else obj


class Loop:
    """An event loop over one backend.

    ``backend`` is a backend name (or a comma-separated preference list), a Poller class,
    or None for the automatic choice (``DANGA_BACKEND``, else the best available).

    Raises:
        UnknownBackend: a named backend does not exist.
        BackendUnavailable: the chosen backend cannot be used here.
        OSError: the poller or the wakeup channel cannot be created (out of fds).
    """

    def __init__(self, backend: str | type[Poller] | None = None) -> None:
        self._spec = backend
        cls = _backends.choose(backend)
        self._registry = reg = Registry(cls, self._lose)
        #: fd -> Socket, live. Closed objects stay until post-event work reaps them.
        self.descriptor_map: dict[int, Socket] = reg.descriptor_map
        #: fd -> callback(mask) for fds no Socket owns, live (a MutableMapping).
        self.other_fds: OtherFds = reg.other_fds
        self._push_back: dict[int, Socket] = {}
        self._to_close: deque[tuple[Socket, Any]] = deque()
        self._plc: dict[Socket, PostLoopCallback] = {}
        # Sockets danga opened for itself that nobody else can close (the stand-in that
        # finishes a TLS close, tls.py): close() closes them, reset() closes their fds.
        self._owned: set[Socket] = set()
        self._post_loop_callback: PostLoopCallback | None = None
        self._loop_timeout: float | None = None  # seconds; None blocks (Danga's -1)
        #: ``time.monotonic()`` when the last poll returned: a clock read once per
        #: iteration, for stamps that must cost no system call per event (idle timeouts).
        #: Kept up to date from the first idle timeout set on a socket of this loop on.
        self.now: float = monotonic()
        self._stamp_now = False
        self._profile: dict[str, list[float]] = {}
        self._profiling = False
        self._exception_handler: ExceptionHandler | None = None
        self._running = False  # run() in progress
        self._depth = 0  # iterations in progress (run_once may nest)
        self._stopping = False
        self._closed = False
        self._executor: Executor | None = None
        self._own_executor = False
        self._signals: SignalHandlers | None = None
        # The self-pipe exists from the start: poll and select cannot see an fd that is
        # registered by a signal handler while they wait (CPython retries EINTR with the
        # fd array it built before).
        self._waker = Waker()
        try:
            reg.watch_waker(self._waker.fd)
        except BaseException:
            self._waker.close()
            reg.close()
            raise
        self._timers = TimerHeap()
        self._timers.waker = self._waker
        # add_timer is TimerHeap.add itself: one Python call per timer (the class
        # attribute below documents it and serves subclasses that override nothing).
        self.add_timer = self._timers.add  # type: ignore[method-assign]
        _live_loops.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._depth else "idle"
        return (
            f"<danga.Loop backend={self.backend.name} {state} "
            f"sockets={len(self.descriptor_map)} timers={len(self._timers)}>"
        )

    @property
    def backend(self) -> Poller:
        """The Poller instance (``loop.backend.name`` says which)."""
        return self._registry.backend

    @backend.setter
    def backend(self, poller: Poller) -> None:
        # For tests and tools that wrap the poller (a spy); the registrations stay.
        self._registry.backend = poller

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
        waker = self._waker
        if waker.polling:
            waker.wake()

    def wakeup(self) -> None:
        """Make a sleeping poll return now (or the next one at once). Safe from signal
        handlers and other threads; calls coalesce (one byte at most is outstanding)."""
        if not self._closed:
            self._waker.wake()

    def run_once(self, timeout: float | None = None) -> bool:
        """Run one iteration, waiting at most *timeout* seconds (None: as :meth:`run` would).

        It may be called from a callback (a nested iteration). Returns the post-loop
        callbacks' verdict (False: a callback asked to stop).

        Raises:
            RuntimeError: the loop is closed.
        """
        self._check_open()
        return self._run_once(timeout)

    def _run_once(self, limit: float | None = None) -> bool:
        reg = self._registry
        if reg.forked:
            self._first_use_in_child()
        waker = self._waker
        self._depth += 1  # close() is refused while an iteration is in progress
        try:
            timers = self._timers
            heap = timers._heap
            fired = False
            now = 0.0  # a clock read this iteration may reuse (0.0: none yet)
            head = None  # the timer the deadline came from, while nothing fired
            if heap or timers._due:
                if heap and not timers._due and heap[0][2] is not None:
                    deadline = heap[0][0]  # a live head: no call (an idle timer, say)
                else:
                    deadline = timers.next_deadline()
                if deadline is not None:
                    now = monotonic()
                    if deadline <= now:
                        timers.run_due(now, self._timer_failed)
                        fired = True
                        now = 0.0  # the callbacks took time: read the clock again
                    elif not timers._due:
                        head = heap[0]
            # From here to the poll's return, a change made by a thread or a signal
            # handler writes a wake byte (see _waker): set *before* the wait is computed.
            waker.polling = True
            try:
                if (waker.calls or self._stopping or self._closed or self._push_back
                        or self._to_close or (fired and (
                            self._plc or self._post_loop_callback is not None))):
                    # Work is waiting, or post-loop callbacks must see what the timers
                    # did first (Danga 1.62 blocked forever when the last timer went and
                    # no fd was watched: docs/internals.md#last-timer-blocks).
                    timeout: float | None = 0.0
                else:
                    timeout = self._loop_timeout if limit is None else limit
                    if heap or timers._due:
                        # Looked at again inside the window: a timer a thread added
                        # before the flag was set is seen here (it is the new head, or
                        # the head was cancelled): docs/internals.md#lost-wakeup.
                        if (head is None or timers._due or not heap or heap[0] is not head
                                or head[2] is None):
                            deadline = timers.next_deadline()
                        else:
                            # Still the heap's live head, so still the earliest: its own
                            # deadline (not the one read before, which a thread may have
                            # undercut between that read and taking the head).
                            deadline = head[0]
                        if deadline is not None:
                            wait = deadline - (now or monotonic())
                            if timeout is None or wait < timeout:
                                timeout = wait
                    if timeout is not None and not 0.0 <= timeout <= MAX_TIMEOUT:
                        # Clamped (docs/internals.md#long-waits): negative is now, and
                        # longer than a day is a day (the loop then waits again).
                        timeout = MAX_TIMEOUT if timeout > 0 else 0.0
                if reg.dirty:
                    reg.flush()
                if reg.removed and self._depth == 1:
                    reg.removed.clear()  # only a nested iteration needs the older ones
                reg.gen = batch = reg.gen + 1
                events = reg.backend.poll(timeout)
            finally:
                waker.polling = False
            if self._stamp_now:  # only once a socket of this loop has an idle timeout
                self.now = monotonic()
            if events:
                self._dispatch(events, batch)
            if (self._push_back or self._to_close or waker.calls or self._plc
                    or self._post_loop_callback is not None):
                return self._post_event()
            return True
        finally:
            self._depth -= 1

    def _dispatch(self, events: list[tuple[int, int]], batch: int) -> None:
        # The hot path: one dict lookup per fd, bit tests on local constants, no
        # allocation (profiling off). Objects registered after this batch's poll began
        # (_gen >= batch) never see its events: their fd number may have been reused.
        get = self.descriptor_map.get if not self._profiling else self._profiled_get
        for fd, mask in events:
            obj = get(fd)
            if obj is None:
                self._unowned(fd, mask, batch)
                continue
            if obj.closed or obj._gen >= batch:
                continue
            # Only READ|WRITE|ERR|HUP: the shipped conformance suite holds every backend
            # to that (poll's POLLNVAL is mapped to ERR by the backend), so no check of
            # unknown bits is paid here per event.
            mask &= obj._event_watch
            stage = 0
            try:
                if mask & READ:
                    obj.event_read()
                if mask & WRITE and not obj.closed:
                    stage = 1
                    obj.event_write()
                if mask & (ERR | HUP):
                    if mask & ERR and not obj.closed and self._registry.check_alive(
                            _real(obj)):
                        stage = 2
                        obj.event_err()
                    if mask & HUP and not obj.closed:
                        stage = 3
                        obj.event_hup()
            except Exception as exc:
                real = _real(obj)
                self._callback_failed(exc, real, getattr(real, _STAGES[stage], None),
                                      _STAGES[stage])

    def _profiled_get(self, fd: int) -> Any:
        obj = self.descriptor_map.get(fd)
        return None if obj is None else _Profiled(obj, self._profile)

    def _unowned(self, fd: int, mask: int, batch: int) -> None:
        reg = self._registry
        if fd == reg.waker_fd:
            self._drain_waker()
            return
        rec = reg.unowned(fd, batch)
        if rec is None:
            return
        if mask & ERR and not reg.check_alive(rec):
            return
        try:
            rec.callback(mask)
        except Exception as exc:
            context = self._context(exc, None, rec.callback,
                                    f"the other_fds callback of fd {fd}")
            context["fd"] = fd
            self._handle(context)

    def _drain_waker(self) -> None:
        waker = self._waker
        if waker.drain():
            return
        self._registry.unwatch_waker()
        self._renew_waker("was closed behind danga's back (EOF or EBADF)")

    def _renew_waker(self, why: str | None, *, again: bool = False) -> None:
        # A failure (out of fds) leaves no channel (waker_fd -1): it is tried again at
        # the end of this iteration, then every _WAKER_RETRY seconds, so the loop never
        # goes on for good without one (and never spins on the failure either).
        try:
            self._waker.renew(why)
            self._registry.watch_waker(self._waker.fd)
        except OSError as exc:
            if not again:
                logger.error("danga: cannot rebuild the loop's wakeup channel (%s); "
                             "trying again", exc)
                self._waker.calls.append((self._retry_waker, ()))
            else:
                self.add_timer(_WAKER_RETRY, self._retry_waker)
            return
        if self._signals is not None:
            self._signals.rebind()

    def _retry_waker(self) -> None:
        if self._registry.waker_fd < 0 and not self._closed:
            self._renew_waker(None, again=True)

    def _lose(self, obj: Any, why: str, gone: bool) -> None:
        # The registry's verdict on an object: its fd is gone (closed behind danga's
        # back) or its watch was refused. Never closes the fd number if it is gone.
        if obj.closed:
            return
        if gone:
            logger.warning("%s: %s; closing it", obj.as_string(), why)
            obj._lost_fd()
        else:
            obj.close(why)

    def _timer_failed(self, exc: Exception, callback: Any) -> None:
        self._callback_failed(exc, None, callback, "a timer callback")

    # -- post-event work -----------------------------------------------------------------

    def _post_event(self) -> bool:
        if self._push_back:
            self._refire_push_back()
        if self._to_close:
            self._reap()
        waker = self._waker
        if waker.calls:
            waker.run_calls(self._call_failed)
        keep = True
        dmap, other = self.descriptor_map, self.other_fds
        plc = self._plc
        if plc:
            for obj, callback in list(plc.items()):
                # Closed (or its callback changed) by an earlier callback of this pass.
                if obj.closed or plc.get(obj) is not callback:
                    continue
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

    def _signal_failed(self, exc: Exception, callback: Any) -> None:
        self._callback_failed(exc, None, callback, "a signal handler callback")

    def _call_failed(self, exc: Exception, callback: Any) -> None:
        self._callback_failed(exc, None, callback, "a call_soon_threadsafe callback")

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
        """Really close the deferred closes. Each leaves the queue only once its close
        has been tried, so an exception (or KeyboardInterrupt) in one close never leaves
        the others open and in the descriptor map (docs/internals.md#deferred-close-exceptions)."""
        queue = self._to_close
        reg = self._registry
        while queue:
            obj, raw = queue[0]
            reg.detach(obj, forget=True)  # finishes an unregistration cut short too
            if raw is not None:
                try:
                    raw.close()
                except Exception as exc:
                    logger.error("danga: closing %r (of %s) failed: %s", raw,
                                 type(obj).__name__, exc)
            queue.popleft()

    # -- exceptions ----------------------------------------------------------------------

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Call ``handler(loop, context)`` for exceptions raised by callbacks.

        ``context`` has ``"message"``, ``"exception"``, ``"object"`` (the Socket whose
        callback raised, or None) and ``"callback"``; for an ``other_fds`` callback also
        ``"fd"``. The handler replaces the default completely; an exception it raises
        stops :meth:`run`. None restores the default.

        Raises:
            TypeError: *handler* is neither callable nor None.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        if handler is not None:
            _check_callable(handler, "set_exception_handler(): the handler")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log the traceback on the ``danga`` logger and close ``context["object"]``.

        For an ``other_fds`` callback (``context["fd"]``) it removes that fd's
        registration instead (danga never closes it), so a callback that raises every
        time is reported once, not once per iteration.
        """
        obj = context.get("object")
        where = f" ({obj.as_string()})" if obj is not None else ""
        fd = context.get("fd")
        if fd is not None and self.other_fds.get(fd) is context.get("callback"):
            logger.error("%s; fd %d is no longer watched (danga does not close it)",
                         context["message"], fd, exc_info=context.get("exception"))
            del self.other_fds[fd]
            return
        logger.error("%s%s", context["message"], where, exc_info=context.get("exception"))
        if obj is not None and not obj.closed:
            obj.close("exception")

    def _context(self, exc: Exception, obj: Socket | None, callback: Any,
                 what: str) -> dict[str, Any]:
        return {
            "message": f"exception in {what}",
            "exception": exc,
            "object": obj,
            "callback": callback,
        }

    def _handle(self, context: dict[str, Any]) -> None:
        handler = self._exception_handler
        if handler is None:
            self.default_exception_handler(context)
        else:
            handler(self, context)

    def _callback_failed(self, exc: Exception, obj: Socket | None, callback: Any,
                         what: str) -> None:
        """Report an exception of a callback (used by Socket and Listener too)."""
        self._handle(self._context(exc, obj, callback, what))

    # -- registration (used by Socket) ---------------------------------------------------

    def _register(self, obj: Socket, call: str) -> None:
        """Validate *obj*'s fd and put it in the map; the kernel learns of it at the next
        flush, with its first interest (one system call).

        Raises:
            RuntimeError: the loop is closed.
            OSError (EBADF), UnsupportedFileType, FdOutOfRange: the fd cannot be watched.
        """
        self._check_open()
        reg = self._registry
        reg.add(obj, reg.validate(obj.fd, call))

    def _detach(self, obj: Socket, raw: Any, steal: bool) -> None:
        """Unregister *obj* now; queue the real close (or, when stolen, forget it now).

        The real close is queued first: if an interrupt cuts this short, the reaping
        finishes the unregistration (it detaches again) and still closes the socket."""
        if not steal:
            self._to_close.append((obj, raw))
        self._registry.detach(obj, forget=steal)
        if self._push_back.get(obj.fd) is obj:
            del self._push_back[obj.fd]
        self._plc.pop(obj, None)
        if not steal and self._closed:  # no post-event work will come: close it now
            self._reap()

    def _set_plc(self, obj: Socket, callback: PostLoopCallback | None) -> None:
        if callback is None:
            self._plc.pop(obj, None)
        else:
            _check_callable(callback, "set_post_loop_callback(): the callback")
            self._plc[obj] = callback

    # -- threads -------------------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` on the loop thread, in the post-event phase of the
        next iteration (before post-loop callbacks), FIFO. Safe from any thread and from
        a Python signal handler; wakes a sleeping loop (coalesced: at most one byte
        outstanding, none written from the loop's own thread).

        A pass runs the calls queued before it began; a call queued by one of them runs
        in the next iteration (a callback that re-queues itself cannot starve I/O).

        Raises:
            TypeError: *callback* is not callable.
            RuntimeError: the loop is closed.
        """
        if self._closed:
            raise RuntimeError("call_soon_threadsafe() on a closed danga.Loop")
        if not callable(callback):
            raise TypeError(f"call_soon_threadsafe() takes a callable, "
                            f"not {type(callback).__name__}")
        self._waker.call_soon(callback, args)

    def run_in_thread(self, func: Callable[..., Any], *args: Any,
                      callback: Callable[[Future[Any]], Any] | None = None) -> Future[Any]:
        """Run ``func(*args)`` on the loop's executor (a ``ThreadPoolExecutor`` made on
        first use, or the one given to :meth:`set_default_executor`) and return its
        ``concurrent.futures.Future``. ``callback(future)``, if given, runs on the loop
        thread when it is done; an exception of *func* reaches it through the future,
        never the loop.

        Raises:
            TypeError: *func* or *callback* is not callable.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        _check_callable(func, "run_in_thread(): func")
        if callback is not None:
            _check_callable(callback, "run_in_thread(): callback")
        executor = self._executor
        if executor is None:
            from concurrent.futures import ThreadPoolExecutor  # on first use: light import

            executor = self._executor = ThreadPoolExecutor(thread_name_prefix="danga")
            self._own_executor = True
        future = executor.submit(func, *args)
        if callback is not None:
            def done(fut: Future[Any]) -> None:
                if not self._closed:  # a loop closed meanwhile drops the callback
                    try:
                        self._waker.call_soon(callback, (fut,))
                    except RuntimeError:
                        pass

            future.add_done_callback(done)
        return future

    def set_default_executor(self, executor: Executor) -> None:
        """Use *executor* for :meth:`run_in_thread` (``close()`` shuts it down).

        Raises:
            TypeError: *executor* is not a ``concurrent.futures.Executor``.
            RuntimeError: the loop is closed.
        """
        from concurrent.futures import Executor

        self._check_open()
        if not isinstance(executor, Executor):
            raise TypeError(f"set_default_executor() takes a concurrent.futures.Executor, "
                            f"not {type(executor).__name__}")
        self._executor = executor
        self._own_executor = True

    # -- signals -------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[..., Any],
                           *args: Any) -> None:
        """Call ``callback(*args)`` on the loop thread when signal *signum* arrives.

        The Python-level handler only records the signal and wakes the loop; the
        callback runs in the post-event phase, never in signal context. N deliveries of
        one signal before the loop gets to it give one call. Replaces an earlier handler
        of this loop for *signum*.

        Raises:
            RuntimeError: not called from the main thread, or the loop is closed.
            TypeError: *callback* is not callable.
            ValueError: *signum* is not a signal that can be caught (SIGKILL, SIGSTOP).
        """
        self._check_open()
        signals = self._signals
        if signals is None:
            from ._signals import SignalHandlers  # only loops that use signals import it

            signals = self._signals = SignalHandlers(self._waker, self._signal_failed)
        signals.add(signum, callback, args)

    def remove_signal_handler(self, signum: int) -> bool:
        """Stop handling *signum*; its previous handler is restored. True if a handler
        of this loop was removed, False otherwise.

        Raises:
            RuntimeError: not called from the main thread.
        """
        if self._signals is None:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("remove_signal_handler() must be called from the "
                                   "main thread")
            return False
        return self._signals.remove(signum)

    # -- the poller's life ---------------------------------------------------------------

    def _forked_child(self) -> None:
        # Called in a forked child (os.register_at_fork), before anything else runs:
        # park the inherited poller (never closed here), give the child its own wakeup
        # channel (its wakeups must never wake the parent), and drop the parent's calls.
        if self._closed:
            return
        self._registry.park()
        waker = self._waker
        waker.calls.clear()
        waker.polling = False
        waker.renew(None)
        self._registry.waker_fd = waker.fd  # registered by the rebuild before first use
        if self._signals is not None:
            self._signals.after_fork()  # its queued delivery went with the calls
            self._signals.rebind()
        self._executor = None  # the parent's worker threads do not exist here

    def _first_use_in_child(self) -> None:
        self._registry.rebuild(f"used in a forked child (pid {os.getpid()})")
        if self._signals is not None:
            # Taken at fork already; an at-fork hook that ran after danga's may have
            # cleared it since (asyncio's, from Python 3.12 on).
            self._signals.rebind(unset_is_ours=True)

    def reset(self) -> None:
        """Forget everything (sockets, other fds, timers, calls, callbacks, settings) and
        build a fresh poller, chosen again as the first one was. For use after fork.

        Existing Socket objects are not closed; they are simply forgotten.

        Raises:
            UnknownBackend, BackendUnavailable: the backend can no longer be chosen.
            OSError: the fresh poller or wakeup channel cannot be created.
        """
        cls = _backends.choose(self._spec)
        for obj in list(self._owned):  # forgotten below, and nobody else can close them
            raw = obj.steal_socket()  # (a forked child never touches the parent's poller)
            if raw is not None:
                raw.close()
        self._owned.clear()
        reg = self._registry
        reg.reset(cls)
        self._push_back.clear()
        self._to_close.clear()
        self._plc.clear()
        self._post_loop_callback = None
        self._timers.clear()
        self._loop_timeout = None
        self._profiling = False
        self._profile.clear()
        self._exception_handler = None
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        waker = self._waker
        waker.calls.clear()
        if self._closed:
            waker = self._waker = Waker()
            self._timers.waker = waker
        else:
            waker.renew(None)
        reg.watch_waker(waker.fd)
        self._closed = False

    def close(self) -> None:
        """Really close pending closes, drop the timers and queued calls, restore signal
        handlers, shut the executor down and close the poller. Idempotent.

        Open Socket objects are not closed. Any later use of the loop raises RuntimeError.
        One rule: a loop is never closed from inside its own iteration.

        Raises:
            RuntimeError: the loop is running (run() or a run_once() in progress, e.g.
                close() called from a callback): call stop(), and close it after run()
                returns.
        """
        if self._closed:
            return
        if self._running or self._depth:
            raise RuntimeError("cannot close a running danga.Loop (close() was called "
                               "during run() or run_once()); call stop() and close it "
                               "after run() returns")
        for obj in list(self._owned):  # their timers are dropped below
            obj.close("loop_closed")
        self._owned.clear()
        self._reap()
        self._timers.clear()
        self._timers.waker = None
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        executor, self._executor = self._executor, None
        if executor is not None and self._own_executor:
            executor.shutdown(wait=False)
        reg = self._registry
        reg.unwatch_waker()
        self._waker.calls.clear()
        self._waker.close()
        self._closed = True
        reg.close()

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
        """Call ``callback(*args)`` after *seconds* (fractional; the deadline is
        ``now + seconds`` even when negative, so order is by true deadline as in Danga;
        ``math.inf`` never fires). Safe from signal handlers and other threads.

        Raises:
            TypeError: *seconds* is not a number or *callback* is not callable.
            ValueError: *seconds* is NaN.
            RuntimeError: the loop is closed.
        """
        # Each Loop replaces this with TimerHeap.add (bound) in __init__.
        return self._timers.add(seconds, callback, *args)

    def set_loop_timeout(self, ms: float) -> float:
        """The longest wait per iteration, in milliseconds, as Danga's *code* does it:
        negative blocks (the default, -1), 0 returns at once, > 0 is milliseconds.
        (Danga's POD says the opposite for 0 and -1; the POD is wrong.) Returns *ms*.
        Waits longer than a day are clamped to a day (the loop then waits again).

        Raises:
            TypeError: *ms* is not a number.
            ValueError: *ms* is NaN.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        if isinstance(ms, bool) or not isinstance(ms, (int, float)):
            raise TypeError(f"set_loop_timeout() takes milliseconds (a number), "
                            f"not {type(ms).__name__}")
        if ms != ms:  # noqa: PLR0124 (NaN)
            raise ValueError("set_loop_timeout() got NaN; pass milliseconds (-1 blocks)")
        self._loop_timeout = None if ms < 0 else ms / 1000.0
        return ms

    def set_post_loop_callback(self, callback: PostLoopCallback | None) -> None:
        """The global post-loop callback, ``callback(descriptor_map, other_fds)``, called
        after each iteration; a false return ends :meth:`run`. None removes it.

        Raises:
            TypeError: *callback* is neither callable nor None.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        if callback is not None:
            _check_callable(callback, "set_post_loop_callback(): the callback")
        self._post_loop_callback = callback

    def add_other_fds(self, mapping: Mapping[int, OtherFdCallback]) -> None:
        """Watch more foreign fds for READ: ``{fd: callback(mask)}``; later entries win.

        Raises:
            TypeError: *mapping* is not a mapping, a callback is not callable or a key
                is not an fd.
            OSError, UnsupportedFileType, FdOutOfRange: an fd cannot be watched (nothing
                of *mapping* is kept then).
            RuntimeError: the loop is closed.
        """
        self._check_open()
        items = self._validate_other(mapping, "add_other_fds()")
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
            TypeError, OSError: as :meth:`add_other_fds`.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        items = self._validate_other(mapping, "set_other_fds()")
        wanted = dict(items)
        for fd in [fd for fd in self.other_fds if fd not in wanted]:
            del self.other_fds[fd]
        self.add_other_fds(wanted)

    @staticmethod
    def _validate_other(mapping: Mapping[int, OtherFdCallback],
                        call: str) -> list[tuple[int, Any]]:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{call} takes a mapping fd -> callback, "
                            f"not {type(mapping).__name__}")
        items = []
        for fd, cb in mapping.items():
            fd = as_fd(fd, call)
            _check_callable(cb, f"{call}: the callback for fd {fd}")
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
    """``>>> message`` on stderr and DEBUG on the ``danga`` logger (Danga's DebugMsg)."""
    msg = (fmt % args if args else fmt).rstrip("\n")
    sys.stderr.write(f">>> {msg}\n")
    logger.debug("%s", msg)


_default: Loop | None = None


def get_loop() -> Loop:
    """The process's default loop (created on first use, anew after it was closed)."""
    global _default
    if _default is None or _default._closed:
        _default = Loop()
    return _default
