"""Content names: the hash that names a file in every cache, and the per-stat memo.

A file is named by its content: ``b3-<hex>`` (BLAKE3, 256 bits) for what the manager
declares, ``sha256-<hex>`` for a URL whose sha256 the user gave (the name is then known
before anyone downloads it, and the same hash checks the download). BLAKE3 was chosen by
measurement (docs/data.md): hashlib's sha256 and blake2b run well under 1 GB/s here while
the ``blake3`` package (the reference Rust implementation's bindings) runs several times
faster; the URL's sha256 check is separate and runs only on URL downloads.

:func:`hash_path` remembers what it hashed by ``(device, inode, size, mtime_ns)``, so
declaring the same large file in every call hashes it once (a changed file has a new
mtime or size, so it is hashed again and gets a new name).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import blake3

__all__ = ["HASH_PREFIX", "new_hasher", "hasher_for", "hash_path", "hash_file_object",
           "check_content_id", "READ_SIZE"]

HASH_PREFIX = "b3-"
READ_SIZE = 1 << 20  # bytes read at a time: a file never sits whole in memory
_HEX_LENGTH = {"b3-": 64, "sha256-": 64, "url-": 64}

_memo: dict[tuple[int, int, int, int], str] = {}
_memo_lock = threading.Lock()


def new_hasher() -> Any:
    """A fresh hasher for our own content names (BLAKE3)."""
    return blake3.blake3()


def hasher_for(content_id: str) -> Any | None:
    """The hasher that checks content named ``content_id`` (None: a URL named by its
    address, which cannot be checked)."""
    if content_id.startswith("b3-"):
        return blake3.blake3()
    if content_id.startswith("sha256-"):
        return hashlib.sha256()
    return None


def check_content_id(content_id: str) -> str:
    """``content_id`` if it is a well-formed name (it becomes a directory name), else ValueError."""
    for prefix, length in _HEX_LENGTH.items():
        digest = content_id[len(prefix):]
        if content_id.startswith(prefix) and len(digest) == length and all(
                c in "0123456789abcdef" for c in digest):
            return content_id
    raise ValueError(f"not a content name: {content_id[:80]!r}")


def hash_file_object(f: Any) -> str:
    """The content name of what ``f`` (a binary file) holds from its position to the end."""
    hasher = new_hasher()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        hasher.update(view[:n])
    return HASH_PREFIX + hasher.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """The content name of the regular file at ``path``, hashed once per stat identity."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _memo_lock:
            known = _memo.get(key)
        if known is not None:
            return known
        name = hash_file_object(f)
        if os.fstat(f.fileno()).st_mtime_ns != st.st_mtime_ns:
            raise OSError(f"{os.fspath(path)} changed while it was being hashed")
    with _memo_lock:
        _memo[key] = name
    return name
