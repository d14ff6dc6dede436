"""Third-party backend plugins, for real: throwaway distributions (a module plus a
``*.dist-info`` with METADATA and entry_points.txt) on PYTHONPATH, exercised in
subprocesses so that discovery starts from a clean interpreter each time."""

import json
import os
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SRC = ROOT / "examples" / "plugin" / "src"

# The plugins below subclass a built-in that works on this platform (no poll on Windows).
IMPORT_BASE = ("from danga.backends.poll import PollPoller" if hasattr(select, "poll")
               else "from danga.backends.select import SelectPoller as PollPoller")

TOY = f"""
{IMPORT_BASE}

class ToyPoller(PollPoller):
    '''The poll backend under another name: a plugin that conforms.'''
    name = "toy"
    priority = 1
"""


def make_dist(root, dist, module, source, entry_points):
    """A minimal installed distribution: module.py plus dist-info, under *root*."""
    root.mkdir(parents=True, exist_ok=True)
    source = textwrap.dedent(source).replace("{IMPORT_BASE}", IMPORT_BASE)
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[danga.backends]\n{lines}")
    return root


def run(args, *, paths, env=None, cwd=None):
    clean = {k: v for k, v in os.environ.items()
             if k != "DANGA_BACKEND" and not k.startswith("PYTEST_")}
    clean["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in paths] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    clean.update(env or {})
    return subprocess.run([sys.executable, *args], env=clean, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


INSPECT = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import danga
    from danga import backends
    rows = {r.name: r._asdict() for r in backends.describe()}
    out = {
        "names": backends.names(),
        "available": backends.available(),
        "best": backends.best().name,
        "chosen": backends.choose(None).name,
        "rows": rows,
    }
    loop = danga.Loop()
    loop.run_once(0)
    out["loop_backend"] = loop.backend.name
    loop.close()
out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
print(json.dumps(out))
"""


def inspect(paths, env=None):
    proc = run(["-c", INSPECT], paths=paths, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def toy(tmp_path):
    return make_dist(tmp_path / "site", "toy-plugin", "danga_toy", TOY,
                     {"toy": "danga_toy:ToyPoller"})


def test_plugin_is_discovered_described_and_selectable(toy):
    out = inspect([toy], env={"DANGA_BACKEND": "toy"})
    assert "toy" in out["names"] and "toy" in out["available"]
    row = out["rows"]["toy"]
    assert row["distribution"] == "toy-plugin" and row["available"] and row["priority"] == 1
    assert row["target"] == "danga_toy:ToyPoller"
    assert out["chosen"] == "toy" and out["loop_backend"] == "toy"
    assert out["best"] != "toy", "priority 1 must not win the automatic choice"
    assert out["warnings"] == []


def test_danga_backends_lists_the_plugin_and_marks_it_chosen(toy):
    listed = run(["-m", "danga", "backends"], paths=[toy])
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if " toy " in ln)
    assert "toy-plugin" in line and "available" in line and "chosen" not in line
    forced = run(["-m", "danga", "backends"], paths=[toy], env={"DANGA_BACKEND": "toy"})
    assert forced.returncode == 0, forced.stderr
    line = next(ln for ln in forced.stdout.splitlines() if " toy " in ln)
    assert line.startswith("*") and "<- chosen" in line
    assert "chosen (DANGA_BACKEND): toy" in forced.stdout


def test_conformance_suite_runs_on_the_plugin(toy, tmp_path):
    # No test path: `-p danga.testing --danga-backend NAME` collects the shipped suite,
    # even with plugin autoloading off.
    work = tmp_path / "work"
    work.mkdir()
    (work / "pytest.ini").write_text("[pytest]\n")
    proc = run(["-m", "pytest", "-p", "danga.testing", "--danga-backend", "toy",
                "-p", "no:cacheprovider"], paths=[toy], cwd=work,
               env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "danga backends: toy" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and not re.search(r"\d+ failed", summary), summary
    assert "skipped" not in summary
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= 40, summary


# Poller API v2: what the core guarantees (the true old mask, fd validation at
# registration, clamped waits) is enough for a plugin that only translates to
# select.poll: no fd validation, no per-fd state, no leniency.
MINIMAL = """
import math
import select

from danga.poller import ERR


class MiniPoller:
    name = "mini"
    priority = 1
    api_version = 2

    @classmethod
    def probe(cls):
        select.poll().poll(0)

    def __init__(self):
        self._p = select.poll()

    def modify(self, fd, old, new):
        if self._p is None:
            raise RuntimeError("closed")
        if not new:
            self._p.unregister(fd)
        elif old:
            self._p.modify(fd, new)
        else:
            self._p.register(fd, new)

    def poll(self, timeout):
        if self._p is None:
            raise RuntimeError("closed")
        ms = None if timeout is None else math.ceil(timeout * 1000)
        return [(fd, ERR if m & select.POLLNVAL else m) for fd, m in self._p.poll(ms)]

    def close(self):
        self._p = None
"""


@pytest.mark.skipif(not hasattr(select, "poll"), reason="the minimal plugin wraps "
                    "select.poll, which this platform lacks (Windows)")
def test_minimal_v2_plugin_passes_danga_check(tmp_path):
    site = make_dist(tmp_path / "site", "mini-plugin", "danga_mini", MINIMAL,
                     {"mini": "danga_mini:MiniPoller"})
    proc = run(["-m", "danga", "check", "--backend", "mini"], paths=[site])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "danga check: mini: PASSED" in proc.stdout


V1 = MINIMAL.replace("class MiniPoller:", "class OldPoller:").replace(
    'name = "mini"', 'name = "oldv1"').replace("api_version = 2", "api_version = 1")

V1_LOOP = """
import json, socket, warnings
warnings.simplefilter("error")
import danga
from danga.poller import capabilities
loop = danga.Loop("oldv1")
a, b = socket.socketpair()
got = []
class R(danga.Socket):
    def event_read(self):
        got.append(self.read(10))
R(b, loop=loop).watch_read(True)
a.send(b"hi")
for _ in range(50):
    loop.run_once(0.05)
    if got:
        break
print(json.dumps([got[0].decode(), list(capabilities(type(loop.backend)))]))
"""


def test_v1_plugin_still_loads_and_runs(tmp_path):
    site = make_dist(tmp_path / "site", "v1-plugin", "danga_v1", V1,
                     {"oldv1": "danga_v1:OldPoller"})
    proc = run(["-c", V1_LOOP], paths=[site])
    assert proc.returncode == 0, proc.stderr
    data, caps = json.loads(proc.stdout)
    assert data == "hi"
    # A v1 plugin declares no capabilities and gets the defaults: no fd limit, ERR/HUP
    # reported, not embeddable (it has no fileno()), registrations bound to fd numbers.
    assert caps == [None, True, False, False]


def test_danga_check_passes_the_example_plugin(tmp_path):
    # The example of examples/plugin, "installed" as a dist-info next to its source.
    site = tmp_path / "site"
    site.mkdir()
    info = site / "danga_selectors-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: danga-selectors\nVersion: 2.0.0\n")
    entry = "[danga.backends]\nselectors = danga_selectors:SelectorsPoller\n"
    declared = 'selectors = "danga_selectors:SelectorsPoller"'  # as pyproject.toml says
    assert declared in (EXAMPLE_SRC.parent / "pyproject.toml").read_text()
    (info / "entry_points.txt").write_text(entry)
    proc = run(["-m", "danga", "check", "--backend", "selectors"], paths=[site, EXAMPLE_SRC])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("  group"):]
    for group in ("registration", "readiness", "hangup", "errors", "timeouts", "signals",
                  "fork", "files", "pipes", "close", "scale"):
        row = next(ln for ln in table.splitlines() if ln.split()[:1] == [group])
        passed, failed = int(row.split()[1]), int(row.split()[2])
        assert passed > 0 and failed == 0, row
    assert "danga check: selectors: PASSED" in proc.stdout


def test_danga_check_fails_a_nonconforming_backend(tmp_path):
    site = make_dist(tmp_path / "site", "hasty-plugin", "danga_hasty", """
        {IMPORT_BASE}

        class HastyPoller(PollPoller):
            '''Returns at once whatever the timeout: breaks "poll(t) waits t".'''
            name = "hasty"
            priority = 1
            def poll(self, timeout):
                return super().poll(0 if timeout else timeout)
    """, {"hasty": "danga_hasty:HastyPoller"})
    proc = run(["-m", "danga", "check", "--backend", "hasty", "-k", "TestTimeouts"],
               paths=[site])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.split()[:1] == ["timeouts"])
    assert int(row.split()[2]) >= 2 and "FAILED" in row, row
    assert "danga check: hasty: FAILED" in proc.stdout


def test_danga_check_unknown_backend_is_one_line(tmp_path):
    proc = run(["-m", "danga", "check", "--backend", "nope"], paths=[])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown danga backend 'nope'" in proc.stderr


def test_broken_plugins_only_warn(toy):
    site = toy
    make_dist(site, "broken-import", "danga_broken_import", "raise ImportError('no _speedups')",
              {"brokenimport": "danga_broken_import:Poller"})
    make_dist(site, "broken-probe", "danga_broken_probe", """
        {IMPORT_BASE}
        class Poller(PollPoller):
            name = "brokenprobe"
            @classmethod
            def probe(cls):
                raise RuntimeError("the probe blew up")
    """, {"brokenprobe": "danga_broken_probe:Poller"})
    make_dist(site, "absent-hw", "danga_absent_hw", """
        {IMPORT_BASE}
        from danga import BackendUnavailable
        class Poller(PollPoller):
            name = "absenthw"
            @classmethod
            def probe(cls):
                raise BackendUnavailable(cls.name, "needs the frobnicator device")
    """, {"absenthw": "danga_absent_hw:Poller"})
    make_dist(site, "old-api", "danga_old_api", """
        {IMPORT_BASE}
        class Poller(PollPoller):
            name = "oldapi"
            api_version = 0
    """, {"oldapi": "danga_old_api:Poller"})
    out = inspect([site])
    warned = "\n".join(out["warnings"])
    assert "'brokenimport' (from broken-import)" in warned and "ImportError" in warned
    assert "no _speedups" in warned
    assert "'brokenprobe' (from broken-probe)" in warned and "the probe blew up" in warned
    assert "'oldapi' (from old-api)" in warned and "loads version 1 or 2" in warned
    assert all(w.startswith("PluginWarning") for w in out["warnings"]), out["warnings"]
    rows = out["rows"]
    assert not rows["absenthw"]["available"]
    assert rows["absenthw"]["reason"] == "needs the frobnicator device"
    for name in ("brokenimport", "brokenprobe", "oldapi"):
        assert not rows[name]["available"] and name not in out["available"]
    # Everything else keeps working.
    assert "toy" in out["available"] and out["best"] == out["loop_backend"]
    assert out["best"] in ("epoll", "kqueue", "poll", "select")
    listing = run(["-m", "danga", "backends"], paths=[site])
    assert listing.returncode == 0 and "brokenimport" in listing.stdout
    explicit = run(["-m", "danga", "backends"], paths=[site], env={"DANGA_BACKEND": "oldapi"})
    assert explicit.returncode == 2 and "loads version 1 or 2" in explicit.stderr
    assert "Traceback" not in explicit.stderr


def test_two_distributions_claiming_one_name(tmp_path):
    def site(dist, origin):
        return make_dist(tmp_path / dist, dist, f"danga_{dist.replace('-', '_')}", f"""
            {IMPORT_BASE}
            class Poller(PollPoller):
                name = "dup"
                origin = "{origin}"
        """, {"dup": f"danga_{dist.replace('-', '_')}:Poller"})

    a, b = site("alpha-dup", "alpha"), site("beta-dup", "beta")
    script = ("import warnings, json; warnings.simplefilter('always')\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    from danga import backends; cls = backends.get('dup')\n"
              "print(json.dumps([cls.origin, [str(x.message) for x in w]]))")
    winners = set()
    for order in ([a, b], [b, a]):
        proc = run(["-c", script], paths=order)
        assert proc.returncode == 0, proc.stderr
        origin, warned = json.loads(proc.stdout)
        winners.add(origin)
        assert len(warned) == 1 and "alpha-dup" in warned[0] and "beta-dup" in warned[0]
        assert "'dup'" in warned[0]
    assert winners == {"alpha"}, "the winner must not depend on sys.path order"
