"""The worker's content-named file cache: what is on disk, what may go, what must stay.

Layout (``root`` is ``--cache-dir``, default ``<workdir>/cache``; ``forever_root`` is a
stable per-user directory shared by every worker on the node)::

    root/<content-id>/<name>         the file as the function sees it (read-only)
    root/<content-id>/unpacked/      an archive's (or a directory's) unpacked tree (read-only)
    root/.incoming/<id>.<pid>.<n>    a transfer in progress (never under the final name)
    forever_root/<content-id>/...    the same, kept across workers; <content-id>.lock guards it

An entry appears under its final name only by ``rename`` of a complete, hash-checked,
unpacked directory, so no reader ever sees a partial entry. Entries are read-only (mode
bits; when running as root, which ignores them, also the filesystem's immutable flag), so
a function that writes into its input gets PermissionError and the copy stays intact.

Space: ``limit`` bytes (``--disk MB``) cover the entries of ``root`` plus reservations made
before each transfer. :meth:`Cache.reserve` evicts unpinned entries least recently used
first; it answers ``"never"`` when the size exceeds what the cache could ever hold
(:class:`~serverless.CacheFull`) and ``"later"`` when pinned entries are in the way. Pins
are per owner (a call id, an instance): a pinned entry is never evicted. Entries of the
"forever" directory are shared with other workers and are not evicted nor counted here.

Interface used by the data service and by ``data-env``'s environments::

    cache.lookup(id) -> Path | None          the entry's directory (adopts forever entries)
    cache.reserve(id, size) -> "ok" | "later" | "never";  cache.unreserve(id)
    cache.incoming(id) -> Path               a temp file to write a transfer into
    cache.commit(spec, temp_file, forever_lock=None) -> Path   (blocking: may unpack)
    cache.pin(owner, ids); cache.unpin(owner) -> ids that were "call" level and are gone
    cache.take_changes() -> (adopted, removed) since the last look (to tell the manager)
    cache.forever_lock(id) -> ForeverLock | None   (None: another worker holds it)
    cache.close()                            remove this worker's entries (not "forever")

Not thread-safe: the data thread owns it; :meth:`commit` runs in a helper thread and
touches only the filesystem and then, through :meth:`added`, the books (the data thread
calls it when the helper is done).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from serverless.data.archive import unpack_archive
from serverless.data.file import FileSpec

__all__ = ["Cache", "Entry", "ForeverLock", "default_forever_root", "make_read_only",
           "remove_tree"]

log = logging.getLogger("serverless.worker.cache")

_counter = itertools.count()
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def default_forever_root() -> Path:
    """``$XDG_CACHE_HOME/serverless/files`` (default ``~/.cache/serverless/files``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "serverless", "files")


@dataclass
class Entry:
    content_id: str
    size: int  # bytes on disk counted against the limit (file + unpacked tree)
    level: str
    path: Path
    forever: bool = False
    last_used: float = field(default_factory=time.monotonic)


class ForeverLock:
    """An exclusive ``flock`` on ``forever_root/<id>.lock``: the kernel releases it when the
    holder dies, so a crashed fetch or unpack never leaves it stale."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


class Cache:
    def __init__(self, root: Path, forever_root: Path | None = None, limit: int | None = None) -> None:
        self.root = Path(root)
        self.forever_root = Path(forever_root) if forever_root else default_forever_root()
        self.limit = limit
        self.entries: dict[str, Entry] = {}
        self.reserved: dict[str, int] = {}
        self.pins: dict[object, set[str]] = {}
        self._pin_count: dict[str, int] = {}
        self.evicted = 0
        self._dropped: list[str] = []  # removed since take_changes(): the manager is told
        self._adopted: list[str] = []  # "forever" entries another worker made, found here
        (self.root / ".incoming").mkdir(parents=True, exist_ok=True)
        (self.forever_root / ".incoming").mkdir(parents=True, exist_ok=True)

    # --- what is here -----------------------------------------------------------------

    def used(self) -> int:
        return sum(e.size for e in self.entries.values() if not e.forever)

    def lookup(self, content_id: str) -> Path | None:
        entry = self.entries.get(content_id)
        if entry is None:
            path = self.forever_root / content_id
            if not path.is_dir():
                return None
            entry = self.entries[content_id] = Entry(content_id, _tree_size(path), "forever",
                                                     path, forever=True)
            self._adopted.append(content_id)
        entry.last_used = time.monotonic()
        return entry.path

    def ensure_name(self, content_id: str, name: str) -> None:
        """Make ``<entry>/<name>`` exist for a second name of the same content (a symlink)."""
        entry = self.entries[content_id]
        target = entry.path / name
        if os.path.lexists(target) or name == "unpacked":
            return
        existing = [p for p in entry.path.iterdir() if p.name != "unpacked" and p.is_file()]
        if not existing or entry.forever:
            return  # a shared entry stays as it is; its first name serves
        _writable_dir(entry.path, True)
        try:
            os.symlink(existing[0].name, target)
        except FileExistsError:
            pass
        finally:
            _writable_dir(entry.path, False)

    # --- space ------------------------------------------------------------------------

    def reserve(self, content_id: str, size: int, forever: bool = False) -> str:
        """Room for ``size`` bytes: ``"ok"`` (reserved), ``"later"`` or ``"never"``."""
        if forever or self.limit is None:
            self.reserved[content_id] = 0 if forever else size
            return "ok"
        if size > self.limit:
            return "never"
        need = self.used() + sum(self.reserved.values()) + size - self.limit
        if need > 0:
            victims = sorted((e for e in self.entries.values()
                              if not e.forever and not self._pin_count.get(e.content_id)),
                             key=lambda e: e.last_used)
            freeable = sum(e.size for e in victims)
            if freeable < need:
                return "later"
            for entry in victims:
                if need <= 0:
                    break
                need -= entry.size
                self.remove(entry.content_id)
                self.evicted += 1
        self.reserved[content_id] = size
        return "ok"

    def can_ever_fit(self, sizes: int) -> bool:
        return self.limit is None or sizes <= self.limit

    def unreserve(self, content_id: str) -> None:
        self.reserved.pop(content_id, None)

    # --- writing ----------------------------------------------------------------------

    def incoming(self, content_id: str, forever: bool = False) -> Path:
        base = self.forever_root if forever else self.root
        return base / ".incoming" / f"{content_id}.{os.getpid()}.{next(_counter)}"

    def forever_lock(self, content_id: str) -> ForeverLock | None:
        fd = os.open(self.forever_root / f"{content_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # whatever a fetcher of this id left in .incoming, it died holding this lock
        for stale in (self.forever_root / ".incoming").glob(f"{content_id}.*"):
            remove_tree(stale)
        return ForeverLock(fd)

    def commit(self, spec: FileSpec, temp_file: Path) -> tuple[Path, int]:
        """Move a complete, checked transfer into place (unpacking it if asked); blocking.

        Returns the entry's directory and its size on disk. The caller then calls
        :meth:`added` from the thread that owns the books.
        """
        forever = spec.level == "forever"
        base = self.forever_root if forever else self.root
        final = base / spec.content_id
        if final.is_dir():  # another worker of the node finished it first ("forever")
            os.unlink(temp_file)
            return final, _tree_size(final)
        building = Path(str(temp_file) + ".d")
        building.mkdir()
        try:
            os.chmod(temp_file, 0o444)
            os.rename(temp_file, building / spec.name)
            if spec.unpack:
                unpack_archive(building / spec.name, building / "unpacked", spec.unpack)
            os.rename(building, final)  # (an immutable directory could not be renamed)
        except BaseException:
            remove_tree(building)
            raise
        make_read_only(final)
        return final, _tree_size(final)

    def added(self, spec: FileSpec, path: Path, size: int) -> None:
        self.reserved.pop(spec.content_id, None)
        forever = spec.level == "forever"
        self.entries[spec.content_id] = Entry(spec.content_id, size, spec.level, path, forever)

    # --- pins and removal -------------------------------------------------------------

    def pin(self, owner: object, ids: list[str]) -> None:
        held = self.pins.setdefault(owner, set())
        for content_id in ids:
            if content_id not in held:
                held.add(content_id)
                self._pin_count[content_id] = self._pin_count.get(content_id, 0) + 1

    def pinned(self, content_id: str) -> bool:
        return bool(self._pin_count.get(content_id))

    def unpin(self, owner: object) -> list[str]:
        """Drop ``owner``'s pins; returns the ids removed because they were "call" level."""
        removed = []
        for content_id in self.pins.pop(owner, ()):
            count = self._pin_count.get(content_id, 1) - 1
            if count > 0:
                self._pin_count[content_id] = count
                continue
            self._pin_count.pop(content_id, None)
            entry = self.entries.get(content_id)
            if entry is not None and entry.level == "call" and not entry.forever:
                self.remove(content_id)
                removed.append(content_id)
        return removed

    def remove(self, content_id: str) -> None:
        entry = self.entries.pop(content_id, None)
        if entry is not None and not entry.forever:
            remove_tree(entry.path)
            self._dropped.append(content_id)

    def take_changes(self) -> tuple[list[str], list[str]]:
        """``(adopted, removed)`` since the last call: "forever" entries found on disk, and
        entries evicted or dropped with their "call" level (the manager is told)."""
        adopted, self._adopted = self._adopted, []
        dropped, self._dropped = self._dropped, []
        return adopted, dropped

    def close(self) -> None:
        """The worker exits: its own entries go ("forever" ones stay for the next)."""
        for content_id in list(self.entries):
            self.remove(content_id)
        remove_tree(self.root)


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _set_immutable(path: str, on: bool) -> None:
    """The filesystem's immutable flag (root ignores mode bits; not this flag)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return
    try:
        import array

        flags = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        flags[0] = flags[0] | _FS_IMMUTABLE_FL if on else flags[0] & ~_FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError:
        pass  # not supported here: mode bits only
    finally:
        os.close(fd)


def _writable_dir(path: Path, writable: bool) -> None:
    if os.geteuid() == 0:
        _set_immutable(str(path), not writable)
    os.chmod(path, 0o755 if writable else 0o555)


def make_read_only(top: Path) -> None:
    """Files 0444, directories 0555 (and immutable when we are root), under ``top``."""
    as_root = os.geteuid() == 0
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full):
                continue
            os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) & 0o555 | 0o444)
            if as_root:
                _set_immutable(full, True)
        os.chmod(root, 0o555)
        if as_root:
            _set_immutable(root, True)


def remove_tree(path: Path) -> None:
    """Remove a (read-only, maybe immutable) tree."""
    if not os.path.lexists(path):
        return
    as_root = os.geteuid() == 0
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            if as_root:
                _set_immutable(root, False)
            os.chmod(root, 0o755)
            for name in files:
                full = os.path.join(root, name)
                if as_root and not os.path.islink(full):
                    _set_immutable(full, False)
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            if as_root:
                _set_immutable(str(path), False)
            os.unlink(path)
        except OSError:
            pass
