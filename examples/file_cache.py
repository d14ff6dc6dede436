"""An open-file cache for a static file server (nginx's ``open_file_cache``, in small).

``FileCache(root).get(target)`` maps the path of a request (``/dir/a%20b.txt``) to an
:class:`OpenFile`, or None when it names no regular file under *root* (missing, a
directory, or a path that leaves the root through ``..`` or a symlink). What a request
would otherwise pay for -- ``unquote``, ``realpath`` of the path (a ``newfstatat`` per
component), ``open``, ``fstat``, the MIME type -- is paid once per distinct path and
then once per *valid* seconds, when the entry is checked again.

The rules, and what a change on disk costs:

- **Validity** (``valid``, 1 s by default; nginx's ``open_file_cache_valid`` is 60 s):
  an entry older than that is resolved and ``stat``-ed again before it is used. If
  the path now names another file (replaced, e.g. by a rename), or the same file with
  another size, mtime or ctime (changed in place), the entry is dropped and the file
  opened afresh; if it names nothing (deleted, or a symlink now pointing out of the
  root) the entry is dropped and the request gets None. So a change on disk is served
  at most *valid* seconds late; ``valid=0`` checks on every request.
- **Small files** (at most ``small_max`` bytes, 16 KiB by default) are read into memory
  once and their fd is closed at once: the server sends the head and the bytes with one
  ``write()``, one ``send()`` system call. nginx does not keep file contents; this
  cache does, for small files only. Larger files keep their fd open, for
  ``write_file()`` (``os.sendfile``).
- **At most** ``max_entries`` entries (1000); the oldest is evicted first. An evicted
  entry's fd is closed once no response is still sending from it: a server
  :meth:`~FileCache.acquire`-s an entry for each response that uses its fd and
  :meth:`~FileCache.release`-s it when the response is sent or its connection closed.
  :meth:`~FileCache.clear` drops every entry the same way.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import time
from urllib.parse import unquote

__all__ = ["FileCache", "OpenFile"]


class OpenFile:
    """A cached file: ``size``, ``ctype``, ``data`` (its bytes, for a small file, else
    None) and ``fd`` (open for a large file, -1 for a small one), plus whatever the
    server caches with it in ``extra`` (e.g. its response heads)."""

    __slots__ = ("checked", "ctype", "data", "dead", "extra", "fd", "ident", "path",
                 "refs", "size")

    def __init__(self, path: str, fd: int, ident: tuple[int, ...], size: int,
                 data: bytes | None, now: float) -> None:
        self.path = path
        self.fd = fd
        self.ident = ident
        self.size = size
        self.data = data
        self.ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.checked = now
        self.refs = 0  # responses sending from fd right now
        self.dead = False  # evicted: fd is closed once refs drops to 0
        self.extra: dict[object, bytes] = {}

    def _close_if_unused(self) -> None:
        if self.dead and not self.refs and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells a file, and a change to it, apart."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileCache:
    """Entries by request path, for the regular files under *root*; see the module.

    Raises:
        ValueError: *valid* or *small_max* is negative, or *max_entries* is below 1.
    """

    def __init__(self, root: str, *, valid: float = 1.0, small_max: int = 16 * 1024,
                 max_entries: int = 1000) -> None:
        if valid < 0 or small_max < 0 or max_entries < 1:
            raise ValueError(f"FileCache(): valid and small_max must be >= 0 and "
                             f"max_entries >= 1, not {valid!r}, {small_max!r}, "
                             f"{max_entries!r}")
        self.root = os.path.realpath(root)
        self.valid = valid
        self.small_max = small_max
        self.max_entries = max_entries
        self.entries: dict[str, OpenFile] = {}

    def get(self, target: str) -> OpenFile | None:
        """The entry for request path *target* (its query string already removed), or
        None when it names no regular file under the root."""
        entry = self.entries.get(target)
        now = time.monotonic()
        if entry is not None:
            if now - entry.checked < self.valid:
                return entry
            path = self._resolve(target)
            if path == entry.path:
                try:
                    st = os.stat(path)
                except OSError:
                    st = None
                if st is not None and _identity(st) == entry.ident:
                    entry.checked = now
                    return entry
            self._drop(target)
        return self._load(target, now)

    def acquire(self, entry: OpenFile) -> int:
        """Mark a response as sending from *entry*'s fd; returns the fd. Pair each call
        with :meth:`release`."""
        entry.refs += 1
        return entry.fd

    def release(self, entry: OpenFile) -> None:
        """A response that :meth:`acquire`-d *entry* is sent (or its connection closed)."""
        entry.refs -= 1
        entry._close_if_unused()

    def clear(self) -> None:
        """Drop every entry (fds close as soon as no response uses them)."""
        for target in list(self.entries):
            self._drop(target)

    def _drop(self, target: str) -> None:
        entry = self.entries.pop(target)
        entry.dead = True
        entry._close_if_unused()

    def _resolve(self, target: str) -> str | None:
        raw = unquote(target)
        if not raw.startswith("/") or "\0" in raw:
            return None
        root = self.root
        path = os.path.realpath(os.path.join(root, raw.lstrip("/")))
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None  # left the root (.., or a symlink pointing out)
        return path

    def _load(self, target: str, now: float) -> OpenFile | None:
        path = self._resolve(target)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)  # of what was opened, not of what the path names later
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            data = None
            if st.st_size <= self.small_max:
                data = os.pread(fd, st.st_size + 1, 0)
                changed = len(data) != st.st_size or _identity(os.fstat(fd)) != _identity(st)
                os.close(fd)
                fd = -1
                if changed:  # written to while read: these bytes, this once, uncached
                    return OpenFile(path, -1, (), len(data), data, now)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        entry = OpenFile(path, fd, _identity(st), st.st_size, data, now)
        entries = self.entries
        entries[target] = entry
        if len(entries) > self.max_entries:
            self._drop(next(iter(entries)))
        return entry
