"""``danga check --backend NAME``: the conformance suite against an installed backend.

It runs the shipped suite (:mod:`danga.testing.suite`) in a pytest subprocess, isolated
from the current directory's pytest configuration and from autoloaded pytest plugins
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, ``-p danga.testing``), then prints a per-group
summary (passed / failed / expected failures) and exits non-zero if anything failed.

The backend is found the way ``DANGA_BACKEND`` finds it (entry points in the group
``danga.backends``), so a plugin must be installed (or its ``dist-info`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import backends
from ..cli import command
from . import SUITE

__all__ = ["GROUPS", "format_summary", "run_check"]

#: The groups of the suite, in the order they are reported.
GROUPS = ("registration", "readiness", "hangup", "errors", "timeouts", "signals", "fork",
          "files", "pipes", "close", "scale")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=os.environ.get(backends.ENV_VAR) or None,
                        help="the backend to check (default: DANGA_BACKEND)")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only run the tests matching this pytest -k expression")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show pytest's output for every test")
    parser.add_argument("--peer", action="store_true",
                        help="also run CPython's own selectors and asyncio suites through "
                        "danga.Selector on the backend (danga.testing.peer)")


@command("check", "run the backend conformance suite against an installed backend",
         _options)
def _check(args: argparse.Namespace) -> int:
    if not args.backend:
        raise ValueError("name the backend to check: danga check --backend NAME")
    status = run_check(args.backend, keyword=args.keyword, verbose=args.verbose)
    if args.peer:
        from .peer import run_peer_check

        status |= run_peer_check(args.backend, keyword=args.keyword, verbose=args.verbose)
    return status


def run_check(name: str, *, keyword: str | None = None, verbose: bool = False) -> int:
    """Run the suite on backend *name*, print the summary; the exit status (0: passed).

    Raises:
        UnknownBackend: no backend has this name.
        BackendUnavailable: it cannot be loaded or does not work here.
    """
    backends.choose(name)  # the one-line errors of `danga` come from here, not pytest
    info = {row.name: row for row in backends.describe()}.get(name)
    origin = f" from {info.distribution} ({info.target})" if info is not None else ""
    print(f"danga check: backend {name!r}{origin}", flush=True)
    with tempfile.TemporaryDirectory(prefix="danga-check-") as tmp:
        ini = Path(tmp, "pytest.ini")
        ini.write_text("[pytest]\n")  # nobody's addopts or testpaths: just the suite
        report = Path(tmp, "report.json")
        cmd = [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", tmp,
               "-p", "danga.testing", "-p", "no:cacheprovider",
               "--danga-backend", name, "--danga-report", str(report),
               "-v" if verbose else "-q", "-rfE"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd += ["-p", "pytest_timeout", "--timeout", "120"]
        if keyword:
            cmd += ["-k", keyword]
        cmd.append(str(SUITE))
        env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        env.pop(backends.ENV_VAR, None)  # --danga-backend says which backend
        status = subprocess.call(cmd, env=env, cwd=tmp)
        data: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    print()
    print(format_summary(data.get("groups", {})))
    if status == 0 and data.get("groups"):
        print(f"\ndanga check: {name}: PASSED")
        return 0
    why = "no test ran" if status in (0, 5) else f"pytest exit status {status}"
    print(f"\ndanga check: {name}: FAILED ({why})")
    return 1


def format_summary(groups: dict[str, dict[str, int]]) -> str:
    """The per-group table of ``danga check``."""
    order = [g for g in GROUPS if g in groups] + sorted(set(groups) - set(GROUPS))
    lines = [f"  {'group':<14}{'passed':>8}{'failed':>8}{'xfailed':>9}{'skipped':>9}"]
    total = {"passed": 0, "failed": 0, "xfailed": 0, "skipped": 0}
    for name in order:
        counts = groups[name]
        for key in total:
            total[key] += counts.get(key, 0)
        flag = "  <- FAILED" if counts.get("failed") or counts.get("skipped") else ""
        lines.append(f"  {name:<14}{counts.get('passed', 0):>8}{counts.get('failed', 0):>8}"
                     f"{counts.get('xfailed', 0):>9}{counts.get('skipped', 0):>9}{flag}")
    lines.append(f"  {'total':<14}{total['passed']:>8}{total['failed']:>8}"
                 f"{total['xfailed']:>9}{total['skipped']:>9}")
    return "\n".join(lines)
