"""``danga bench``: the benchmark harness, shipped with the package.

Echo servers (danga on each backend, asyncio, uvloop, rloop, a hand-written
``select.epoll`` loop, a C server and Perl's Danga::Socket) are measured side by side
by a C load generator in interleaved rounds, and the example HTTP programs (the static
file server, the proxy) by wrk against nginx and haproxy (:mod:`danga.bench.http`);
see docs/performance.md. ``danga bench`` is
a short run; ``python benchmarks/run.py`` in a source checkout is the full one that
produces the documentation's figures.

``danga bench`` writes its JSON and its chart into the current directory
(``danga-bench.json``, ``danga-bench.png``) or where ``--json`` and ``--png`` say: never
into the installed package. The C parts are compiled into a per-user cache directory.

Importing ``danga`` never imports this package; ``danga.cli`` does, only for
``danga bench`` and the help, to register the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import command
from . import runner

__all__ = ["SHORT"]

#: A few seconds a point: one round, 1.5 s measured after 0.3 s of warm-up.
SHORT = {"rounds": 1, "duration": 1.5, "warmup": 0.3}


def _configure(parser: argparse.ArgumentParser) -> None:
    runner.configure(parser, SHORT, json=Path("danga-bench.json"), png=Path("danga-bench.png"))


@command("bench", "a short benchmark run: danga against asyncio, uvloop, rloop, raw epoll, C "
                  "and Perl's Danga::Socket (echo), and the example HTTP programs against "
                  "nginx and haproxy (wrk); writes danga-bench.json and danga-bench.png here",
         _configure)
def _bench(args: argparse.Namespace) -> int:
    return runner.run(args)
