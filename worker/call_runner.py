"""Running one call: unpickle its arguments, call the function, pickle what came out.

Shared by both modes: a forked child runs it once and exits; a direct-mode instance runs it
in a loop. Nothing the function does (raise, ``sys.exit``, return something unpicklable)
escapes: every call becomes a result entry ``(call_id, status, payload, duration)``.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from serverless.errors import ResultNotSerializable
from serverless.library import CHUNK_FUNCTION
from serverless.protocol import CallStatus
from serverless.serialization import dumps_result, encode_exception, loads_args

__all__ = ["run_call", "run_chunk", "with_chunks", "ResultEntry"]

ResultEntry = tuple  # (call_id, status, payload, duration)

# plain ints: batch payloads may hold no globals (an IntEnum would pickle as one)
_OK = int(CallStatus.OK)
_RAISED = int(CallStatus.RAISED)
_UNKNOWN_FUNCTION = int(CallStatus.UNKNOWN_FUNCTION)
_BAD_ARGUMENTS = int(CallStatus.BAD_ARGUMENTS)
_RESULT_NOT_SERIALIZABLE = int(CallStatus.RESULT_NOT_SERIALIZABLE)


def run_call(functions: Mapping[str, Callable[..., Any]], entry: tuple) -> ResultEntry:
    """Run the call ``entry`` = ``(call_id, function, args, timeout)``; return its result entry."""
    call_id, name, args_blob = entry[0], entry[1], entry[2]
    started = time.perf_counter()
    function = functions.get(name)
    if function is None:
        return (call_id, _UNKNOWN_FUNCTION, str(name).encode(), 0.0)
    try:
        args, kwargs = loads_args(args_blob)
    except BaseException:
        return (call_id, _BAD_ARGUMENTS, traceback.format_exc().encode(), 0.0)
    try:
        value = function(*args, **kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the call failed
        duration = time.perf_counter() - started
        return (call_id, _RAISED, encode_exception(exc), duration)
    duration = time.perf_counter() - started
    try:
        return (call_id, _OK, dumps_result(value), duration)
    except ResultNotSerializable as exc:
        return (call_id, _RESULT_NOT_SERIALIZABLE, str(exc).encode(), duration)


def run_chunk(functions: Mapping[str, Callable[..., Any]], name: str,
              arguments: list[tuple]) -> list[Any]:
    """Several calls of one function in one call (``Manager.map(..., chunksize=n)``): as
    ``ProcessPoolExecutor`` does, the first exception fails the whole chunk."""
    function = functions[name]
    return [function(*args) for args in arguments]


def with_chunks(functions: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The library's functions plus :data:`~serverless.library.CHUNK_FUNCTION`."""
    table = dict(functions)
    table[CHUNK_FUNCTION] = functools.partial(run_chunk, dict(functions))
    return table
