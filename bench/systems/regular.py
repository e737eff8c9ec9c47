"""The regular way (the seed's baseline): every call in a fresh interpreter.

Like a regular task of a workflow system, each call is a new ``python`` process that
imports the library's modules, loads the function (pickled by value, as cloudpickle ships
user code) and its arguments from files, runs, and writes its result to a file, which the
submitter then reads. As many run at once as there are cores. Only a sample of the calls
is run (``--regular-sample``); the report extrapolates from it and says so.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle

from bench import funcs
from bench.workloads import Workload

from .base import System, Timed, cores, function_of, timed

__all__ = ["RegularSystem", "RUNNER"]

#: what each fresh interpreter runs: python -c RUNNER MODULES FUNCTION ARGS RESULT
RUNNER = """\
import os, pickle, sys
modules, function_path, args_path, result_path = sys.argv[1:5]
for name in filter(None, modules.split(",")):
    __import__(name)
with open(function_path, "rb") as f:
    function = pickle.load(f)
with open(args_path, "rb") as f:
    args = pickle.load(f)
result = function(*args)
with open(result_path + ".part", "wb") as f:
    pickle.dump(result, f, 5)
os.replace(result_path + ".part", result_path)
"""


class RegularSystem(System):
    name = "regular"
    description = "fresh interpreter per call: imports, loads function+args from files, writes result"
    latency_cap = 20

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._function_path: Path | None = None
        self._modules = ""
        self._ids = itertools.count(1)

    def open(self, workload: Workload) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bench-regular-"))
        self._modules = ",".join(workload.imports)
        self._function_path = self._dir / "function.pkl"
        cloudpickle.register_pickle_by_value(funcs)
        try:
            self._function_path.write_bytes(cloudpickle.dumps(function_of(workload), protocol=5))
        finally:
            cloudpickle.unregister_pickle_by_value(funcs)

    def _one(self, args: tuple) -> Any:
        assert self._dir is not None
        call_id = next(self._ids)  # atomic: calls run from several threads
        args_path = self._dir / f"args-{call_id}.pkl"
        result_path = self._dir / f"result-{call_id}.pkl"
        args_path.write_bytes(pickle.dumps(args, 5))
        subprocess.run(
            [sys.executable, "-c", RUNNER, self._modules, str(self._function_path),
             str(args_path), str(result_path)],
            check=True, stdin=subprocess.DEVNULL,
        )
        return pickle.loads(result_path.read_bytes())

    def run_all(self, arguments: list[tuple]) -> Timed:
        def run() -> list[Any]:
            with ThreadPoolExecutor(cores()) as pool:
                return list(pool.map(self._one, arguments))

        return timed(run)

    def call_one(self, args: tuple) -> Any:
        return self._one(args)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
