"""The peer suite: CPython's own tests run through :class:`danga.Selector` on one backend.

A second conformance suite that danga did not write: the standard library's selectors
tests and asyncio's event loop, socket, sendfile and SSL tests (the classes are listed in
:mod:`danga.testing.peer_cases`), each run with its selectors or event loops made on the
backend under test.

Each suite runs in a child process of its own (``python -m danga.testing.peer``), in a
temporary directory: the tests install signal handlers, raise the fd limit, set asyncio's
event loop policy, spawn subprocesses and write files, none of which may leak into the
caller. In the child every asyncio loop is made on the backend: the event loop policy's
loops and any ``SelectorEventLoop()`` built without a selector. A test that passes
without having made a ``danga.Selector`` counts as a failure (it ran on something else).

``danga check --backend NAME --peer`` and ``tests/backends/test_peer.py`` use
:func:`run_suite`; the result says how many tests ran, passed, failed and were skipped,
and why.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
import types
import unittest
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import backends as _backends
from ..poller import BackendUnavailable, Poller
from ..selector import Selector
from .peer_cases import SUITES, SuiteUnavailable, build, missing_test_package

__all__ = ["SUITES", "format_problems", "format_table", "main", "missing_test_package",
           "problems_of", "run_peer_check", "run_suite", "run_suites"]

#: The fd limit a child lowers its hard RLIMIT_NOFILE to, so that CPython's
#: test_above_fd_setsize (which raises the soft limit to the hard one, up to 65536) stays
#: quick while still far above select's FD_SETSIZE. None keeps the system's limit.
DEFAULT_FD_LIMIT = 8192


# -- the child ---------------------------------------------------------------------------


class _Counting:
    """Makes the selectors of the run and counts them."""

    def __init__(self, poller_cls: type[Poller]) -> None:
        self.poller_cls = poller_cls
        self.made = 0

    def __call__(self, poller: Any = None) -> Selector:
        self.made += 1
        if poller is not None:
            return Selector.from_poller(poller)
        return Selector(self.poller_cls)


class _Result(unittest.TextTestResult):
    """Records every outcome, and fails a passing test that made no danga.Selector."""

    def __init__(self, *args: Any, counting: _Counting, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counting = counting
        self.passed = 0
        self.skip_reasons: Counter[str] = Counter()
        self._made_before = 0

    def startTest(self, test: unittest.TestCase) -> None:
        self._made_before = self.counting.made
        super().startTest(test)

    def addSuccess(self, test: unittest.TestCase) -> None:
        if self.counting.made == self._made_before:
            try:
                raise AssertionError(
                    "the test passed without making a danga.Selector: it ran on something "
                    "else, so it proves nothing about the backend"
                )
            except AssertionError:
                self.addFailure(test, sys.exc_info())
            return
        self.passed += 1
        super().addSuccess(test)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self.skip_reasons[reason] += 1
        super().addSkip(test, reason)


def _install_everywhere(make: _Counting) -> None:
    """Every asyncio loop of this process on the backend: through the policy (what
    ``asyncio.new_event_loop()`` uses) and through ``SelectorEventLoop()`` without a
    selector, which asks ``selectors.DefaultSelector``: asyncio is given a copy of the
    selectors module whose DefaultSelector is danga's (the real module stays as it is,
    so a backend built on it, like the example plugin, still gets the real one)."""
    import asyncio.selector_events

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return asyncio.SelectorEventLoop(make())

    asyncio.set_event_loop_policy(Policy())
    patched = types.ModuleType(selectors.__name__, selectors.__doc__)
    patched.__dict__.update(selectors.__dict__)
    patched.DefaultSelector = make  # type: ignore[attr-defined]
    asyncio.selector_events.selectors = patched  # type: ignore[attr-defined]


def _lower_fd_limit(limit: int | None) -> None:
    if limit is None:
        return
    try:
        import resource
    except ImportError:  # not on Windows; nothing to lower
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, limit), limit))


def _resolve(spec: str) -> type[Poller]:
    """A backend name (as DANGA_BACKEND takes it) or ``module:Class``."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]
    return _backends.choose(spec)


def _run_in_child(spec: str, suite: str, keyword: str | None, verbosity: int) -> dict[str, Any]:
    poller_cls = _resolve(spec)
    make = _Counting(poller_cls)
    base: dict[str, Any] = {"suite": suite, "backend": getattr(poller_cls, "name", spec),
                            "python": platform.python_version()}
    try:
        classes = build(suite, poller_cls, make)
    except SuiteUnavailable as exc:
        return {**base, "unavailable": str(exc)}
    _install_everywhere(make)
    loader = unittest.TestLoader()
    if keyword:
        loader.testNamePatterns = [f"*{keyword}*"]
    tests = unittest.TestSuite(loader.loadTestsFromTestCase(cls) for cls in classes)
    runner = unittest.TextTestRunner(
        stream=sys.stderr, verbosity=verbosity,
        resultclass=lambda *a, **k: _Result(*a, counting=make, **k))
    started = time.monotonic()
    result: Any = runner.run(tests)
    problems = [{"test": t.id(), "kind": kind, "traceback": tb}
                for kind, items in (("failure", result.failures), ("error", result.errors),
                                    ("unexpected success", result.unexpectedSuccesses))
                for t, tb in (items if kind != "unexpected success"
                              else [(i, "") for i in items])]
    # Counted from the outcomes: unittest's testsRun leaves skipped tests out on some
    # versions (3.12.1) and not on others.
    ran = result.passed + sum(result.skip_reasons.values()) + len(problems) + len(
        result.expectedFailures)
    return {**base, "ran": ran, "passed": result.passed,
            "skipped": dict(result.skip_reasons),
            "expected_failures": len(result.expectedFailures), "problems": problems,
            "selectors_made": make.made, "seconds": round(time.monotonic() - started, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m danga.testing.peer --backend SPEC --suite NAME [--json PATH]``.

    Runs in the current process (the caller gives it a process of its own). Exit status:
    0 when nothing failed.
    """
    parser = argparse.ArgumentParser(prog="python -m danga.testing.peer")
    parser.add_argument("--backend", required=True,
                        help="a backend name, or module:Class for a Poller class")
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only the tests whose name contains this")
    parser.add_argument("--fd-limit", type=int, default=DEFAULT_FD_LIMIT)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _lower_fd_limit(args.fd_limit or None)
    try:
        data = _run_in_child(args.backend, args.suite, args.keyword, 2 if args.verbose else 0)
    except Exception:
        data = {"suite": args.suite, "backend": args.backend,
                "crash": traceback.format_exc()}
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(json.dumps(data, indent=2, sort_keys=True))
    return 1 if data.get("problems") or data.get("crash") else 0


# -- the parent --------------------------------------------------------------------------


def _spec_of(poller_cls: type[Poller]) -> str:
    """How the child finds *poller_cls*: its name if the registry resolves it to this very
    class, else ``module:Class`` (a class registered for tests only)."""
    name = getattr(poller_cls, "name", None)
    if isinstance(name, str):
        try:
            if _backends.get(name) is poller_cls:
                return name
        except (LookupError, BackendUnavailable):
            pass
    return f"{poller_cls.__module__}:{poller_cls.__qualname__}"


def run_suite(backend: str | type[Poller], suite: str, *, keyword: str | None = None,
              timeout: float = 600.0, fd_limit: int | None = DEFAULT_FD_LIMIT,
              verbose: bool = False) -> dict[str, Any]:
    """Run one peer *suite* on *backend* (a name or a Poller class) in a child process.

    Returns:
        a dict with ``suite``, ``backend``, ``python`` and either ``unavailable`` (why the
        suite cannot run on this interpreter), ``crash`` (the child's traceback or output),
        or ``ran``, ``passed``, ``skipped`` (reason -> count), ``expected_failures``,
        ``problems`` (each failing test's id, kind and traceback), ``selectors_made`` and
        ``seconds``.

    Raises:
        ValueError: *suite* is not one of :data:`SUITES`.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown peer suite {suite!r}; the suites are {', '.join(SUITES)}")
    spec = backend if isinstance(backend, str) else _spec_of(backend)
    with tempfile.TemporaryDirectory(prefix="danga-peer-") as tmp:
        out = Path(tmp, "result.json")
        cmd = [sys.executable, "-m", "danga.testing.peer", "--backend", spec,
               "--suite", suite, "--json", str(out), "--fd-limit", str(fd_limit or 0)]
        if keyword:
            cmd += ["-k", keyword]
        if verbose:
            cmd.append("-v")
        # The child sees the caller's import path, so a Poller class registered for tests
        # (not installed) imports there too.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        env.pop(_backends.ENV_VAR, None)  # --backend says which backend
        try:
            proc = subprocess.run(cmd, check=False, cwd=tmp, env=env, timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.output or b"")[-4000:].decode(errors="replace")
            return {"suite": suite, "backend": spec,
                    "crash": f"timed out after {timeout} s; output:\n{tail}"}
        output = proc.stdout.decode(errors="replace")
        if verbose:
            sys.stdout.write(output)
        if not out.exists():
            return {"suite": suite, "backend": spec,
                    "crash": f"exit status {proc.returncode}; output:\n{output[-4000:]}"}
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def run_suites(backend: str | type[Poller], suites: Sequence[str] = SUITES, *,
               parallel: int | None = None, **options: Any) -> list[dict[str, Any]]:
    """Run several peer suites on *backend*, up to *parallel* child processes at once
    (default: all of them), and return their results in the order of *suites*.

    Most of a suite's time is spent waiting (timeouts, signals, handshakes, subprocesses),
    so suites run side by side finish in about the time of the longest one.
    Options are those of :func:`run_suite`.

    Raises:
        ValueError: a suite is not one of :data:`SUITES`.
    """
    from concurrent.futures import ThreadPoolExecutor

    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"unknown peer suite {suite!r}; the suites are {', '.join(SUITES)}")
    workers = max(1, min(parallel or len(suites), len(suites)))
    with ThreadPoolExecutor(workers, thread_name_prefix="danga-peer") as pool:
        futures = [pool.submit(run_suite, backend, suite, **options) for suite in suites]
        return [f.result() for f in futures]


def run_peer_check(name: str, *, keyword: str | None = None, verbose: bool = False) -> int:
    """``danga check --backend NAME --peer``: every peer suite on backend *name*; prints
    the table and each failure, returns the exit status (0: passed).

    Raises:
        UnknownBackend: no backend has this name.
        BackendUnavailable: it cannot be loaded or does not work here.
    """
    _backends.choose(name)
    print(f"\ndanga check: CPython's suites through danga.Selector on {name!r} "
          f"(Python {platform.python_version()})", flush=True)
    missing = missing_test_package()
    if missing is not None:
        print(f"\ndanga check: {name}: peer suites SKIPPED: {missing}")
        return 0
    results = run_suites(name, keyword=keyword, verbose=verbose)
    failed = problems_of(results)
    for r in failed:
        print("\n" + format_problems(r))
    print()
    print(format_table(results))
    print(f"\ndanga check: {name}: peer suites {'FAILED' if failed else 'PASSED'}")
    return 1 if failed else 0


def format_problems(result: dict[str, Any]) -> str:
    """The failing tests of one result, with their tracebacks (for an assertion message)."""
    if result.get("crash"):
        return f"{result['suite']} on {result['backend']} crashed:\n{result['crash']}"
    parts = [f"{p['kind']}: {p['test']}\n{p['traceback']}" for p in result.get("problems", [])]
    return f"{result['suite']} on {result['backend']}:\n" + "\n".join(parts)


def format_table(results: list[dict[str, Any]]) -> str:
    """The per-suite table of ``danga check --peer``, skip reasons underneath."""
    lines = [f"  {'peer suite':<16}{'ran':>6}{'passed':>8}{'failed':>8}{'skipped':>9}"
             f"{'seconds':>9}"]
    notes = []
    for r in results:
        if r.get("unavailable"):
            lines.append(f"  {r['suite']:<16}{'-':>6}{'-':>8}{'-':>8}{'-':>9}{'-':>9}"
                         "  (unavailable)")
            notes.append(f"  {r['suite']}: unavailable: {r['unavailable']}")
            continue
        if r.get("crash"):
            lines.append(f"  {r['suite']:<16}{'-':>6}{'-':>8}{'-':>8}{'-':>9}{'-':>9}"
                         "  <- CRASHED")
            continue
        failed = len(r["problems"])
        skipped = sum(r["skipped"].values())
        flag = "  <- FAILED" if failed else ""
        lines.append(f"  {r['suite']:<16}{r['ran']:>6}{r['passed']:>8}{failed:>8}"
                     f"{skipped:>9}{r['seconds']:>9.1f}{flag}")
        notes += [f"  {r['suite']}: {n} skipped: {why}" for why, n in sorted(r["skipped"].items())]
    return "\n".join(lines + (["", *notes] if notes else []))


def problems_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results that failed or crashed."""
    return [r for r in results if r.get("crash") or r.get("problems")]


if __name__ == "__main__":
    sys.exit(main())

