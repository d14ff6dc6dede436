"""The two cores (docs/internals.md#compiled-core): which one runs, DANGA_PURE, a stale
in-place build, and Python subclasses of Socket on whichever core this run has.

CI runs the whole suite twice: once compiled with ``DANGA_EXPECT_CORE=compiled`` (so
a build that silently fell back to pure fails here), once with ``DANGA_PURE=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES, SourceFileLoader
from pathlib import Path

import pytest

import danga
from danga import _core
from danga.testing import run_until
from danga_helpers import nb_pair

CHECK = ("import danga, importlib, sys; from danga import _core; "
         "[importlib.import_module(m) for m in _core.COMPILED]; "
         "print(danga.CORE, _core.active(), "
         "*sorted(sys.modules[m].__file__.rsplit('.', 1)[-1] for m in _core.COMPILED))")


def _core_in_subprocess(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DANGA_PURE",)}
    out = subprocess.run([sys.executable, "-c", CHECK], env={**clean, **env},
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_the_active_core_is_the_one_this_run_expects():
    expected = os.environ.get("DANGA_EXPECT_CORE", "").strip()
    if os.environ.get(_core.PURE_ENV, "").strip() not in ("", "0"):
        assert danga.CORE == "pure"
    if expected:
        assert expected == danga.CORE, (
            f"DANGA_EXPECT_CORE={expected} but danga.CORE is {danga.CORE!r}: the compiled "
            "core was not built or not found (DANGA_COMPILE=1 pip install -e .)")
    assert danga.CORE in ("compiled", "pure")
    assert _core.active() == danga.CORE


def test_danga_pure_loads_every_core_module_from_its_source():
    words = _core_in_subprocess(DANGA_PURE="1")
    assert words[:2] == ["pure", "pure"], words
    assert set(words[2:]) == {"py"}, words


def _built() -> bool:
    package = Path(danga.__file__).parent
    return all(any((package / (name.split(".", 1)[1].replace(".", "/") + suffix)).exists()
                   for suffix in EXTENSION_SUFFIXES) for name in _core.COMPILED)


def test_without_danga_pure_a_built_core_is_the_compiled_one():
    words = _core_in_subprocess(DANGA_PURE="0")
    if _built():
        assert words[:2] == ["compiled", "compiled"], words
        assert "py" not in words[2:], words
    else:
        assert words[:2] == ["pure", "pure"], words


def _fake_build(tmp_path: Path, source_newer: bool) -> Path:
    # A package directory holding timers.py and an "extension" of timers: the finder
    # decides by names and mtimes only, so the extension is never loaded here.
    source = tmp_path / "timers.py"
    source.write_text("X = 1\n")
    built = tmp_path / ("timers" + EXTENSION_SUFFIXES[0])
    built.write_bytes(b"")
    old, new = 1_000_000_000, 2_000_000_000
    os.utime(source, ns=(new, new) if source_newer else (old, old))
    os.utime(built, ns=(old, old) if source_newer else (new, new))
    return source


def test_a_stale_in_place_build_never_shadows_its_edited_source(tmp_path):
    source = _fake_build(tmp_path, source_newer=True)
    with pytest.warns(UserWarning, match="older than"):
        spec = _core._SourceFinder(force_pure=False).find_spec("danga.timers",
                                                                [str(tmp_path)])
    assert spec is not None and spec.origin == str(source)
    assert isinstance(spec.loader, SourceFileLoader)


def test_a_fresh_in_place_build_is_left_to_the_import_system(tmp_path):
    _fake_build(tmp_path, source_newer=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _core._SourceFinder(force_pure=False).find_spec(
            "danga.timers", [str(tmp_path)]) is None
    forced = _core._SourceFinder(force_pure=True).find_spec("danga.timers", [str(tmp_path)])
    assert forced is not None and forced.origin == str(tmp_path / "timers.py")
    # Only the core's modules: anything else is the import system's business.
    assert _core._SourceFinder(force_pure=True).find_spec(
        "danga.cli", [str(tmp_path)]) is None


def test_setup_py_compiles_exactly_the_modules_danga_core_knows():
    # setup.py keeps its own copy of the list (a build must not import what it builds).
    import ast

    tree = ast.parse((Path(__file__).parents[1] / "setup.py").read_text(encoding="utf-8"))
    lists = [ast.literal_eval(node.value) for node in tree.body
             if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "COMPILED" for t in node.targets)]
    assert lists == [_core.COMPILED]


def test_danga_backends_says_which_core_runs():
    out = subprocess.run([sys.executable, "-m", "danga", "backends"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert f"core: {danga.CORE}" in out, out


# Python subclasses of Socket on this run's core: the overrides a server writes.


class Slotted(danga.Socket):
    __slots__ = ("got", "closes")

    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.got = b""
        self.closes: list[str | None] = []

    def event_read(self):
        data = self.read(4096)
        if data is None:
            self.close("eof")
        elif data:
            self.got += data
            self.write(data.upper())

    def read(self, n):
        data = super().read(n)
        return data if not data else b"<" + data + b">"

    def write(self, data=None):
        return super().write(data if not isinstance(data, bytes) else data + b"!")

    def close(self, reason=None):
        self.closes.append(reason)
        super().close(reason)


class Plain(Slotted):  # no __slots__: instances get a __dict__
    def event_read(self):
        self.extra = "dict attribute"
        super().event_read()


@pytest.mark.parametrize("cls", [Slotted, Plain])
def test_python_subclass_overrides_run_on_this_core(poller_cls, cls):
    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = cls(a, loop=lp)
        obj.watch_read(True)
        b.send(b"hi")
        run_until(lp, lambda: obj.got)
        assert obj.got == b"<hi>"
        received = b""

        def echoed() -> bool:
            nonlocal received
            try:
                received += b.recv(100)
            except BlockingIOError:
                pass
            return received == b"<HI>!"

        run_until(lp, echoed)
        b.close()
        run_until(lp, lambda: obj.closed)
        assert obj.closes == ["eof"]
        assert hasattr(obj, "__dict__") == (cls is Plain)
    finally:
        lp.close()
        a.close()
        b.close()


def test_a_class_changed_after_use_is_seen_by_the_core(poller_cls):
    # The compiled core caches where a type keeps a slot (docs/internals.md#compiled-core):
    # a class changed after the core has read its objects must be read anew.
    class Late(danga.Socket):
        __slots__ = ()

    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Late(a, loop=lp)
        for _ in range(3):  # the reads of write()'s checks are cached by now
            assert obj.write(b"one") is True
        assert b.recv(100) == b"oneoneone"
        Late.closed = property(lambda self: True)  # a closed object sends nothing
        try:
            assert obj.write(b"two") is True
            with pytest.raises(BlockingIOError):
                b.recv(100)
        finally:
            del Late.closed
        assert obj.write(b"three") is True
        assert b.recv(100) == b"three"
        obj.close()
    finally:
        lp.close()
        a.close()
        b.close()


def test_a_method_replaced_after_use_is_the_one_called(poller_cls):
    # The compiled core caches a type's methods too: replacing one must be seen.
    class Swapped(danga.Socket):
        __slots__ = ("seen",)

        def event_read(self):
            self.seen.append("old")
            self.read(100)

    def new_event_read(self):
        self.seen.append("new")
        self.read(100)

    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Swapped(a, loop=lp)
        obj.seen = []
        obj.watch_read(True)
        for _ in range(3):  # dispatched (and cached) a few times
            b.send(b"x")
            n = len(obj.seen)
            run_until(lp, lambda n=n: len(obj.seen) > n)
        assert set(obj.seen) == {"old"}
        Swapped.event_read = new_event_read
        b.send(b"y")
        run_until(lp, lambda: obj.seen[-1] == "new")
        assert obj.seen.count("new") == 1
        obj.close()
    finally:
        lp.close()
        a.close()
        b.close()
