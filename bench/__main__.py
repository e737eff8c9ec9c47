"""``python -m bench``: run the benchmark (options: ``python -m bench --help``)."""

from __future__ import annotations

import sys

from bench.cli import main

if __name__ == "__main__":  # dask's spawned workers import this module as __mp_main__
    sys.exit(main())
