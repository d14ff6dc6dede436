"""examples/file_cache.py, the static server's open-file cache: what is cached, how long
a change on disk may go unseen, and that no fd outlives its use.

The cache does no I/O multiplexing (no loop, no backend): its clock is replaced by a
counter the test moves, so validity is tested without sleeping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from danga_helpers import fd_open as is_open

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import file_cache  # noqa: E402 (examples/ is not a package)

pytestmark = pytest.mark.timeout(30)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(file_cache.time, "monotonic", c)
    return c


@pytest.fixture
def root(tmp_path) -> Iterator[Path]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "small.txt").write_bytes(b"small one\n")
    (www / "big.bin").write_bytes(b"B" * 5000)
    (tmp_path / "secret").write_bytes(b"outside\n")
    (www / "out").symlink_to(tmp_path / "secret")
    (www / "dir").mkdir()
    yield www


def test_small_files_in_memory_large_ones_keep_an_fd(root, clock):
    cache = file_cache.FileCache(str(root), small_max=100)
    small, big = cache.get("/small.txt"), cache.get("/big.bin")
    assert small is not None and small.data == b"small one\n" and small.fd == -1
    assert small.ctype == "text/plain"
    assert big is not None and big.data is None and is_open(big.fd) and big.size == 5000
    assert os.pread(big.fd, 3, 0) == b"BBB"
    assert cache.get("/big.bin") is big  # within validity: the same entry, no I/O
    assert cache.get("/b%69g.bin") is not None  # percent-decoded
    cache.clear()
    assert big.fd == -1


def test_what_is_not_a_file_under_the_root_is_none(root, clock):
    cache = file_cache.FileCache(str(root))
    for target in ("/missing", "/../secret", "/%2e%2e/secret", "/out", "/dir", "/",
                   "relative", "/a\0b"):
        assert cache.get(target) is None, target
    assert cache.entries == {}


@pytest.mark.parametrize("name", ["small.txt", "big.bin"])
def test_changes_on_disk_are_seen_once_the_validity_has_passed(root, clock, name):
    cache = file_cache.FileCache(str(root), valid=1.0, small_max=100)
    target = f"/{name}"
    first = cache.get(target)
    assert first is not None
    # Changed in place (another size): unseen for less than the validity, seen after it.
    (root / name).write_bytes(b"changed, longer than before: " + b"x" * 50)
    clock.now += 0.9
    assert cache.get(target) is first
    clock.now += 0.2
    changed = cache.get(target)
    assert changed is not None and changed is not first and changed.size == 79
    assert first.fd == -1  # the dropped entry's fd was closed (no response used it)
    # Replaced (renamed over: another inode, same size).
    (root / "new").write_bytes(b"n" * 79)
    os.replace(root / "new", root / name)
    clock.now += 1.1
    replaced = cache.get(target)
    assert replaced is not None and replaced is not changed
    data = replaced.data if replaced.data is not None else os.pread(replaced.fd, 100, 0)
    assert data == b"n" * 79
    # Deleted: None, and the entry (and its fd) are gone.
    fd = replaced.fd
    os.unlink(root / name)
    clock.now += 1.1
    assert cache.get(target) is None
    assert target not in cache.entries
    if fd >= 0:
        assert not is_open(fd)


def test_valid_zero_checks_every_time(root, clock):
    cache = file_cache.FileCache(str(root), valid=0.0)
    first = cache.get("/small.txt")
    assert cache.get("/small.txt") is first  # checked, unchanged: kept
    (root / "small.txt").write_bytes(b"other\n")
    got = cache.get("/small.txt")
    assert got is not None and got.data == b"other\n"


def test_a_symlink_turned_outward_is_refused_at_the_next_check(root, clock):
    (root / "link").symlink_to(root / "small.txt")
    cache = file_cache.FileCache(str(root), valid=1.0)
    assert cache.get("/link") is not None
    (root / "link").unlink()
    (root / "link").symlink_to(root.parent / "secret")
    clock.now += 1.1
    assert cache.get("/link") is None


def test_evicted_fds_are_closed_once_no_response_uses_them(root, clock):
    for i in range(3):
        (root / f"f{i}").write_bytes(b"%d" % i * 100)
    cache = file_cache.FileCache(str(root), small_max=0, max_entries=2)
    e0 = cache.get("/f0")
    assert e0 is not None
    fd0 = cache.acquire(e0)  # a response is sending from it
    e1, e2 = cache.get("/f1"), cache.get("/f2")  # f0 is the oldest: evicted
    assert e1 is not None and e2 is not None
    assert list(cache.entries) == ["/f1", "/f2"]
    assert e0.dead and e0.fd == fd0 and is_open(fd0)  # still in use: kept open
    assert os.pread(fd0, 3, 0) == b"000"
    cache.release(e0)
    assert e0.fd == -1 and not is_open(fd0)
    fd1 = e1.fd
    assert cache.get("/f0") is not None  # back in: f1 is evicted, nobody uses it
    assert e1.fd == -1 and not is_open(fd1)
    assert is_open(e2.fd)
    cache.clear()
    assert cache.entries == {}


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="FileCache"):
        file_cache.FileCache(str(root), max_entries=0)
    with pytest.raises(ValueError, match="FileCache"):
        file_cache.FileCache(str(root), valid=-1)
