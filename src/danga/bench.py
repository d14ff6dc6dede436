"""``danga bench``: a short run of the benchmark harness, with a progress display.

The harness lives in the source tree's ``benchmarks/`` directory (it is not part of the
wheel: it compiles C servers and starts peers such as asyncio, uvloop and Perl's
Danga::Socket). It is found through ``DANGA_BENCHMARKS``, next to this package in a source
checkout, or in the current directory. ``python benchmarks/run.py`` is the full run.

Importing ``danga`` never imports this module; ``danga.cli`` does, only for ``danga bench``
and the help, to register the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .cli import command

__all__ = ["SHORT", "find_benchmarks"]

#: A few seconds a point: one round, 1.5 s measured after 0.3 s of warm-up.
SHORT = {"rounds": 1, "duration": 1.5, "warmup": 0.3}


def find_benchmarks() -> Path | None:
    """The ``benchmarks/`` directory holding ``run.py``, or None when there is none."""
    candidates = []
    env = os.environ.get("DANGA_BENCHMARKS", "").strip()
    if env:
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "benchmarks")
    candidates.append(Path.cwd() / "benchmarks")
    for path in candidates:
        if (path / "run.py").is_file() and (path / "harness.py").is_file():
            return path
    return None


def _load_runner() -> ModuleType | None:
    where = find_benchmarks()
    if where is None:
        return None
    name = "_danga_benchmarks_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, where / "run.py")
    if spec is None or spec.loader is None:  # pragma: no cover - a broken checkout
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _configure(parser: argparse.ArgumentParser) -> None:
    runner = _load_runner()
    if runner is None:
        return  # the command says why when it runs
    runner.configure(parser, SHORT)
    results = Path(runner.harness.RESULTS)
    # The short run must not overwrite the full run's JSON and chart (docs/performance.md).
    parser.set_defaults(json=results / "short.json", no_png=True)


@command("bench", "a short benchmark run: danga against asyncio, uvloop, raw epoll, C and "
                  "Perl's Danga::Socket (python benchmarks/run.py is the full one)", _configure)
def _bench(args: argparse.Namespace) -> int:
    runner = _load_runner()
    if runner is None:
        print("danga: bench needs the benchmarks/ directory of a danga source checkout; "
              "run it from the checkout or set DANGA_BENCHMARKS=/path/to/benchmarks",
              file=sys.stderr)
        return 2
    status: int = runner.run(args)
    return status
