"""What a call's result entry means to its caller: the value, or the exception to raise.

A worker reports each call as ``(call_id, status, payload, duration)`` (see
:class:`serverless.protocol.CallStatus`). :func:`outcome` turns status and payload into
what the call's future ends with: the unpickled value, the function's own exception
(with its remote traceback), or the typed error of :mod:`serverless.errors` that says
what went wrong outside the function. It never raises: a payload that cannot be decoded
(even one whose unpickling raises ``SystemExit``) becomes that call's error.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

from serverless.errors import (
    ArgumentNotSerializable,
    ArgumentsTooLarge,
    CallCrashed,
    CallOutOfMemory,
    CallTimeout,
    ProtocolError,
    ResultNotSerializable,
    ResultTooLarge,
    ServerlessError,
    UnknownFunction,
)
from serverless.protocol import CallStatus, safe_loads
from serverless.serialization import decode_exception, loads_result

__all__ = ["outcome", "error_for"]

_OK = int(CallStatus.OK)


def outcome(status: int, payload: Any, library: str, function: str
            ) -> tuple[Any, BaseException | None]:
    """``(value, None)`` for a call that returned, ``(None, error)`` for one that did not."""
    if status == _OK:
        try:
            return loads_result(payload), None
        except BaseException as exc:  # noqa: BLE001  # a result's own __reduce__ may raise anything
            if isinstance(exc, ResultNotSerializable):
                return None, exc
            error = ResultNotSerializable(
                f"{library}.{function}: the return value cannot be unpickled here: "
                f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return None, error
    return None, error_for(status, payload, library, function)


def error_for(status: int, payload: Any, library: str, function: str) -> BaseException:
    """The exception a call that ended with ``status`` (not OK) raises to its caller."""
    name = f"{library}.{function}"
    try:
        if status == CallStatus.RAISED:
            return decode_exception(payload)
        if status == CallStatus.CRASHED:
            exit_code, detail = safe_loads(payload)
            return CallCrashed(exit_code, detail or name)
        if status == CallStatus.TIMEOUT:
            seconds, _ = safe_loads(payload)
            return CallTimeout(f"{name} ran over its timeout of {seconds:g} s and was stopped")
        if status == CallStatus.OUT_OF_MEMORY:
            limit, _ = safe_loads(payload)
            return CallOutOfMemory(f"{name} went over the memory limit of {limit} MB and was killed")
        if status == CallStatus.CANCELLED:
            # only a cancelled future asks for this, and it has ended already
            return CancelledError(f"{name} was cancelled")
        if status == CallStatus.RESULT_NOT_SERIALIZABLE:
            return ResultNotSerializable(bytes(payload).decode(errors="replace"))
        if status == CallStatus.BAD_ARGUMENTS:
            return ArgumentNotSerializable(
                f"{name}: the arguments could not be unpickled on the worker:\n"
                + bytes(payload).decode(errors="replace"))
        if status == CallStatus.RESULT_TOO_LARGE:
            size, limit = safe_loads(payload)
            return ResultTooLarge(f"{name} returned {size:,} bytes, over the manager's limit of "
                                  f"{limit:,} (max_message_bytes): return less, or raise the limit",
                                  size, limit)
        if status == CallStatus.ARGUMENTS_TOO_LARGE:
            size, limit = safe_loads(payload)
            return ArgumentsTooLarge(f"{name}: the pickled arguments are {size:,} bytes, over the "
                                     f"limit of {limit:,} of the worker chosen to run it "
                                     "(its --max-message-bytes)", size, limit)
        if status == CallStatus.UNKNOWN_FUNCTION:
            return UnknownFunction(f"library {library!r} has no function {function!r}")
    except BaseException as exc:  # noqa: BLE001  # a malformed payload fails its call only
        return ProtocolError(f"{name}: undecodable result ({type(exc).__name__}: {exc})")
    return ServerlessError(f"{name}: unknown result status {status}")
