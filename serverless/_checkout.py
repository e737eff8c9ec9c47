"""Running from a source checkout: ``serverless.manager`` and ``serverless.worker`` live there.

The repository keeps the manager and the worker beside ``serverless/``, in ``manager/`` and
``worker/``; ``pyproject.toml`` maps them to ``serverless.manager`` and
``serverless.worker``. An editable install maps them with an import hook, and a wheel
copies them under ``serverless/``. But Python puts the current directory (or the script's)
first on ``sys.path``, so a program run in the checkout (``python -m pytest``, a worker a
test starts with ``python -m serverless.worker``) imports the checkout's ``serverless/``
whatever is installed, and with a regular install that folder has no ``manager/`` inside.

So when this package is imported from a checkout, :func:`install_finder` maps the two
subpackages to the checkout's folders, as the editable install does: a checkout runs
its own code, all of it, whichever install is present; outside a checkout (an installed
wheel) nothing changes. Each module is loaded once, under its ``serverless.*`` name.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__all__ = ["install_finder"]

_SUBPACKAGES = ("manager", "worker")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``serverless.manager`` and ``serverless.worker`` in a checkout's folders."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        package, _, sub = name.partition(".")
        if package != "serverless" or sub not in _SUBPACKAGES:
            return None  # their own submodules are found through their __path__
        folder = self.root / sub
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)])


def install_finder(package_dir: Path) -> None:
    """If ``package_dir`` (serverless/) sits in a source checkout, map the subpackages."""
    root = package_dir.parent
    if not (root / "pyproject.toml").is_file():
        return
    if not all((root / sub / "__init__.py").is_file() for sub in _SUBPACKAGES):
        return
    if any(isinstance(finder, _CheckoutFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _CheckoutFinder(root))
