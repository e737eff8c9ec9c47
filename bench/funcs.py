"""The functions every system runs. Kept tiny and import-free so that any process can load them.

Peers (multiprocessing, Parsl, Ray, Dask) pickle them by reference (``bench.funcs.add``);
serverless and the regular runner carry them by value, as they do any user code.
"""

from __future__ import annotations

import importlib


def add(x: int, y: int) -> int:
    """The trivial call."""
    return x + y


def burn(x: int, iterations: int) -> int:
    """About ``iterations`` steps of pure-Python CPU work (calibrated to ~1 ms), plus ``x``."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total + x


def import_modules(modules: tuple[str, ...]) -> int:
    """Import ``modules`` in the process that runs this (warms peers' workers); returns the pid."""
    import os

    for name in modules:
        importlib.import_module(name)
    return os.getpid()
