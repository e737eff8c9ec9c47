"""The :class:`Environment`: the software a library's processes run with, declared once.

``Library(..., environment=serverless.Environment(path))`` runs every instance of the
library with the environment's interpreter instead of the worker's. ``path`` is either

- an **archive** made by conda-pack or venv-pack (``serverless-pack`` makes one): the
  worker gets it once, each node unpacks it once (all workers and instances of the node
  share the unpacked copy; see :mod:`serverless.worker.environments`), conda-pack's
  ``conda-unpack`` runs there, and the archive is named by its content, so a changed
  archive is a new environment and a stale copy is never used; or
- a **directory** holding an environment already unpacked at the same path on every worker
  (a shared file system, or this machine): used where it is, nothing is copied. A conda
  or venv directory cannot be copied elsewhere as it is (prefixes are written into its
  files; that is what conda-pack fixes), which is why only archives travel.

What the environment must contain: ``bin/python``, a CPython of the manager's minor
version (functions travel as that version's code objects), and whatever the library's
functions, imports and setup import. serverless itself, cloudpickle and dill come from the
worker's own installation when the environment lacks them (docs/data.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["Environment", "content_name"]


def content_name(path: str | os.PathLike) -> str:
    """The content name of the file at ``path`` (that of :mod:`serverless.data.hashing`,
    hashed once per (device, inode, size, mtime)); imported here, not at the top, so that
    library processes, which import serverless, do not load the hash library."""
    from serverless.data.hashing import hash_path

    return hash_path(path)


class Environment:
    """A packed environment (conda-pack or venv-pack archive) or an environment directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser().absolute()
        if self.path.is_dir():
            self.kind = "directory"
        elif self.path.is_file():
            self.kind = "archive"
        else:
            raise FileNotFoundError(f"no environment at {self.path}")
        # hashed here, in the user's thread, never in the manager's loop (memoized by stat,
        # with the same content name as a serverless.File of it: one cache, one transfer)
        self.id = content_name(self.path) if self.kind == "archive" else f"dir:{self.path}"
        self.file: tuple | None = None  # its FileSpec once a manager serves it (resolve)

    def resolve(self, staging: object) -> None:
        """Serve the archive from this manager (as a File the workers fetch and cache)."""
        if self.kind == "archive":
            from serverless.data.file import File

            spec, _ = File(self.path, cache="workflow").resolve(staging)
            self.id, self.file = spec.content_id, tuple(spec)

    @property
    def size(self) -> int:
        """The archive's size in bytes (0 for a directory)."""
        return self.path.stat().st_size if self.kind == "archive" else 0

    def describe(self) -> dict:
        """What a Deploy carries to the worker (``options["environment"]``)."""
        return {"kind": self.kind, "path": str(self.path), "id": self.id, "size": self.size,
                "file": self.file,
                # functions travel as this interpreter's code objects: the library must match
                "python": "%d.%d" % sys.version_info[:2]}

    def __repr__(self) -> str:
        return f"Environment({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Environment) and (self.kind, self.path) == (other.kind, other.path)

    def __hash__(self) -> int:
        return hash((self.kind, self.path))
