"""The full benchmark run that produces docs/performance.md's figures.

``python benchmarks/run.py`` (about 20 minutes on 2 cores) runs every server on every
workload in interleaved rounds, prints the tables, writes
``benchmarks/results/latest.json`` and draws ``docs/performance.png``. ``--quick`` is a
smoke run (one short round); ``--json`` and ``--png`` write elsewhere; ``--help`` lists
the rest. The harness itself is ``danga.bench`` (``danga bench`` is the short run).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from danga.bench import runner

REPO = Path(__file__).resolve().parent.parent
FULL = {"rounds": 5, "duration": 2.0, "warmup": 0.5}


def main(argv: Sequence[str] | None = None) -> int:
    p = runner.parser(FULL, json=REPO / "benchmarks" / "results" / "latest.json",
                      png=REPO / "docs" / "performance.png", prog="benchmarks/run.py")
    try:
        return runner.run(p.parse_args(argv))
    except ValueError as exc:  # a bad option value: one line, status 2
        print(f"benchmarks/run.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
