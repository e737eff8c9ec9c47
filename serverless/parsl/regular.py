"""The regular mode: every app call runs in a fresh interpreter.

The engine serves it with an ordinary library, ``parsl-regular-…`` (one per resource
request), whose only function is :func:`run_fresh`. A call carries the app's function,
pickled by value once per app on the submit side, and its pickled arguments::

    executor.submit --(function blob, args blob)--> library instance (fork: one child per call)
        child: run_fresh ---- stdin: function blob, args blob ----> python -c main()  (fresh)
                         <--- result pipe: ("ok", value) | ("raised", exception) ---

The fresh interpreter unpickles the function (importing what it needs, as a Parsl regular
task does), runs it, and writes its outcome to a pipe that is not its stdout, so what the
app prints lands in the instance log like any call's output. It dies with the forked child
(PR_SET_PDEATHSIG), so a cancelled or timed-out call leaves no interpreter behind.

This module must not import Parsl: it runs in library processes and fresh interpreters.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from typing import Any

from serverless.errors import ServerlessError

__all__ = ["run_fresh", "main", "FreshInterpreterFailed", "RUNNER"]

#: what the fresh interpreter runs: python -c RUNNER RESULT_FD PARENT_PID
RUNNER = "from serverless.parsl.regular import main; main()"

_LENGTH = struct.Struct("!Q")


class FreshInterpreterFailed(ServerlessError):
    """The fresh interpreter of a regular-mode call ended without reporting an outcome."""

    def __init__(self, exit_code: int) -> None:
        from serverless.errors import describe_exit

        super().__init__(f"the fresh interpreter running the call ended with "
                         f"{describe_exit(exit_code)} and reported nothing (see the instance log)")
        self.exit_code = exit_code


def _read_exactly(stream: Any, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the call's input ended early")
    return data


def run_fresh(function_blob: bytes, args_blob: bytes) -> Any:
    """Run one call in a fresh interpreter; return its value or raise its exception."""
    from serverless.serialization import decode_exception, loads_result

    read_end, write_end = os.pipe()
    if os.environ.get("SERVERLESS_BOOTSTRAP"):  # in an environment lent serverless by its worker
        import serverless.worker

        bootstrap = os.path.join(os.path.dirname(serverless.worker.__file__), "env_bootstrap.py")
        command = [sys.executable, bootstrap, "serverless.parsl.regular"]
    else:
        command = [sys.executable, "-c", RUNNER]
    try:
        process = subprocess.Popen(
            [*command, str(write_end), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as outcome_pipe:
        try:
            assert process.stdin is not None
            for blob in (function_blob, args_blob):
                process.stdin.write(_LENGTH.pack(len(blob)))
                process.stdin.write(blob)
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died before reading; its exit code says why
        outcome = outcome_pipe.read()
    exit_code = process.wait()
    if not outcome:
        raise FreshInterpreterFailed(exit_code)
    kind, payload = pickle.loads(outcome)
    if kind == "ok":
        return loads_result(payload)
    raise decode_exception(payload)


def main() -> None:
    """The fresh interpreter's body (see :data:`RUNNER`)."""
    result_fd, parent = int(sys.argv[1]), int(sys.argv[2])
    from serverless.worker.processes import die_with_parent

    die_with_parent(parent)
    from serverless.serialization import (
        dumps_result,
        encode_exception,
        loads_args,
        loads_by_value,
    )

    stdin = sys.stdin.buffer
    function_blob = _read_exactly(stdin, _LENGTH.unpack(_read_exactly(stdin, _LENGTH.size))[0])
    args_blob = _read_exactly(stdin, _LENGTH.unpack(_read_exactly(stdin, _LENGTH.size))[0])
    try:
        function = loads_by_value(function_blob)
        args, kwargs = loads_args(args_blob)
        outcome = ("ok", dumps_result(function(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001  (the caller gets it, whatever it is)
        outcome = ("raised", encode_exception(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    with os.fdopen(result_fd, "wb") as pipe:
        pipe.write(pickle.dumps(outcome, 5))
