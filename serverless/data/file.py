"""``serverless.File``: a file, a directory or a URL that a call needs on its worker.

    user: m.call("lib", "f", serverless.File("data.csv"))
      manager  resolve: stat, hash (once per stat identity), register with the manager's
               chunk server; the File pickles as a small reference (its FileSpec's name)
      worker   fetch into the cache before the call is released to its instance
      child    unpickling the reference gives pathlib.Path("<cache>/<id>/data.csv")

A :class:`FileSpec` is the plain tuple that travels in protocol messages: the content
name, size, the file's base name (kept so that readers that look at the extension still
work), the URL (empty: served by the manager), the cache level and the unpack format.

Directories travel as an uncompressed tar made once by the manager (named by the tar's
hash; remade only when a file under the directory changes its size, mtime or inode) and
are unpacked on the worker, so the function gets a directory.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple


__all__ = ["File", "FileSpec", "LEVELS", "ARCHIVE_FORMATS", "archive_format", "find_files",
           "worker_path", "CACHE_DIR_ENV", "FOREVER_DIR_ENV"]

LEVELS = ("call", "workflow", "worker", "forever")
ARCHIVE_FORMATS = {".tar": "tar", ".tar.gz": "tar", ".tgz": "tar", ".tar.bz2": "tar",
                   ".tar.xz": "tar", ".tar.zst": "tar.zst", ".tzst": "tar.zst", ".zip": "zip"}
CACHE_DIR_ENV = "SERVERLESS_CACHE_DIR"  # set by the worker agent for its library processes
FOREVER_DIR_ENV = "SERVERLESS_FOREVER_DIR"


class FileSpec(NamedTuple):
    """What a worker needs to know to fetch and present one file (plain values only)."""

    content_id: str
    size: int  # bytes of the content as transferred (-1: unknown, a URL without size)
    name: str  # base name the function sees
    url: str  # "" for content served by the manager
    level: str  # one of LEVELS
    unpack: str  # "" or an archive format: "tar", "tar.zst", "zip"


def archive_format(name: str) -> str:
    """The archive format of a file name (ValueError for one we cannot unpack)."""
    lower = name.lower()
    for suffix in sorted(ARCHIVE_FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return ARCHIVE_FORMATS[suffix]
    raise ValueError(f"cannot unpack {name!r}: unpack=True takes .tar, .tar.gz, .tgz, "
                     ".tar.bz2, .tar.xz, .tar.zst or .zip")


class File:
    """A file or directory on the manager's machine, or a URL workers fetch themselves.

    Anywhere in a call's arguments (top level, lists, tuples, dict values), it reaches the
    function as a :class:`pathlib.Path` to a local read-only copy on the worker; with
    ``unpack=True``, to the unpacked directory of the archive (unpacked once per worker).
    ``sha256`` is required for ``cache="forever"`` URLs and recommended for every URL: a
    download whose hash differs fails the call with :class:`~serverless.FileIntegrityError`.
    ``cache``: ``"workflow"`` (default, kept until the manager shuts down), ``"call"``
    (removed after the call), ``"worker"`` (until the worker exits), ``"forever"`` (kept
    on the node's disk, in a per-user directory, across workers).
    """

    __slots__ = ("source", "sha256", "unpack", "cache", "is_url", "_spec", "_local", "__weakref__")

    def __init__(self, path_or_url: str | os.PathLike, sha256: str | None = None,
                 unpack: bool = False, cache: str = "workflow") -> None:
        if cache not in LEVELS:
            raise ValueError(f"cache must be one of {', '.join(LEVELS)}, not {cache!r}")
        text = os.fspath(path_or_url)
        self.is_url = isinstance(text, str) and text.split("://", 1)[0] in ("http", "https", "file")
        if sha256 is not None:
            sha256 = sha256.lower()
            if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
                raise ValueError(f"sha256 must be 64 hex digits, not {sha256!r}")
        if self.is_url and cache == "forever" and sha256 is None:
            raise ValueError("a URL kept forever needs its sha256 (the cache names it by content)")
        self.source = text if self.is_url else os.path.abspath(text)
        self.sha256, self.cache = sha256, cache
        name = _base_name(self.source)
        self.unpack = archive_format(name) if unpack else ""
        self._spec: FileSpec | None = None
        self._local: str | None = None  # the path the manager serves (a tar for a directory)
        if self.is_url:
            self._spec = FileSpec(_url_id(self.source, sha256), -1, name, self.source,
                                  cache, self.unpack)

    def __repr__(self) -> str:
        extra = ", unpack=True" if self.unpack else ""
        return f"serverless.File({self.source!r}{extra}, cache={self.cache!r})"

    @property
    def spec(self) -> FileSpec | None:
        """Its spec once resolved (set by the manager when a call names it)."""
        return self._spec

    def resolve(self, staging: Any) -> tuple[FileSpec, str | None]:
        """Its spec and the manager-side path to serve (None for a URL).

        ``staging`` turns a directory into a tar (:meth:`LocalFiles.directory_tar`). Raises
        FileNotFoundError for a missing path, so nothing is queued.
        """
        if self.is_url:
            assert self._spec is not None
            return self._spec, None
        path = self.source
        if os.path.isdir(path):
            local, content_id, size = staging.directory_tar(path)
            unpack = "tar"
        elif os.path.isfile(path):
            local = path
            content_id, size = staging.file_id(path)
            unpack = self.unpack
        else:
            raise FileNotFoundError(2, "serverless.File: no such file or directory", path)
        self._spec = FileSpec(content_id, size, _base_name(path), "", self.cache, unpack)
        self._local = local
        return self._spec, local

    def __reduce__(self) -> tuple:
        spec = self._spec
        if spec is None:
            raise TypeError(f"{self!r} was not declared by a call (pass it in the call's "
                            "arguments: top level, lists, tuples or dict values)")
        return (worker_path, (spec.content_id, spec.name, spec.unpack))


def _base_name(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return name or "file"


def _url_id(url: str, sha256: str | None) -> str:
    if sha256:
        return "sha256-" + sha256
    from .hashing import new_hasher

    hasher = new_hasher()
    hasher.update(url.encode())
    return "url-" + hasher.hexdigest()


def find_files(value: Any, depth: int = 0) -> Iterator[File]:
    """Every File in ``value``: itself, or inside lists, tuples, sets and dict values."""
    kind = type(value)
    if kind is File:
        yield value
    elif depth < 32 and kind in (list, tuple, set, frozenset):
        for item in value:
            if type(item) in _CONTAINERS:
                yield from find_files(item, depth + 1)
    elif depth < 32 and kind is dict:
        for item in value.values():
            if type(item) in _CONTAINERS:
                yield from find_files(item, depth + 1)


_CONTAINERS = frozenset((File, list, tuple, set, frozenset, dict))


def worker_path(content_id: str, name: str, unpack: str) -> pathlib.Path:
    """What a File becomes inside the function: the path of its copy in this worker's cache.

    The worker released the call only once the entry was complete, so this does no I/O
    beyond one ``stat`` to tell the worker's own cache from the node's "forever" one.
    """
    roots = [os.environ.get(CACHE_DIR_ENV), os.environ.get(FOREVER_DIR_ENV)]
    for root in roots:
        if root:
            entry = pathlib.Path(root, content_id)
            if entry.exists():
                if unpack:
                    return entry / "unpacked"
                named = entry / name
                if os.path.lexists(named):
                    return named
                for other in sorted(entry.iterdir()):  # a shared entry under another name
                    if other.name != "unpacked":
                        return other
    raise FileNotFoundError(2, "serverless.File: not in this worker's cache "
                               "(is this running on a serverless worker?)", content_id)
