"""``serverless-pack``: pack a conda environment or a venv into an archive for ``Environment``.

The packing itself is conda-pack's or venv-pack's (``pip install 'serverless[pack]'``);
this command only picks the right one and names the output::

    serverless-pack                      # the current environment (sys.prefix)
    serverless-pack PATH                 # a venv or conda environment directory
    serverless-pack -n NAME              # a conda environment by name
    serverless-pack PATH -o ml.tar.gz    # the archive to write (default: <name>.tar.gz)

A directory with ``conda-meta/`` is a conda environment (conda-pack: the interpreter is
inside, and ``conda-unpack`` fixes prefixes where it is unpacked); one with ``pyvenv.cfg``
is a venv (venv-pack: the archive links to the venv's base interpreter, which must then
exist at the same path on the workers). It prints the archive's path and exits 0, or says
what is missing and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["main", "pack", "PackError"]


class PackError(Exception):
    """The environment cannot be packed (not an environment, or no packer installed)."""


def _packer(name: str, kind: str) -> ModuleType:
    try:
        return importlib.import_module(name.replace("-", "_"))
    except ImportError:
        raise PackError(
            f"packing a {kind} needs {name}, which is not installed: pip install "
            f"'serverless[pack]' (or pip install {name})") from None


def kind_of(prefix: Path) -> str:
    """``"conda"`` or ``"venv"``: which packer ``prefix`` needs."""
    if (prefix / "conda-meta").is_dir():
        return "conda"
    if (prefix / "pyvenv.cfg").is_file():
        return "venv"
    raise PackError(f"{prefix} is neither a conda environment (no conda-meta/) nor a venv "
                    "(no pyvenv.cfg)")


def pack(prefix: str | Path | None = None, name: str | None = None,
         output: str | Path | None = None, force: bool = False, verbose: bool = False) -> Path:
    """Pack an environment (``prefix``, a conda ``name``, or the current one); the archive."""
    if name is not None and prefix is not None:
        raise PackError("give an environment's path or its conda name, not both")
    if name is not None:
        out = Path(output or f"{name}.tar.gz").absolute()
        _packer("conda-pack", "conda environment").pack(
            name=name, output=str(out), force=force, verbose=verbose)
        return out
    where = Path(prefix).expanduser().absolute() if prefix is not None else Path(sys.prefix)
    if not where.is_dir():
        raise PackError(f"no environment at {where}")
    kind = kind_of(where)
    out = Path(output or f"{where.name}.tar.gz").absolute()
    if out.exists() and not force:
        raise PackError(f"{out} exists (--force overwrites it)")
    if kind == "conda":
        _packer("conda-pack", "conda environment").pack(
            prefix=str(where), output=str(out), force=force, verbose=verbose)
    else:
        _packer("venv-pack", "venv").pack(
            prefix=str(where), output=str(out), force=force, verbose=verbose)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serverless-pack",
        description="Pack a conda environment or a venv (conda-pack / venv-pack) into an "
                    "archive for serverless.Environment.")
    parser.add_argument("prefix", nargs="?", default=None,
                        help="the environment's directory (default: the current environment)")
    parser.add_argument("-n", "--name", default=None, help="a conda environment's name")
    parser.add_argument("-o", "--output", default=None,
                        help="the archive to write (.tar.gz, .tgz, .tar.bz2, .tar or .zip; "
                             "default: NAME.tar.gz here)")
    parser.add_argument("--force", action="store_true", help="overwrite the output")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = pack(args.prefix, args.name, args.output, args.force, args.verbose)
    except PackError as exc:
        print(f"serverless-pack: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # conda-pack's and venv-pack's own errors say what is wrong
        print(f"serverless-pack: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
