"""The benchmark's inputs, built once and kept outside the repository.

Under ``$SERVERLESS_BENCH_CACHE`` (default ``~/.cache/serverless-bench``):

- ``ml-venv/`` and ``ml-env.tar``: a venv with numpy, pandas and scikit-learn (about
  390 MB), packed with venv-pack as a plain tar: gzip would make it about a third of that,
  under the 300 MB the benchmark asks for (the seed's environment was 1 GB zipped);
- ``tiny-env.tar.gz``: a bare venv (``--without-pip``), for ``--quick``;
- ``dataset-20mb.zip`` / ``dataset-quick.zip``: random float64 values in ``data.npy``
  (random mantissas barely compress, so the zip stays about the size asked for).

Each is rebuilt only when missing; ``shared_copy`` makes the shared-FS baseline's
directory: the environment unpacked once, the dataset unzipped once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["cache_dir", "environment_archive", "dataset_zip", "shared_copy", "ML_PACKAGES"]

ML_PACKAGES = ("numpy", "pandas", "scikit-learn")
MIN_FULL_ARCHIVE = 300 * 2**20


def cache_dir() -> Path:
    path = Path(os.environ.get("SERVERLESS_BENCH_CACHE", "~/.cache/serverless-bench")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _base_python() -> str:
    """The interpreter new venvs are made from (the one behind this venv, if any)."""
    return getattr(sys, "_base_executable", sys.executable)


def environment_archive(quick: bool) -> Path:
    """The packed environment (built on first use)."""
    root = cache_dir()
    if quick:
        archive = root / "tiny-env.tar.gz"
        if not archive.exists():
            venv = root / "tiny-venv"
            if not venv.exists():
                subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
            _tar(venv, archive)
        return archive
    archive = root / "ml-env.tar"
    if not archive.exists():
        venv = root / "ml-venv"
        if not (venv / "bin" / "python").exists():
            subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *ML_PACKAGES], check=True)
        import venv_pack  # the bench extra would not pull it: say so if it is missing

        temp = archive.with_suffix(".partial.tar")
        venv_pack.pack(prefix=str(venv), output=str(temp), format="tar", force=True)
        os.rename(temp, archive)
    if archive.stat().st_size < MIN_FULL_ARCHIVE:
        print(f"warning: {archive} is {archive.stat().st_size / 2**20:.0f} MB, under "
              f"{MIN_FULL_ARCHIVE / 2**20:.0f} MB", file=sys.stderr)
    return archive


def dataset_zip(quick: bool) -> Path:
    """A zipped dataset: 20 MB (full) or 200 KB (quick)."""
    size = 200_000 if quick else 20 * 2**20
    path = cache_dir() / ("dataset-quick.zip" if quick else "dataset-20mb.zip")
    if not path.exists():
        import numpy

        values = numpy.random.default_rng(13).random(size // 8)
        temp = path.with_suffix(".partial")
        with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as zf:
            with zf.open("data.npy", "w") as f:
                numpy.save(f, values)
        os.rename(temp, path)
    return path


def shared_copy(archive: Path, dataset: Path, where: Path) -> tuple[Path, Path]:
    """The baseline's shared directory: (unpacked environment, unzipped dataset folder)."""
    env, data = where / "env", where / "data"
    if not env.exists():
        with tarfile.open(archive, "r|*") as tar:
            tar.extractall(env, filter="tar")
    if not data.exists():
        with zipfile.ZipFile(dataset) as zf:
            zf.extractall(data)
    return env, data


def _tar(source: Path, archive: Path) -> None:
    temp = archive.with_suffix(".partial")
    with tarfile.open(temp, "w:gz") as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
    os.rename(temp, archive)
