"""EMFILE on accept: the Listener pauses, logs once per episode, never spins, resumes.

Runs in a subprocess (it lowers RLIMIT_NOFILE), once per backend. The child measures
its own CPU with resource.getrusage: a resource bound, not a timing assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from reliability_helpers import report

CHILD = textwrap.dedent(r'''
    import errno, json, logging, os, resource, socket, sys
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    import danga

    backend = sys.argv[1]
    if backend == "kqueue-emulated":
        import conftest  # registers the emulation class
        cls = conftest.EmulatedKqueuePoller
    else:
        cls = danga.backends.get(backend)

    records = []
    class Catch(logging.Handler):
        def emit(self, record):
            records.append((record.levelno, record.getMessage()))
    logging.getLogger("danga").addHandler(Catch())
    logging.getLogger("danga").setLevel(logging.DEBUG)

    loop = danga.Loop(cls)
    accepted = []
    class L(danga.Listener):
        def on_accept(self, conn, addr):
            accepted.append(conn)

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    listener = L(lsock, loop=loop, backoff=0.05)
    addr = lsock.getsockname()
    loop.run_once(0)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    filler = []
    def fill():
        while True:
            try:
                filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE, exc
                return
    fill()
    # Make room for two clients, then use up the rest: the accepts must fail EMFILE.
    os.close(filler.pop()); os.close(filler.pop())
    clients = [socket.create_connection(addr) for _ in range(2)]
    fill()

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    iterations = [0]
    def count(dmap, other):
        iterations[0] += 1
        return True
    loop.set_post_loop_callback(count)
    stop = loop.add_timer(1.0, loop.stop)
    c0 = cpu()
    loop.run()  # one second of exhaustion
    c1 = cpu()
    exhausted_iterations = iterations[0]
    warnings_during = [m for lvl, m in records if lvl >= logging.WARNING]
    assert not accepted, accepted

    # Free the fds: the listener resumes and accepts both queued connections, then a
    # third one made afterwards.
    for fd in filler:
        os.close(fd)
    filler.clear()
    from danga.testing import run_until
    run_until(loop, lambda: len(accepted) == 2, timeout=10)
    third = socket.create_connection(addr)
    run_until(loop, lambda: len(accepted) == 3, timeout=10)
    recovered = [m for lvl, m in records if lvl == logging.INFO and "accepting again" in m]
    # A second episode is reported again, once.
    fill()
    os.close(filler.pop())
    fourth = socket.create_connection(addr)
    fill()
    loop.add_timer(0.3, loop.stop)
    loop.run()
    for fd in filler:
        os.close(fd)
    run_until(loop, lambda: len(accepted) == 4, timeout=10)
    print(json.dumps({
        "cpu_s": round(c1 - c0, 4),
        "iterations": exhausted_iterations,
        "warnings": warnings_during,
        "accepted": len(accepted),
        "episodes": len([m for lvl, m in records if lvl >= logging.WARNING]),
        "recovered": len(recovered),
        "recoveries": len([m for lvl, m in records if "accepting again" in m]),
    }))
''')


@pytest.mark.timeout(60)
def test_emfile_on_accept(danga_backend: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, danga_backend],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    report(f"[{danga_backend}] EMFILE: {figures}")
    assert figures["cpu_s"] < 0.1, figures
    assert figures["iterations"] < 200, figures  # ~2 per back-off; a spin makes thousands
    assert len(figures["warnings"]) == 1, figures  # logged once per episode
    assert "pausing" in figures["warnings"][0]
    assert figures["recovered"] == 1  # an INFO at the first accept after the episode
    assert figures["accepted"] == 4
    assert figures["episodes"] == 2 and figures["recoveries"] == 2
