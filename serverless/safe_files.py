"""Files and directories other local users cannot plant, swap or read.

A manager or worker often runs as root or on a shared machine, and writes logs and reads
secrets under paths a user named. Another local user who can write into such a path could
plant a symlink (so that we append to a file of their choosing), a FIFO (so that a read
hangs for ever) or a file of their own (so that we trust their secret). The rules here:

* a directory we write into, if it already exists, belongs to us and is not writable by
  group or others (:func:`private_dir`; new ones are made with mode 0700);
* a file we read a secret from is opened with ``O_NOFOLLOW | O_NONBLOCK``, then checked on
  the open descriptor (``fstat``): a regular file, ours, no group or other permission bits,
  in a directory others cannot write to unless it is sticky like ``/tmp``, where they can
  neither remove nor rename our file (:func:`open_private_file`);
* logs are opened with ``O_NOFOLLOW``, created with mode 0600 (:func:`open_log`);
* names that come from elsewhere (a library's name) are reduced to safe file-name
  characters before they become part of a path (:func:`safe_name`).

Root (uid 0) is trusted as an owner everywhere: it can read anything anyway.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import SecurityError

__all__ = ["private_dir", "check_dir", "open_private_file", "open_log", "safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _owner_ok(uid: int) -> bool:
    return uid == os.geteuid() or uid == 0


def check_dir(path: Path, what: str, *, sticky_ok: bool = False) -> None:
    """Refuse ``path`` (an existing directory) if another user owns it or may write to it.

    ``sticky_ok``: a directory writable by others is accepted when it has the sticky bit
    (``/tmp``): others can then neither remove nor rename what we put there.
    """
    info = os.stat(path)  # follows a symlink: what matters is the directory it names
    if not stat.S_ISDIR(info.st_mode):
        raise SecurityError(f"{what} {path} is not a directory")
    if not _owner_ok(info.st_uid):
        raise SecurityError(f"{what} {path} belongs to another user (uid {info.st_uid}); "
                            "use a directory of your own")
    if info.st_mode & 0o022 and not (sticky_ok and info.st_mode & stat.S_ISVTX):
        raise SecurityError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}), "
            f"who could plant links or files there: run `chmod go-w {path}` or use another")


def private_dir(path: str | os.PathLike, what: str = "the directory") -> Path:
    """``path`` as a directory we may write into: made (mode 0700, parents too) if missing,
    else checked with :func:`check_dir`."""
    path = Path(path).expanduser()
    try:
        path.mkdir(mode=0o700, parents=True)
        return path
    except FileExistsError:
        pass
    check_dir(path, what)
    return path


def open_private_file(path: Path, what: str, others_may_read: bool = False) -> int:
    """A read-only descriptor on ``path``, checked to be a private regular file of ours
    (``others_may_read``: only writing by group or others is refused, for files that hold
    nothing secret but must not be changed by anyone else, like an allow-list)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40):
            raise SecurityError(f"{what} {path} is a symbolic link; name the file itself") from None
        raise SecurityError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecurityError(f"{what} {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise SecurityError(f"{what} {path} belongs to another user (uid {info.st_uid}); "
                                "only a file of your own is trusted")
        if info.st_mode & (0o022 if others_may_read else 0o077):
            raise SecurityError(
                f"{what} {path} is open to other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`")
        check_dir(path.parent, f"the directory of {what}", sticky_ok=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_log(path: Path) -> int:
    """A descriptor for appending to the log ``path``: never through a symlink, created
    with mode 0600, refused if it is not a regular file of ours."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _owner_ok(info.st_uid):
            raise SecurityError(f"the log {path} is not a regular file of ours")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def safe_name(name: str, limit: int = 100) -> str:
    """``name`` as one safe path component: letters, digits, ``.``, ``_`` and ``-`` only,
    not starting with a dot, at most ``limit`` characters."""
    cleaned = _UNSAFE.sub("_", name)[:limit].lstrip(".")
    return cleaned or "_"
