"""The loop's self-pipe: waking a sleeping poll, and the queue of calls from other threads.

How a wakeup is never lost (docs/internals.md#lost-wakeup). The loop sets
``polling`` *before* it computes its wait (from the timers and this queue) and clears it
after the poll returns. Whoever changes what the loop waits for from outside (another
thread, a signal handler) first makes the change (pushes the timer, appends the call,
sets the stop flag) and then, if ``polling`` is set, writes a byte. Either the loop had
not begun computing its wait (it will see the change), or it had (it will find the
byte). The loop's own callbacks run while ``polling`` is clear, so they write nothing.

Coalescing: ``pending`` says a byte is outstanding; :meth:`Waker.wake` writes only when
it is clear, so at most one byte waits however many threads call in. The loop drains
the pipe first, then clears ``pending``, then runs the queue: a call queued after the
clear wakes the next poll, one queued before is run now.

A channel that reports EOF or EBADF (closed behind danga's back, e.g. by a library that
closes "all other fds") is rebuilt with one WARNING, never polled in a busy loop. In a
forked child the pair is rebuilt at once: its wakeups must never wake the parent.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from .poller import fd_identity

__all__ = ["Waker"]

logger = logging.getLogger("danga")

Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Waker:
    """A non-blocking socketpair, its wake flags and the thread-safe call queue."""

    __slots__ = ("_idents", "_r", "_w", "calls", "fd", "pending", "polling", "write_fd")

    def __init__(self) -> None:
        """Raises OSError: no socketpair can be made (out of fds)."""
        #: Calls from other threads (and signal handlers), FIFO; run by the loop thread.
        self.calls: deque[Call] = deque()
        #: Set by the loop from computing its wait until its poll returns.
        self.polling = False
        #: A byte is outstanding (or about to be written).
        self.pending = False
        self._open()

    def _open(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        #: The end the loop polls for READ.
        self.fd = self._r.fileno()
        #: The end signal.set_wakeup_fd writes to.
        self.write_fd = self._w.fileno()
        self._idents = (fd_identity(self.fd), fd_identity(self.write_fd))

    def wake(self) -> None:
        """Make the loop's poll return (now, or at once when it begins). Safe from any
        thread and from signal handlers; coalesced."""
        if self.pending:
            return
        self.pending = True
        w = self._w
        try:
            w.send(b"\0")
        except BlockingIOError:
            pass  # full: a byte is waiting anyway
        except OSError:
            # Closed behind our back (or renewed under us by the loop thread): the loop
            # notices the dead channel when it drains it, and rebuilds it.
            pass

    def call_soon(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Queue ``callback(*args)`` for the loop thread and wake the loop if needed."""
        self.calls.append((callback, args))  # one C call: atomic under the GIL
        if self.polling:
            self.wake()

    def drain(self) -> bool:
        """Read every byte, then clear ``pending``. Returns False when the channel is
        dead (EOF or EBADF) and must be rebuilt (:meth:`renew`).

        ``pending`` is cleared in a ``finally``: a KeyboardInterrupt after a byte was
        read must not leave it set over an empty pipe (every later wake() would then
        write nothing, and the loop would sleep through them)."""
        recv = self._r.recv
        try:
            while True:
                data = recv(4096)
                if not data:
                    return False  # EOF: the write end is gone
                if len(data) < 4096:
                    return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        finally:
            self.pending = False

    def run_calls(self, failed: Callable[[Exception, Any], None]) -> None:
        """Run the calls queued before this pass began, in order (a call that queues
        another cannot starve I/O). ``failed(exc, callback)`` handles an Exception;
        KeyboardInterrupt and SystemExit propagate and leave the rest queued. A call
        leaves the queue only once it has run (peek, call, pop), so an interrupt between
        taking it and calling it never loses it."""
        calls = self.calls
        popleft = calls.popleft
        for _ in range(len(calls)):
            item = calls[0]
            callback, args = item
            try:
                callback(*args)
            except Exception as exc:
                failed(exc, callback)
            finally:
                if calls and calls[0] is item:
                    popleft()

    def renew(self, why: str | None) -> None:
        """Replace the pair (dead, or inherited through fork); the queue is kept.

        A *why* is logged as a WARNING (a dead channel); None is silent (fork).

        Raises:
            OSError: no socketpair can be made.
        """
        if why is not None:
            logger.warning("danga: the loop's wakeup channel %s; rebuilding it", why)
        self.close()
        self._open()
        self.pending = False

    def close(self) -> None:
        """Close both ends (danga's own fds). An end whose number was closed behind
        danga's back is only forgotten: the number may be someone else's now. Idempotent."""
        for sock, ident in zip((self._r, self._w), self._idents, strict=True):
            fd = sock.fileno()
            if fd < 0:
                continue
            if fd_identity(fd) != ident:
                sock.detach()
                continue
            try:
                sock.close()
            except OSError:
                pass
