"""danga.prefork: a master process that supervises worker processes, one loop each.

The master runs no danga I/O: it is a small loop over ``select`` with plain signal
handlers that only record the signal (``signal.set_wakeup_fd`` wakes the select), and
``os.waitpid(-1, WNOHANG)`` to reap. Each worker is a forked child that starts on a fresh
default loop (``loop.reset()``), calls ``setup(loop, worker_id)`` and runs the loop.

A worker talks to its master over one AF_UNIX datagram socketpair: heartbeats from a
danga timer (proof that the loop turns, not merely that the process lives), a "ready"
message after ``setup``, and bind requests from :meth:`danga.Listener.bind`, which the
master answers with a listening socket of its own (the shared-listener mode, sent with
SCM_RIGHTS) or with the address to bind with SO_REUSEPORT (port 0 resolved once, so every
worker gets the same port). docs/processes.md describes the signals and exit codes.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from .listener import Listener
from .loop import Loop, get_loop, logger

__all__ = ["EXIT_BOOT_FAILED", "EXIT_CLEAN", "EXIT_UNCLEAN", "bind_in_worker", "prefork"]

#: prefork's exit code: every worker finished its in-flight work and exited 0.
EXIT_CLEAN = 0
#: prefork's exit code: a worker had to be killed, or exited with work unfinished.
EXIT_UNCLEAN = 1
#: prefork's exit code: workers kept dying during setup and none was serving.
EXIT_BOOT_FAILED = 3

# Consecutive boot failures, with no worker serving, before the master gives up.
_BOOT_FAILURE_LIMIT = 5
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
# How long a quick shutdown (a second TERM/INT, or QUIT) waits before SIGKILL.
_QUICK_GRACE = 5.0
# How long a worker waits for its master's answer to a bind request.
_BIND_TIMEOUT = 30.0
# Workers re-check for an empty descriptor map this often while draining.
_DRAIN_CHECK = 0.02

_MSG_BEAT = b"H"
_MSG_READY = b"R"
_MSG_BIND = b"B"
_REPLY_SHARED = b"S"
_REPLY_ADDRESS = b"A"
_REPLY_ERROR = b"E"
_MAX_MSG = 65536

_MASTER_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCHLD")


def _balancing_platform() -> bool:
    """Does the kernel spread connections between SO_REUSEPORT listeners here?"""
    return sys.platform.startswith(("linux", "freebsd"))


# -- the worker side ------------------------------------------------------------------


class _WorkerLink:
    """The worker's end of its master's channel, and how it binds."""

    def __init__(self, chan: socket.socket, master_pid: int) -> None:
        self.chan = chan
        self.master_pid = master_pid

    def beat(self) -> None:
        try:
            self.chan.send(_MSG_BEAT, socket.MSG_DONTWAIT)
        except OSError:
            pass  # full (the master is busy: the next beat will do) or the master is gone

    def bind(self, address: Any, backlog: int) -> socket.socket:
        self.chan.settimeout(_BIND_TIMEOUT)
        try:
            self.chan.send(_MSG_BIND + pickle.dumps((address, backlog)))
            msg, fds, _, _ = socket.recv_fds(self.chan, _MAX_MSG, 1)
        finally:
            self.chan.setblocking(False)
        kind, body = msg[:1], msg[1:]
        if kind == _REPLY_SHARED and fds:
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            return sock
        for fd in fds:
            os.close(fd)
        if kind == _REPLY_ADDRESS:
            return Listener.listening_socket(pickle.loads(body), reuse_port=True,
                                             backlog=backlog)
        if kind == _REPLY_ERROR:
            raise pickle.loads(body)
        raise RuntimeError(f"Listener.bind: the prefork master sent an unknown reply {msg!r}")


_link: _WorkerLink | None = None


def bind_in_worker(address: Any, *, reuse_port: bool, backlog: int) -> socket.socket | None:
    """The listening socket for :meth:`danga.Listener.bind` in a prefork worker, or None
    outside one. In a worker the prefork's mode decides, not *reuse_port*: the master's
    shared socket, or this worker's own SO_REUSEPORT socket on the master's port.

    Raises:
        TypeError, ValueError, OSError: the bind failed (in the master or here).
    """
    if _link is None:
        return None
    return _link.bind(address, backlog)


class _Worker:
    """One child process as its master sees it."""

    __slots__ = ("born", "chan", "deadline", "id", "killed", "last_beat", "pid", "ready",
                 "retiring")

    def __init__(self, worker_id: int, pid: int, chan: socket.socket, now: float) -> None:
        self.id = worker_id
        self.pid = pid
        self.chan = chan
        self.born = now
        self.last_beat = now
        self.ready = False
        self.retiring = False  # sent TERM by the master (scale down, HUP, shutdown)
        self.deadline: float | None = None  # SIGKILL after this
        self.killed = False  # SIGKILLed by the master

    def __repr__(self) -> str:
        return f"worker {self.id} (pid {self.pid})"


class _Child:
    """What runs in a worker process: the fresh loop, setup, heartbeats, shutdown."""

    def __init__(self, link: _WorkerLink, worker_id: int, heartbeat: float | None) -> None:
        self.link = link
        self.worker_id = worker_id
        self.interval = None if heartbeat is None else min(max(heartbeat / 4, 0.01), 1.0)
        self.loop: Loop = get_loop()
        self.loop.reset()  # nothing of the parent's loop (if any) is ours
        self.on_shutdown: Callable[[], Any] | None = None
        self.draining = False
        self.dropped = 0

    def run(self, setup: Callable[[Loop, int], Any]) -> int:
        loop = self.loop
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.graceful)
        loop.add_signal_handler(signal.SIGQUIT, self.quick)
        result = setup(loop, self.worker_id)
        if callable(result):
            self.on_shutdown = result
        try:
            self.link.chan.send(_MSG_READY)
        except OSError:
            pass  # the master is gone: the first heartbeat sees it and shuts down
        if self.interval is not None:
            self._beat()
        loop.run()
        for obj in list(loop.descriptor_map.values()):
            if not obj.closed:
                if not isinstance(obj, Listener):
                    self.dropped += 1
                obj.close("shutdown")
        loop.close()
        return 0 if self.dropped == 0 else EXIT_UNCLEAN

    def _beat(self) -> None:
        self.link.beat()
        if os.getppid() != self.link.master_pid and not self.draining:
            logger.warning("danga.prefork worker %d: the master is gone; shutting down",
                           self.worker_id)
            self.graceful()
        assert self.interval is not None
        self.loop.add_timer(self.interval, self._beat)

    def graceful(self) -> None:
        """Close the listeners, let the rest finish; a second call is :meth:`quick`."""
        if self.draining:
            self.quick()
            return
        self.draining = True
        listeners = [obj for obj in self.loop.descriptor_map.values()
                     if isinstance(obj, Listener)]
        for obj in listeners:
            obj.close("shutdown")
        self._after_close(listeners)

    def _after_close(self, listeners: list[Listener]) -> None:
        # close() leaves the OS close to the loop's post-event work: wait for it, so
        # that once the shutdown callback runs a new connection is refused, not queued
        # on a listener about to close (which would reset it).
        pending = self.loop.to_close()
        if any(obj in pending for obj in listeners):
            self.loop.add_timer(0, self._after_close, listeners)
            return
        if self.on_shutdown is not None:
            try:
                self.on_shutdown()
            except Exception:
                logger.exception("danga.prefork worker %d: the shutdown callback failed",
                                 self.worker_id)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.loop.watched_sockets() == 0:
            self.loop.stop()
        else:
            self.loop.add_timer(_DRAIN_CHECK, self._check_drained)

    def quick(self) -> None:
        """Stop now: whatever is still open is closed (and counted as dropped)."""
        self.draining = True
        self.loop.stop()


def _child_main(setup: Callable[[Loop, int], Any], worker_id: int, *, chan: socket.socket,
                master_pid: int, heartbeat: float | None,
                inherited: list[socket.socket]) -> int:
    global _link
    # The master's handlers and wakeup fd came with fork(): none of them is ours.
    signal.set_wakeup_fd(-1)
    for name in _MASTER_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    for sock in inherited:
        sock.close()
    _link = _WorkerLink(chan, master_pid)
    return _Child(_link, worker_id, heartbeat).run(setup)


# -- the master -----------------------------------------------------------------------


class _Master:
    def __init__(self, setup: Callable[[Loop, int], Any], workers: int, shared: bool,
                 graceful_timeout: float, heartbeat: float | None) -> None:
        self.setup = setup
        self.target = workers
        self.shared = shared
        self.graceful_timeout = graceful_timeout
        self.heartbeat = heartbeat
        self.workers: dict[int, _Worker] = {}
        self.signals: deque[int] = deque()
        self.phase = "run"  # then "graceful", then "quick"
        self.deadline = 0.0
        self.unclean = False
        self.boot_error = False
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.rolling: list[int] = []  # pids that HUP asked to replace, oldest first
        self.incoming: _Worker | None = None  # the replacement being started for rolling[0]
        self.listeners: dict[Any, socket.socket] = {}  # shared mode: address -> socket
        self.reserved: dict[Any, socket.socket] = {}  # reuseport mode: port-0 reservations
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    # signal handling: record and return (the select is woken by the wakeup fd)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        old_handlers = {}
        old_wakeup = signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for name in _MASTER_SIGNALS:
                signum = getattr(signal, name)
                old_handlers[signum] = signal.signal(signum, self._on_signal)
            mode = "one listener shared by all workers" if self.shared else "SO_REUSEPORT"
            logger.info("danga.prefork: master pid %d, %d workers, %s",
                        os.getpid(), self.target, mode)
            return self._loop()
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_wakeup)
            for sock in [*self.listeners.values(), *self.reserved.values(),
                         self.wake_r, self.wake_w]:
                sock.close()

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            chans = {w.chan.fileno(): w for w in self.workers.values()}
            wake_fd = self.wake_r.fileno()
            ready, _, _ = select.select([wake_fd, *chans], [], [], self._timeout(now))
            for fd in ready:
                if fd == wake_fd:
                    self._drain_wakeups()
                else:
                    self._read_channel(chans[fd])
            self._handle_signals()
            self._reap()
            now = time.monotonic()
            if self.phase != "run":
                if not self.workers:
                    return self._exit_code()
                if now >= self.deadline:
                    self._kill_all("the shutdown deadline passed")
                continue
            if (self.boot_failures >= _BOOT_FAILURE_LIMIT
                    and not any(w.ready for w in self.workers.values())):
                logger.error("danga.prefork: %d workers in a row died during setup;"
                             " giving up", self.boot_failures)
                self._begin_shutdown(signal.SIGQUIT)
                self.unclean = True
                self.boot_error = True
                continue
            self._check_health(now)
            self._maintain(now)

    def _timeout(self, now: float) -> float:
        wait = 1.0
        if self.phase != "run":
            wait = min(wait, self.deadline - now)
        else:
            if self.next_spawn > now:
                wait = min(wait, self.next_spawn - now)
            if self.heartbeat is not None:
                wait = min(wait, self.heartbeat / 4)
        return max(wait, 0.0)

    def _drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _read_channel(self, w: _Worker) -> None:
        while True:
            try:
                msg = w.chan.recv(_MAX_MSG)
            except OSError:  # BlockingIOError: all read; others: the worker is gone
                return
            if not msg:
                return
            kind = msg[:1]
            if kind == _MSG_BEAT:
                w.last_beat = time.monotonic()
            elif kind == _MSG_READY:
                w.ready = True
                w.last_beat = time.monotonic()
                self.boot_failures = 0
                logger.info("danga.prefork: %r is ready", w)
            elif kind == _MSG_BIND:
                self._answer_bind(w, msg[1:])

    def _answer_bind(self, w: _Worker, body: bytes) -> None:
        try:
            address, backlog = pickle.loads(body)
            key = repr(address)
            if self.shared or not isinstance(address, tuple):  # AF_UNIX: one socket
                sock = self.listeners.get(key)
                if sock is None:
                    sock = Listener.listening_socket(address, backlog=backlog)
                    self.listeners[key] = sock
                    logger.info("danga.prefork: the master listens on %r for every worker"
                                " (shared listener)", sock.getsockname())
                socket.send_fds(w.chan, [_REPLY_SHARED], [sock.fileno()])
                return
            w.chan.send(_REPLY_ADDRESS + pickle.dumps(self._resolve_port(address, key)))
        except Exception as exc:  # the worker raises it from Listener.bind
            try:
                w.chan.send(_REPLY_ERROR + pickle.dumps(exc))
            except OSError:
                pass

    def _resolve_port(self, address: Any, key: str) -> Any:
        # Port 0 in reuseport mode: one port for every worker. The master binds it (with
        # SO_REUSEPORT, never listening, so the kernel sends it no connection) and
        # keeps it while it lives, so replacements get the same port too.
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == 0:
            sock = self.reserved.get(key)
            if sock is None:
                sock = Listener.listening_socket(address, reuse_port=True, backlog=0,
                                                 listen=False)
                self.reserved[key] = sock
            return (address[0], sock.getsockname()[1], *address[2:])
        return address

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self._begin_shutdown(signum)
            elif self.phase != "run":
                continue
            elif signum == signal.SIGHUP:
                self.rolling = [w.pid for w in self.workers.values() if not w.retiring]
                logger.info("danga.prefork: HUP: replacing %d workers one at a time",
                            len(self.rolling))
            elif signum == signal.SIGTTIN:
                self.target += 1
                logger.info("danga.prefork: TTIN: %d workers", self.target)
            elif signum == signal.SIGTTOU and self.target > 1:
                self.target -= 1
                logger.info("danga.prefork: TTOU: %d workers", self.target)

    def _begin_shutdown(self, signum: int) -> None:
        now = time.monotonic()
        if self.phase == "run" and signum != signal.SIGQUIT:
            self.phase = "graceful"
            self.deadline = now + self.graceful_timeout
            logger.info("danga.prefork: graceful shutdown (up to %.1fs)",
                        self.graceful_timeout)
            self._signal_all(signal.SIGTERM)
        elif self.phase != "quick":
            self.phase = "quick"
            self.deadline = min(self.deadline, now + _QUICK_GRACE) if self.deadline else (
                now + _QUICK_GRACE)
            logger.info("danga.prefork: quick shutdown")
            self._signal_all(signal.SIGQUIT)

    def _signal_all(self, signum: int) -> None:
        for w in self.workers.values():
            w.retiring = True
            self._kill(w, signum)

    @staticmethod
    def _kill(w: _Worker, signum: int) -> None:
        try:
            os.kill(w.pid, signum)
        except ProcessLookupError:
            pass  # already exited; the reaper will see it

    def _kill_all(self, why: str) -> None:
        for w in self.workers.values():
            if not w.killed:
                logger.warning("danga.prefork: killing %r: %s", w, why)
                w.killed = True
                self.unclean = True
                self._kill(w, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue  # not one of ours (setup forked something)
            w.chan.close()
            self._account(w, status)

    def _account(self, w: _Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.phase != "run":
            # Killed by the default TERM action while still in setup: nothing was lost.
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                self.unclean = True
            logger.info("danga.prefork: %r exited (%s)", w, how)
            return
        if w.retiring:
            logger.info("danga.prefork: %r retired (%s)", w, how)
            return
        if w.killed:
            logger.warning("danga.prefork: %r was killed (%s); replacing it", w, how)
        else:
            logger.warning("danga.prefork: %r exited unexpectedly (%s); replacing it", w, how)
        if not w.ready:  # died (or hung) in setup: back off before the next start
            self.boot_failures += 1
            delay = min(_BACKOFF_FIRST * 2 ** (self.boot_failures - 1), _BACKOFF_MAX)
            self.next_spawn = time.monotonic() + delay
            logger.warning("danga.prefork: %r died during setup (%d in a row);"
                           " next start in %.2fs", w, self.boot_failures, delay)

    def _check_health(self, now: float) -> None:
        for w in self.workers.values():
            if w.killed:
                continue
            if w.deadline is not None and now >= w.deadline:
                logger.warning("danga.prefork: killing %r: it did not finish within %.1fs",
                               w, self.graceful_timeout)
                w.killed = True
                self._kill(w, signal.SIGKILL)
            elif (self.heartbeat is not None and not w.retiring
                    and now - w.last_beat > self.heartbeat):
                logger.error("danga.prefork: killing %r: its loop has not turned for %.1fs"
                             " (stuck in a blocking call?)", w, now - w.last_beat)
                w.killed = True
                self._kill(w, signal.SIGKILL)

    def _retire(self, w: _Worker, now: float) -> None:
        w.retiring = True
        w.deadline = now + self.graceful_timeout
        self._kill(w, signal.SIGTERM)

    def _maintain(self, now: float) -> None:
        self._roll(now)
        active = sorted((w for w in self.workers.values() if not w.retiring),
                        key=lambda w: (w.id, -w.born))
        spare = 1 if self.incoming is not None else 0
        for w in reversed(active[self.target + spare:]):  # TTOU: the highest ids go
            logger.info("danga.prefork: retiring %r", w)
            self._retire(w, now)
        used = {w.id for w in active}
        missing = self.target - len(active) + spare
        while missing > 0 and now >= self.next_spawn:
            worker_id = min(set(range(self.target + len(used))) - used)
            used.add(worker_id)
            self._spawn(worker_id, now)
            missing -= 1

    def _roll(self, now: float) -> None:
        """HUP: start a replacement for the oldest worker, retire it once that is ready."""
        self.rolling = [pid for pid in self.rolling
                        if pid in self.workers and not self.workers[pid].retiring]
        incoming = self.incoming
        if incoming is not None and incoming.pid not in self.workers:
            incoming = self.incoming = None  # it died: start another (with back-off)
        if not self.rolling:
            self.incoming = None
            return
        if incoming is None:
            if now >= self.next_spawn:
                self.incoming = self._spawn(self.workers[self.rolling[0]].id, now)
        elif incoming.ready:
            old = self.workers[self.rolling.pop(0)]
            logger.info("danga.prefork: %r replaces %r", incoming, old)
            self._retire(old, now)
            self.incoming = None

    def _spawn(self, worker_id: int, now: float) -> _Worker:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for stream in (sys.stdout, sys.stderr):  # or the child would print them again
            if stream is not None:
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: it never returns from this block
            parent_end.close()
            code = EXIT_UNCLEAN
            try:
                inherited = [w.chan for w in self.workers.values()]
                inherited += [*self.listeners.values(), *self.reserved.values(),
                              self.wake_r, self.wake_w]
                code = _child_main(self.setup, worker_id, chan=child_end,
                                   master_pid=os.getppid(), heartbeat=self.heartbeat,
                                   inherited=inherited)
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        w = _Worker(worker_id, pid, parent_end, now)
        self.workers[pid] = w
        logger.info("danga.prefork: started %r", w)
        return w

    def _exit_code(self) -> int:
        if self.boot_error:
            return EXIT_BOOT_FAILED
        code = EXIT_UNCLEAN if self.unclean else EXIT_CLEAN
        logger.info("danga.prefork: all workers gone; %s shutdown",
                    "unclean" if self.unclean else "clean")
        return code


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"danga.prefork({what}=...) must be a positive number of seconds,"
                         f" not {value!r}")
    return float(value)


def prefork(setup: Callable[[Loop, int], Any], workers: int | None = None, *,
            reuse_port: bool | str = "auto", graceful_timeout: float = 30.0,
            heartbeat: float | None = 10.0) -> int:
    """Run a master that forks *workers* processes and supervises them; return its exit
    code when they have all gone.

    Each worker starts on a fresh default loop and calls ``setup(loop, worker_id)``
    (``worker_id`` is the slot, 0 to workers-1; a replacement takes the slot's id), which
    makes its listeners with :meth:`danga.Listener.bind` and the rest of its state. If
    ``setup`` returns a callable, the worker calls it when a graceful shutdown begins,
    after its listeners are closed (to close idle connections, say). The worker then
    runs the loop until it is told to stop.

    ``reuse_port``: True gives every worker its own SO_REUSEPORT listener (the kernel
    balances connections between them); False makes the master bind one listener that
    every worker accepts from; "auto" is True where the kernel balances (Linux, FreeBSD)
    and False elsewhere (macOS). Either way ``setup`` is the same code.

    Signals to the master: TERM or INT shut down gracefully (workers close their
    listeners, finish their connections and exit; any left after *graceful_timeout*
    seconds are killed); a second TERM or INT, or QUIT, is a quick shutdown. HUP
    replaces the workers one at a time; TTIN adds one worker and TTOU removes one. A
    worker that exits unexpectedly is replaced (with an exponential back-off while
    workers die during setup); one whose loop sends no heartbeat for *heartbeat* seconds
    (None: never checked) is killed and replaced. ``setup`` must finish within
    *heartbeat* seconds too.

    Returns :data:`EXIT_CLEAN` (0) when every worker finished its work and exited 0,
    :data:`EXIT_UNCLEAN` (1) when one had to be killed or dropped connections, and
    :data:`EXIT_BOOT_FAILED` (3) when workers kept dying during setup with none serving.

    Raises:
        TypeError: *setup* is not callable, or *workers* is not an int.
        ValueError: *workers* < 1, a bad *reuse_port*, or a timeout that is not positive.
        RuntimeError: not called from the main thread, or no ``os.fork`` here.
    """
    if not callable(setup):
        raise TypeError(f"danga.prefork(setup) must be callable, not {type(setup).__name__}")
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"danga.prefork(workers=...) takes an int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"danga.prefork(workers=...) must be at least 1, not {workers}")
    if reuse_port not in ("auto", True, False):
        raise ValueError(f"danga.prefork(reuse_port=...) takes 'auto', True or False, "
                         f"not {reuse_port!r}")
    timeout = _positive(graceful_timeout, "graceful_timeout")
    beat = None if heartbeat is None else _positive(heartbeat, "heartbeat")
    if not hasattr(os, "fork"):
        raise RuntimeError("danga.prefork needs os.fork, which this platform does not have")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("danga.prefork must be called from the main thread (it handles"
                           " signals)")
    if reuse_port == "auto":
        shared = not _balancing_platform()
    else:
        shared = not reuse_port
        if reuse_port and not _balancing_platform():
            logger.warning("danga.prefork(reuse_port=True): this kernel does not balance"
                           " SO_REUSEPORT listeners; one worker may get every connection")
    return _Master(setup, workers, shared, timeout, beat).run()
