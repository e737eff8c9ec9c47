"""The manager's side of declared local files: content names, directory tars, serving paths.

:class:`LocalFiles` is shared by the user's threads (``Manager.call`` resolves the Files
in its arguments) and the manager's chunk server thread (which reads the path of a
content name), so it locks its registry. A directory becomes an uncompressed tar in a
private staging directory, made again only when something under it changes (its listing
of names, sizes, inodes and mtimes is the memo key), and removed at :meth:`close`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import threading

from .hashing import hash_path, new_hasher

__all__ = ["LocalFiles"]


class LocalFiles:
    """Content names of the manager's declared files, and where their bytes are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {}  # content name -> path to serve
        self._tars: dict[str, tuple[str, str, int]] = {}  # listing hash -> (tar, id, size)
        self._staging: str | None = None

    def file_id(self, path: str) -> tuple[str, int]:
        content_id = hash_path(path)
        size = os.stat(path).st_size
        with self._lock:
            self._paths[content_id] = path
        return content_id, size

    def directory_tar(self, path: str) -> tuple[str, str, int]:
        """``(tar path, content name, size)`` of directory ``path``, packed when it changed."""
        listing = new_hasher()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files) + dirs:
                st = os.lstat(os.path.join(root, name))
                listing.update(f"{os.path.relpath(os.path.join(root, name), path)}\0"
                               f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_mode}\n"
                               .encode(errors="surrogateescape"))
        key = listing.hexdigest()
        with self._lock:
            known = self._tars.get(key)
            if self._staging is None:
                self._staging = tempfile.mkdtemp(prefix="serverless-staging-")
            staging = self._staging
        if known is not None:
            return known
        fd, tar_path = tempfile.mkstemp(suffix=".tar", dir=staging)
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files) + dirs:
                    full = os.path.join(root, name)
                    tar.add(full, os.path.relpath(full, path), recursive=False, filter=_plain)
        content_id, size = self.file_id(tar_path)
        with self._lock:
            self._tars[key] = (tar_path, content_id, size)
        return tar_path, content_id, size

    def path(self, content_id: str) -> str | None:
        """The path holding ``content_id`` (for the chunk server), or None."""
        with self._lock:
            return self._paths.get(content_id)

    def close(self) -> None:
        with self._lock:
            staging, self._staging = self._staging, None
            self._paths.clear()
            self._tars.clear()
        if staging:
            shutil.rmtree(staging, ignore_errors=True)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Ownership is the receiver's: no user or group names in the tar."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
