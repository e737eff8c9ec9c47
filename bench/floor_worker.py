"""A floor process: the bare loop serverless is measured against.

    python -m bench.floor_worker MODULES     (MODULES: comma-separated, may be empty)

It imports ``MODULES`` (the workload's library imports), runs ``gc.freeze()`` as a library
instance does, writes one ready byte, then serves requests read from stdin::

    request  (mode, what, function, [pickled args, ...])   mode: "fork" | "direct"
                                                           what: "throughput" | "latency"
    reply    ([pickled result, ...], seconds, cpu)         seconds: the whole loop ("throughput")
                                                           or one per call ("latency");
                                                           cpu: CPU seconds of this process
                                                           and of its reaped children

Fork mode forks a child per call: the child unpickles the arguments, calls, pickles the
result, writes it to a pipe and ``_exit``\\ s; the parent takes the result as soon as it is
complete and forks the next call while the previous child is still exiting (reaped with
``waitpid(WNOHANG)``). Direct mode unpickles, calls and pickles in the loop itself.
Messages are length-prefixed pickles; stdout is kept for them alone (fd 1 goes to stderr).
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import resource
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

_LENGTH = struct.Struct("!Q")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_message(fd: int) -> bytes:
    """One length-prefixed message from a pipe; reads no further than its end."""
    header = b""
    while len(header) < _LENGTH.size:
        chunk = os.read(fd, _LENGTH.size - len(header))
        if not chunk:
            raise EOFError("the child exited without a result")
        header += chunk
    (length,) = _LENGTH.unpack(header)
    parts, have = [], 0
    while have < length:
        chunk = os.read(fd, min(length - have, 1 << 20))
        if not chunk:
            raise EOFError("the child exited mid-result")
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _reap(block: bool) -> None:
    """Collect exited children (all of them when ``block``)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def fork_call(function: Callable[..., Any], blob: bytes) -> bytes:
    """One call in a forked child; returns the pickled result when it arrives."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(read_fd)
            data = pickle.dumps(function(*pickle.loads(blob)), 5)
            _write_all(write_fd, _LENGTH.pack(len(data)) + data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        return _read_message(read_fd)
    finally:
        os.close(read_fd)
        _reap(block=False)


def direct_call(function: Callable[..., Any], blob: bytes) -> bytes:
    return pickle.dumps(function(*pickle.loads(blob)), 5)


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def serve(request: tuple) -> tuple[list[bytes], Any, dict[str, float]]:
    mode, what, function_name, blobs = request
    from bench import funcs

    results: list[bytes] = []
    before = _cpu()
    seconds = _loop(mode, what, getattr(funcs, function_name), blobs, results)
    after = _cpu()
    cpu = {"process": after[0] - before[0], "children": after[1] - before[1]}
    return results, seconds, cpu


def _loop(mode: str, what: str, function: Callable[..., Any], blobs: list[bytes],
          results: list[bytes]) -> Any:
    one = fork_call if mode == "fork" else direct_call
    if what == "latency":
        seconds = []
        for blob in blobs:
            started = time.perf_counter()
            results.append(one(function, blob))
            seconds.append(time.perf_counter() - started)
        _reap(block=True)
        return seconds
    started = time.perf_counter()
    for blob in blobs:
        results.append(one(function, blob))
    elapsed = time.perf_counter() - started
    _reap(block=True)
    return elapsed


def _read_request(stream: BinaryIO) -> tuple | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(stream.read(length))


def main(argv: list[str]) -> int:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # what imports or calls print must not corrupt the replies
    modules = [m for m in (argv[0] if argv else "").split(",") if m]
    for name in modules:
        importlib.import_module(name)
    from bench import funcs  # noqa: F401  (loaded before the freeze, as a library's functions are)

    gc.collect()
    gc.freeze()
    _write_all(out_fd, b"R")
    stdin = sys.stdin.buffer
    while True:
        request = _read_request(stdin)
        if request is None:
            return 0
        reply = pickle.dumps(serve(request), 5)
        _write_all(out_fd, _LENGTH.pack(len(reply)) + reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
