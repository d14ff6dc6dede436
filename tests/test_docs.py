"""Every code sample in the documentation runs, so the docs cannot rot.

Each fenced ``python`` block of ``docs/*.md`` and ``README.md`` is run on its own, in a
fresh interpreter (a subprocess, in an empty temporary directory, with this process's
environment, so ``DANGA_BACKEND`` forces the backend there too), and must exit 0
within a timeout. Samples must therefore be complete programs that stop by themselves.

A block that cannot run unattended (a server that runs forever) is preceded by the line
``<!-- no-run -->``; it must still compile, such blocks must stay rare, and the page
must carry a runnable twin elsewhere (the README's server has one in the quick start).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NO_RUN = "<!-- no-run -->"
#: The most samples the whole documentation may exempt from running.
MAX_NO_RUN = 3
#: Seconds one sample may take (samples are small; this only catches a hang).
TIMEOUT = 30

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Sample:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    no_run: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def markdown_files() -> list[Path]:
    """The files whose samples are tested: README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def extract(path: Path) -> list[Sample]:
    """The fenced code blocks of *path*, with their language and no-run marker.

    Raises:
        ValueError: a fence is not closed (the rest of the page would be code).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    samples: list[Sample] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = match["info"].strip().split(" ")[0].lstrip(".{").rstrip("}").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if (closing is not None and closing["fence"].startswith(fence)
                    and not closing["info"].strip()):
                break
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        else:
            raise ValueError(f"{path}:{start + 1}: unclosed code fence")
        previous = next((text.strip() for text in reversed(lines[:start]) if text.strip()), "")
        samples.append(Sample(path, start + 1, language, "\n".join(body) + "\n",
                              previous == NO_RUN))
        i += 1
    return samples


def python_samples() -> list[Sample]:
    return [s for path in markdown_files() for s in extract(path)
            if s.language in ("python", "py", "python3")]


SAMPLES = python_samples()
RUNNABLE = [s for s in SAMPLES if not s.no_run]


def test_the_docs_have_samples() -> None:
    # Guards the extraction itself: a broken regex would make every test below vacuous.
    assert len(RUNNABLE) >= 3, [s.id for s in SAMPLES]
    assert any(s.path.name == "README.md" for s in SAMPLES)


@pytest.mark.parametrize("sample", RUNNABLE, ids=[s.id for s in RUNNABLE])
def test_sample_runs(sample: Sample, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(sample.code, encoding="utf-8")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{sample.id}: the sample did not stop within {TIMEOUT}s "
                    f"(samples must stop by themselves; output: {exc.stdout!r})")
    assert result.returncode == 0, (
        f"{sample.id} exited {result.returncode}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}"
    )


def test_no_run_samples_are_rare_and_compile() -> None:
    exempt = [s for s in SAMPLES if s.no_run]
    assert len(exempt) <= MAX_NO_RUN, (
        f"{len(exempt)} samples are marked {NO_RUN} (at most {MAX_NO_RUN}): "
        f"{[s.id for s in exempt]}; make them stop by themselves instead"
    )
    for sample in exempt:
        compile(sample.code, sample.id, "exec")


def test_no_run_marker_precedes_a_python_block() -> None:
    # A marker in front of anything else is a typo that would silently exempt nothing,
    # or a marker left behind after its sample was removed.
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        blocks = {s.line: s for s in extract(path)}
        for number, text in enumerate(lines, 1):
            if text.strip() != NO_RUN:
                continue
            following = next((n for n in range(number + 1, len(lines) + 1)
                              if lines[n - 1].strip()), None)
            sample = blocks.get(following or -1)
            assert sample is not None and sample.language in ("python", "py", "python3"), (
                f"{path.name}:{number}: {NO_RUN} must directly precede a python block"
            )


def test_extract_handles_fences_markers_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nprint(1)\n```\n\n<!-- no-run -->\n\n```py\nwhile True:\n"
        "    pass\n```\n\n````text\n```python\nnot code\n```\n````\n\n"
        "- item\n\n    ```python\n    x = 1\n    ```\n",
        encoding="utf-8",
    )
    got = [(s.line, s.language, s.code, s.no_run) for s in extract(page)]
    assert got == [
        (3, "python", "print(1)\n", False),
        (9, "py", "while True:\n    pass\n", True),
        (14, "text", "```python\nnot code\n```\n", False),
        (22, "python", "x = 1\n", False),
    ]
    page.write_text("```python\nprint(1)\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unclosed"):
        extract(page)


def _nav_pages() -> list[str]:
    # mkdocs.yml's nav entries are "- Title: page.md" lines; parsed by hand so that this
    # test needs no YAML library (the docs extra is not part of the test extra).
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1]
    pages = []
    for line in nav.splitlines():
        if line and not line.startswith(" "):
            break
        match = re.match(r"\s*-\s+.*:\s+(\S+\.md)\s*$", line)
        if match:
            pages.append(match[1])
    return pages


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages()
    assert "index.md" in pages and "api.md" in pages, pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml names pages that do not exist: {missing}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk <= set(pages), f"pages missing from the nav: {sorted(on_disk - set(pages))}"


# -- numbers quoted from the shipped conformance suite ---------------------------------

#: Prints "GROUP<TAB>NODEID" for every collected test; loaded with -p in a subprocess.
_GROUP_PRINTER = '''
def pytest_collection_finish(session):
    for item in session.items:
        mark = item.get_closest_marker("danga_group")
        print("danga-group", mark.args[0] if mark else "other", item.nodeid, sep="\\t")
'''


def _suite_groups(tmp_path: Path) -> dict[str, int]:
    """How many tests of the shipped suite (danga.testing.suite) each group has, for one
    backend: collected as `danga check` runs them, in a pytest subprocess."""
    from danga import backends
    from danga.testing import SUITE

    (tmp_path / "danga_group_printer.py").write_text(_GROUP_PRINTER, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop(backends.ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"), "--rootdir",
         str(tmp_path), "-p", "danga.testing", "-p", "danga_group_printer", "-p",
         "no:cacheprovider", "--danga-backend", backends.available()[0], "--collect-only",
         "-q", str(SUITE)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    groups: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if line.startswith("danga-group\t"):
            name = line.split("\t")[1]
            groups[name] = groups.get(name, 0) + 1
    return groups


def test_plugins_page_quotes_the_suites_real_counts(tmp_path: Path) -> None:
    # docs/plugins.md shows what `danga check` prints for a backend that passes; the
    # table must be exactly what format_summary prints for the suite as it is today, so
    # adding or removing a conformance test without updating the page fails here.
    from danga.testing.check import GROUPS, format_summary

    groups = _suite_groups(tmp_path)
    assert set(groups) == set(GROUPS), (sorted(groups), GROUPS)  # every test in a group
    expected = format_summary({name: {"passed": n} for name, n in groups.items()})
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    assert expected in page, (
        "docs/plugins.md's `danga check` table is stale; the suite now gives:\n" + expected
    )


# -- citations: only documents in the repository, and only anchors that exist ------------

INTERNALS = DOCS / "internals.md"
#: Where citations are checked.
CITING = ("README.md", "docs", "examples", "tests", "benchmarks", "src")
#: A citation of docs/internals.md: "docs/internals.md#ANCHOR" or
#: "docs/internals.md, 'ANCHOR'".
_INTERNALS_CITATION = re.compile(r"internals\.md(?:#|, ')([a-z0-9-]+)")
#: Citations a reader cannot follow: the design notes and reference material that live
#: outside the repository, and issue numbers.
_UNFINDABLE = re.compile(
    r"pitfalls C\d|reference §|§ ?\d|DESIGN\.md|\bissues? #?\d", re.IGNORECASE)
_ANCHOR = re.compile(r"\{#([a-z0-9-]+)\}")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)


def _text_files() -> list[Path]:
    files: list[Path] = []
    for name in CITING:
        path = ROOT / name
        found = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in found if f.suffix in (".md", ".py", ".c", ".toml", ".txt")
                  and "__pycache__" not in f.parts]
    return files


def internals_anchors() -> set[str]:
    """The anchors of docs/internals.md: explicit {#id} ones and the headings' slugs."""
    text = INTERNALS.read_text(encoding="utf-8")
    anchors = set(_ANCHOR.findall(text))
    for heading in _HEADING.findall(text):
        if "{#" not in heading:
            anchors.add(re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-"))
    return anchors


def test_citations_point_to_documents_in_the_repository() -> None:
    unfindable = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _UNFINDABLE.search(line) and path != Path(__file__):
                unfindable.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not unfindable, (
        "cite docs/internals.md (or another file in the repository) instead:\n"
        + "\n".join(unfindable))


def test_internals_citations_name_existing_anchors() -> None:
    anchors = internals_anchors()
    assert {"architecture", "hot-path-rules", "dup-then-close"} <= anchors, anchors
    broken = []
    for path in [*_text_files(), *sorted((ROOT / "src").rglob("*.py"))]:
        for name in _INTERNALS_CITATION.findall(path.read_text(encoding="utf-8")):
            if name not in anchors:
                broken.append(f"{path.relative_to(ROOT)}: {name}")
    assert not broken, f"citations of docs/internals.md anchors that do not exist: {broken}"


# -- tests the documentation names must exist --------------------------------------------

#: "`test_file.py::test_name`" or "`dir/test_file.py::Class::test_name[id]`"; a
#: "`::test_name`" that follows names another test of the same file.
_TEST_REF = re.compile(r"([\w/]+\.py)?::((?:[A-Z]\w*::)?test_\w+)")


def _cited_tests(page: Path) -> list[tuple[str, str]]:
    cited = []
    for line in page.read_text(encoding="utf-8").splitlines():
        current = None
        for match in _TEST_REF.finditer(line):
            current = match[1] or current
            if current is not None:
                cited.append((current, match[2]))
    return cited


def _test_file(name: str) -> Path | None:
    """The test file a page names: "suite.py" is the shipped suite; other names are
    under tests/ (with or without the "tests/" prefix, or found by their file name)."""
    if name == "suite.py":
        return ROOT / "src" / "danga" / "testing" / "suite.py"
    path = ROOT / "tests" / name.removeprefix("tests/")
    if path.is_file():
        return path
    found = sorted((ROOT / "tests").rglob(Path(name).name))
    return found[0] if len(found) == 1 else None


@pytest.mark.parametrize("page", ["internals.md", "porting.md", "reliability.md"])
def test_tests_named_by_the_docs_exist(page: str) -> None:
    cited = _cited_tests(DOCS / page)
    assert cited or page == "reliability.md", f"{page} names no test: is the regex broken?"
    missing = []
    for file, test in cited:
        path = _test_file(file)
        name = test.rsplit("::", 1)[-1]
        if path is None or not re.search(
                rf"^\s*def {name}\(", path.read_text(encoding="utf-8"), re.MULTILINE):
            missing.append(f"{file}::{test}")
    assert not missing, f"docs/{page} names tests that do not exist: {missing}"


def test_api_page_documents_every_public_socket_attribute() -> None:
    # Socket's public instance attributes (Danga's fields: sock, fd, closed, ...) carry no
    # docstrings, so mkdocstrings would leave them out: docs/api.md lists them in a table.
    import danga

    slots = {name for cls in danga.Socket.__mro__
             for name in getattr(cls, "__slots__", ()) if not name.startswith("_")}
    assert {"sock", "fd", "closed", "close_reason", "write_buf_size"} <= slots, slots
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    section = page.split("### Socket attributes", 1)[1].split("\n#", 1)[0]
    table, class_table = section.split("Class attributes", 1)
    rows = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert rows == slots, f"docs/api.md's Socket attributes table: missing " \
        f"{sorted(slots - rows)}, not attributes {sorted(rows - slots)}"
    # ...and the class attributes a subclass sets (plain values on Socket: no methods,
    # no properties, no slot descriptors)
    settings = {name for name, value in vars(danga.Socket).items()
                if not name.startswith("_") and not callable(value)
                and not hasattr(value, "__get__")}
    assert {"max_idle_time", "sendfile_max_chunk"} <= settings, settings
    rows = set(re.findall(r"^\| `(\w+)` \|", class_table, re.MULTILINE))
    assert rows == settings, f"docs/api.md's Socket class attributes table: missing " \
        f"{sorted(settings - rows)}, not class attributes {sorted(rows - settings)}"
