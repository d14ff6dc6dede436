"""The benchmark harness's smallest configuration produces a well-formed result.

No timing is asserted: the machine is shared. What is checked is that a real server was
measured by the load generator (which verifies every echoed byte) and that the JSON
document, the table and the targets are complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import danga.backends

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = [pytest.mark.xdist_group("bench"), pytest.mark.timeout(30)]


def test_smallest_run_is_well_formed(tmp_path: Path) -> None:
    server = f"danga-{danga.backends.best().name}"
    out = tmp_path / "result.json"
    proc = subprocess.run(
        # Through `danga bench` (src/danga/bench.py), which drives benchmarks/run.py.
        [sys.executable, "-m", "danga", "bench", "--servers", server, "--workloads", "pp64x1",
         "--rounds", "1", "--duration", "0.5", "--warmup", "0.1", "--no-timers",
         "--no-syscalls", "--no-png", "--json", str(out)],
        capture_output=True, text=True, timeout=25, check=False, cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    assert doc["servers"] == [server]
    assert doc["loadgen"] in ("c", "python-fallback")
    point = doc["workloads"]["pp64x1"]
    assert point["unit"] == "rt/s"
    stats = point["servers"][server]["value"]
    assert stats["n"] == 1
    assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert point["servers"][server]["server_cpu_us_per_rt"]["median"] >= 0
    assert {t["target"] for t in doc["targets"]} >= {"pp64x10 vs asyncio",
                                                     "syscalls per round trip"}
    # Unmeasured targets say so instead of passing.
    assert all(t["ok"] is None for t in doc["targets"] if t["value"] is None)
    assert "ping-pong 64 B, 1 conn" in proc.stdout
