"""Unpacking archives into a cache entry: .tar (any compression tarfile reads), .tar.zst, .zip.

tar members go through tarfile's ``"data"`` filter (no absolute paths, no ``..``, no links
out of the tree, no device files); zip members through zipfile's own path sanitising.
Zstandard uses the ``zstandard`` package (python-zstandard, the maintained bindings of the
reference C library) when it is installed; without it a .tar.zst fails with a message
saying so. A corrupt or truncated archive raises :class:`~serverless.ArchiveError` naming
the archive and the library's own error.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from serverless.errors import ArchiveError

__all__ = ["unpack_archive"]


def unpack_archive(archive: Path, into: Path, kind: str) -> None:
    """Unpack ``archive`` (format ``kind``: "tar", "tar.zst", "zip") into the new dir ``into``."""
    into.mkdir()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                bad = z.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC for member {bad!r}")
                z.extractall(into)
        elif kind == "tar.zst":
            try:
                import zstandard
            except ImportError:
                raise ArchiveError(f"{archive.name}: .tar.zst needs the 'zstandard' package "
                                   "on the worker (pip install zstandard)") from None
            with open(archive, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z, \
                    tarfile.open(fileobj=z, mode="r|") as tar:
                tar.extractall(into, filter="data")
        elif kind == "tar":
            with tarfile.open(archive, mode="r:*") as tar:
                tar.extractall(into, filter="data")
        else:
            raise ArchiveError(f"{archive.name}: unknown archive format {kind!r}")
    except ArchiveError:
        raise
    except Exception as exc:  # tarfile.ReadError, EOFError, zlib.error, BadZipFile, zstd...
        raise ArchiveError(f"{archive.name}: cannot unpack ({type(exc).__name__}: {exc})") from exc
