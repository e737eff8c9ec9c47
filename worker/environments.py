"""Software environments on a node: unpack a packed environment once, under a crash-safe lock.

A library with ``environment=`` runs its processes with the environment's interpreter. The
environment arrives as an archive (a conda-pack or venv-pack tarball, or a zip) that the
worker already holds as a local, verified file; this module turns it into a ready directory
that every worker and every instance on the node shares::

    env_dir/
        <content-id>/          the environment, at its final path (conda-unpack ran here)
        <content-id>.ready     written last: its presence means the directory is complete
        <content-id>.lock      flock()ed by whoever unpacks; the kernel drops the lock when
                               that process dies, so a crashed unpack never leaves it stale
        .tmp-<content-id>-PID  an unpack in progress (removed by the next unpacker if its
                               writer crashed)
        unpack.log             one line per unpack actually done (tests and the benchmark
                               count them)

:func:`prepare_environment` takes the fast path when ``.ready`` exists (no lock at all);
otherwise it takes the lock, looks again (another process may have finished meanwhile),
removes what a crashed unpacker left, unpacks into a temporary directory, renames it into
place, runs ``bin/conda-unpack`` when the archive has one (it rewrites prefixes to the
directory it sits in, so it runs after the rename), and writes ``.ready``. A corrupt or
truncated archive raises :class:`EnvironmentError_` with the archive reader's own message.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PreparedEnvironment", "EnvironmentUnpackError", "prepare_environment",
           "environment_root", "environment_variables", "default_env_dir", "ENV_DIR_VARIABLE"]

ENV_DIR_VARIABLE = "SERVERLESS_ENV_DIR"
_CONDA_UNPACK_TIMEOUT = 1800.0


class EnvironmentUnpackError(Exception):
    """An environment archive could not be unpacked or is not an environment."""


@dataclass(frozen=True)
class PreparedEnvironment:
    """A ready environment directory on this node."""

    root: Path
    python: Path
    kind: str  # "conda" (has conda-meta/) or "venv"
    unpacked: bool  # this call did the unpack (False: it was already there)


def default_env_dir() -> Path:
    """Where environments are unpacked on this node: ``$SERVERLESS_ENV_DIR``, else a stable
    per-user directory, so that every worker of the node (and later runs) shares them."""
    if os.environ.get(ENV_DIR_VARIABLE):
        return Path(os.environ[ENV_DIR_VARIABLE])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "serverless" / "environments"


def environment_root(path: Path) -> PreparedEnvironment:
    """The environment in directory ``path`` (its interpreter must be ``bin/python``)."""
    for name in ("python", "python3"):
        python = path / "bin" / name
        if os.access(python, os.X_OK):
            kind = "conda" if (path / "conda-meta").is_dir() else "venv"
            return PreparedEnvironment(path, python, kind, False)
    raise EnvironmentUnpackError(
        f"{path} is not an environment: it has no bin/python (a conda-pack or venv-pack "
        f"archive has one at its top level)")


def prepare_environment(archive: Path, content_id: str, env_dir: Path,
                        verify: Callable[[Path], None] | None = None,
                        progress: Callable[[str], None] | None = None) -> PreparedEnvironment:
    """The environment of ``archive`` (named ``content_id``), unpacked once in ``env_dir``.

    ``verify(archive)`` runs under the lock before an unpack (not when the environment is
    already there), e.g. to check the archive's hash; ``progress`` hears what happens.
    """
    if "/" in content_id or content_id.startswith("."):
        raise ValueError(f"bad environment name {content_id!r}")
    final = env_dir / content_id
    ready = env_dir / f"{content_id}.ready"
    if ready.exists():
        return environment_root(final)
    env_dir.mkdir(parents=True, exist_ok=True)
    with _locked(env_dir / f"{content_id}.lock"):
        if ready.exists():  # someone finished while we waited
            return environment_root(final)
        if progress:
            progress(f"unpacking {archive} into {final}")
        _remove_leftovers(env_dir, content_id)
        if verify is not None:
            verify(archive)
        started = time.monotonic()
        temp = env_dir / f".tmp-{content_id}-{os.getpid()}"
        try:
            files = _unpack(archive, temp)
            top = _top(temp)
            os.rename(top, final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        prepared = environment_root(final)
        _conda_unpack(final)
        _write_atomic(ready, json.dumps({"python": str(prepared.python), "kind": prepared.kind}))
        _log_unpack(env_dir, content_id, files, time.monotonic() - started)
        return PreparedEnvironment(prepared.root, prepared.python, prepared.kind, True)


def environment_variables(inherited: Mapping[str, str], prepared: PreparedEnvironment) -> dict[str, str]:
    """The variables of a process running in ``prepared``: no ``PYTHONPATH``/``PYTHONHOME``
    from the worker (conda-pack's own activation clears them too), its ``bin`` first on
    ``PATH``, and ``CONDA_PREFIX`` or ``VIRTUAL_ENV`` naming it."""
    variables = {k: v for k, v in inherited.items()
                 if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")}
    variables["PATH"] = os.pathsep.join(
        [str(prepared.root / "bin")] + ([inherited["PATH"]] if inherited.get("PATH") else []))
    variables["CONDA_PREFIX" if prepared.kind == "conda" else "VIRTUAL_ENV"] = str(prepared.root)
    return variables


# --- the lock ---------------------------------------------------------------------------

class _locked:
    """An exclusive flock on ``path`` for the with-block (released by the kernel if we die)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _remove_leftovers(env_dir: Path, content_id: str) -> None:
    """What an unpacker that crashed (we hold the lock, so none is running) left behind."""
    for leftover in env_dir.glob(f".tmp-{content_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = env_dir / content_id
    if final.exists():  # renamed into place, but .ready never written
        shutil.rmtree(final, ignore_errors=True)


# --- unpacking --------------------------------------------------------------------------

def _unpack(archive: Path, into: Path) -> int:
    """Unpack ``archive`` (tar of any compression, or zip) into ``into``; the file count."""
    into.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            return _unzip(archive, into)
        # stream mode: one sequential read, no seeks back through a compressed file
        with tarfile.open(archive, mode="r|*") as tar:
            count = 0
            for member in tar:
                # "tar" filter: no absolute paths or escapes from the directory, but absolute
                # symlink targets stay (a venv's bin/python points at its base interpreter)
                tar.extract(member, into, filter="tar")
                count += 1
            return count
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise EnvironmentUnpackError(
            f"environment archive {archive.name} could not be unpacked: "
            f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # zlib.error, lzma.LZMAError, ...: the archive is damaged
        raise EnvironmentUnpackError(
            f"environment archive {archive.name} is damaged: {type(exc).__name__}: {exc}") from exc


def _unzip(archive: Path, into: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        count = 0
        for info in zf.infolist():
            mode = info.external_attr >> 16
            target = into / info.filename
            if not str(target.resolve()).startswith(str(into.resolve())):
                raise EnvironmentUnpackError(f"{info.filename!r} would land outside the environment")
            if stat.S_ISLNK(mode):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(zf.read(info).decode(), target)
            else:
                zf.extract(info, into)
                if mode & 0o777:
                    os.chmod(target, mode & 0o777)
            count += 1
        return count


def _top(unpacked: Path) -> Path:
    """The environment's root: the directory itself, or its single top-level folder."""
    if (unpacked / "bin").is_dir():
        return unpacked
    entries = list(unpacked.iterdir())
    if len(entries) == 1 and (entries[0] / "bin").is_dir():
        return entries[0]
    raise EnvironmentUnpackError(
        "the archive holds no environment: no bin/ at its top level (pack one with "
        "serverless-pack, conda-pack or venv-pack)")


def _conda_unpack(root: Path) -> None:
    """Run conda-pack's ``bin/conda-unpack`` (prefix rewriting) when the archive has it."""
    script = root / "bin" / "conda-unpack"
    if not script.exists():
        return
    env = environment_variables(os.environ, environment_root(root))
    result = subprocess.run([str(root / "bin" / "python"), str(script)], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=_CONDA_UNPACK_TIMEOUT)
    if result.returncode != 0:
        raise EnvironmentUnpackError(
            f"conda-unpack failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, path)


def _log_unpack(env_dir: Path, content_id: str, files: int, seconds: float) -> None:
    line = json.dumps({"id": content_id, "pid": os.getpid(), "files": files,
                       "seconds": round(seconds, 3), "time": time.time()})
    with open(env_dir / "unpack.log", "a") as f:
        f.write(line + "\n")
