"""Call and result batches: the payload of ``Calls`` and ``Results`` messages.

Call batch entries are tuples ``(call_id, function, args, timeout)`` where ``args`` is the
pickled ``(args, kwargs)``, or ``(pickle, n)`` when the call's ``n`` large buffers travel
out of band as frames after the payload (:func:`batch_message`, :func:`batch_entries`), and
``timeout`` is seconds or ``None``. Result batch entries are tuples
``(call_id, status, payload, duration)``; ``status`` is a
:class:`~serverless.protocol.messages.CallStatus` and the payload's meaning depends on it
(see :mod:`serverless.serialization`).

Each side tells the other its largest message (``Register``, ``Welcome``) and keeps under
it: :func:`fit_calls` splits the manager's call batches, leaving out the calls whose own
arguments are too large (they fail with status ``ARGUMENTS_TOO_LARGE``); :func:`fit_results`
splits a worker's result batches, failing only the calls whose own result is too large
(status ``RESULT_TOO_LARGE``).
"""

from __future__ import annotations

import math
import operator
import pickle
import typing

from ..errors import ProtocolError
from .messages import _PICKLE, CallStatus, Calls, Results, encode, safe_dumps, safe_loads

__all__ = [
    "encode_batch",
    "decode_batch",
    "fit_results",
    "fit_calls",
    "call_size",
    "call_budget",
    "batch_message",
    "batch_entries",
    "calls_messages",
    "results_messages",
    "arguments_size",
    "Arguments",
    "MAX_CALL_BUFFERS",
    "MAX_BATCH_BUFFERS",
]


# A call's arguments: their pickle, or (pickle, buffers) when large buffers travel out of
# band, each as a frame of its own (serverless.serialization.dumps_args).
Arguments = typing.Union[bytes, tuple[bytes, tuple[typing.Union[bytes, bytearray], ...]]]
MAX_CALL_BUFFERS = 256  # out-of-band buffers of one call (more: all in band)
MAX_BATCH_BUFFERS = 1024  # out-of-band buffers of one Calls message


def encode_batch(entries: list[tuple]) -> bytes:
    """The payload of a Calls or Results message."""
    return pickle.dumps(entries, _PICKLE)


_STATUSES = frozenset(int(status) for status in CallStatus)
_INT_BOUND = 1 << 53  # an int number of seconds beyond this would not survive float()


def _seconds(value: object) -> bool:
    """A finite number of seconds (int or float, not bool) that float() keeps exactly."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return kind is int and -_INT_BOUND < value < _INT_BOUND  # type: ignore[operator]


def _out_of_band(data: object) -> bool:
    """``(pickle, n)``: a payload whose ``n`` buffers follow the batch as frames."""
    return (type(data) is tuple and len(data) == 2 and type(data[0]) is bytes
            and type(data[1]) is int and 0 < data[1] <= MAX_BATCH_BUFFERS)


def _check_results(entries: list) -> None:
    """Each entry ``(call_id, status, payload, duration)``: call_id an int >= 0, status one
    of :class:`CallStatus`, payload bytes or out of band, duration finite seconds >= 0."""
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 4:
            raise ProtocolError("results: an entry is not a 4-tuple")
        call_id, status, payload, duration = entry
        if type(call_id) is not int or call_id < 0:
            raise ProtocolError(f"results: call id {call_id!r:.40} is not an int >= 0")
        if type(status) is not int or status not in _STATUSES:
            raise ProtocolError(f"results: status {status!r:.40} is not a known CallStatus")
        if type(payload) is not bytes and not _out_of_band(payload):
            raise ProtocolError(f"results: a payload of type {type(payload).__name__}")
        if not (_seconds(duration) and duration >= 0):
            raise ProtocolError(f"results: duration {duration!r:.40} is not finite seconds >= 0")


def _check_calls(entries: list) -> None:
    """Each entry ``(call_id, function, args, timeout)``: call_id an int >= 0, function a
    str, args bytes or out of band, timeout None or finite seconds > 0."""
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 4:
            raise ProtocolError("calls: an entry is not a 4-tuple")
        call_id, function, args, timeout = entry
        if type(call_id) is not int or call_id < 0:
            raise ProtocolError(f"calls: call id {call_id!r:.40} is not an int >= 0")
        if type(function) is not str:
            raise ProtocolError(f"calls: a function name of type {type(function).__name__}")
        if type(args) is not bytes and not _out_of_band(args):
            raise ProtocolError(f"calls: arguments of type {type(args).__name__}")
        if timeout is not None and not (_seconds(timeout) and timeout > 0):
            raise ProtocolError(f"calls: timeout {timeout!r:.40} is not None or finite seconds > 0")


_INT, _FLOAT, _BYTES, _STR, _NONE = {int}, {float}, {bytes}, {str}, {type(None)}


def _all_plain(entries: list, results: bool) -> bool:
    """The common batch, checked in a few C-level passes: 4-tuples, int ids >= 0, bytes
    payloads, and (results) known statuses with finite float durations >= 0, or (calls)
    str functions with no timeout or finite float timeouts > 0. False: check one by one."""
    if set(map(type, entries)) != {tuple} or sum(map(len, entries)) != 4 * len(entries):
        return False
    try:
        ids, second, data, seconds = zip(*entries)  # with the sum: every entry has 4 items
    except ValueError:
        return False
    if set(map(type, ids)) != _INT or min(ids) < 0 or set(map(type, data)) != _BYTES:
        return False
    if results:
        if set(map(type, second)) != _INT or not _STATUSES.issuperset(second):
            return False
    elif set(map(type, second)) != _STR:
        return False
    kinds = set(map(type, seconds))
    if not results and kinds == _NONE:
        return True
    if kinds != _FLOAT:
        return False
    # NaN or an infinity makes the sum one too (a sum that overflows: the slow path decides)
    return math.isfinite(sum(seconds)) and (min(seconds) >= 0 if results else min(seconds) > 0)


def decode_batch(payload: bytes | memoryview, kind: type[Calls] | type[Results] | None = None) -> list[tuple]:
    """The entries of a Calls or Results payload, every field of every entry checked
    (``kind``: Calls or Results; None checks only that entries are 4-tuples with an int id).
    A bad entry raises ProtocolError here, never later in the scheduler or the library."""
    entries = safe_loads(payload)
    if type(entries) is not list:
        raise ProtocolError("batch payload is not a list")
    if kind is Results:
        if entries and not _all_plain(entries, True):
            _check_results(entries)
    elif kind is Calls:
        if entries and not _all_plain(entries, False):
            _check_calls(entries)
    else:
        for entry in entries:
            if type(entry) is not tuple or len(entry) != 4 or type(entry[0]) is not int:
                raise ProtocolError("malformed batch entry")
    return entries


_ENVELOPE_ROOM = 4096  # bytes kept free for the envelope, pickle and CURVE framing
_ENTRY_ROOM = 64  # pickle framing of one result entry


def arguments_size(args: Arguments) -> int:
    """Bytes a call's arguments take on the wire."""
    if type(args) is tuple:
        return len(args[0]) + sum(len(buffer) for buffer in args[1])
    return len(args)


def call_size(function: str, args: Arguments) -> int:
    """The room one call takes in a Calls message (its arguments, name and pickle framing)."""
    return arguments_size(args) + len(function) + _ENTRY_ROOM


def batch_message(cls: type[Calls] | type[Results], instance_id: int, entries: list[tuple]):
    """The Calls or Results message for ``entries``. An entry's third item (a call's
    arguments, a result's payload) given as ``(pickle, buffers)`` goes into the batch as
    ``(pickle, len(buffers))``, and the buffers follow the payload as frames of their own,
    in entry order."""
    buffers: list = []
    wire = entries
    for index, entry in enumerate(entries):
        data = entry[2]
        if type(data) is tuple:
            if wire is entries:
                wire = list(entries)
            buffers += data[1]
            wire[index] = (entry[0], entry[1], (data[0], len(data[1])), entry[3])
    return cls(instance_id, len(entries), encode_batch(wire), tuple(buffers))


def batch_entries(msg: Calls | Results) -> list[tuple]:
    """The entries of ``msg`` with their out-of-band buffers back in place (as bytearrays,
    so that arrays unpickled over them are writable); ProtocolError if they do not match."""
    entries = decode_batch(msg.payload, type(msg))
    if len(entries) != msg.count:
        raise ProtocolError(f"{msg.TAG}: count {msg.count} but {len(entries)} entries")
    buffers = msg.buffers
    if not buffers:
        if tuple in set(map(type, map(_ARGS, entries))):
            raise ProtocolError(f"{msg.TAG}: out-of-band data named but no buffers")
        return entries
    used = 0
    for index, entry in enumerate(entries):
        data = entry[2]
        if type(data) is tuple:
            if (len(data) != 2 or type(data[0]) is not bytes or type(data[1]) is not int
                    or not 0 < data[1] <= len(buffers) - used):
                raise ProtocolError(f"{msg.TAG}: malformed out-of-band data")
            taken = tuple(b if type(b) is bytearray else bytearray(b)
                          for b in buffers[used:used + data[1]])
            used += data[1]
            entries[index] = (entry[0], entry[1], (data[0], taken), entry[3])
    if used != len(buffers):
        raise ProtocolError(f"{msg.TAG}: {len(buffers) - used} out-of-band buffers named by no entry")
    return entries


def results_messages(instance_id: int, entries: list[tuple]) -> list[Results]:
    """Results messages for ``entries``: one, unless their out-of-band buffers are more than
    one message may carry (:data:`MAX_BATCH_BUFFERS`)."""
    if set(map(type, map(_ARGS, entries))) == {bytes}:  # the common case: nothing out of band
        return [Results(instance_id, len(entries), encode_batch(entries))]
    batches: list[list[tuple]] = [[]]
    frames = 0
    for entry in entries:
        buffers = len(entry[2][1]) if type(entry[2]) is tuple else 0
        if batches[-1] and frames + buffers > MAX_BATCH_BUFFERS:
            batches.append([])
            frames = 0
        batches[-1].append(entry)
        frames += buffers
    return [batch_message(Results, instance_id, batch) for batch in batches]


def call_budget(max_bytes: int) -> int:
    """The room for calls in one message of at most ``max_bytes``."""
    return max_bytes - _ENVELOPE_ROOM


_FUNCTION, _ARGS = operator.itemgetter(1), operator.itemgetter(2)


def calls_messages(instance_id: int, entries: list[tuple],
                   max_bytes: int) -> tuple[list[Calls], list[tuple[int, int]]]:
    """The Calls messages that carry ``entries`` to an instance, each under ``max_bytes``,
    and ``(call_id, size)`` of the calls too large to go even alone (:func:`fit_calls`).

    The common case (no out-of-band buffer, all under the limit) is one message built
    from a few passes of C-level ``map``s over the entries."""
    args = list(map(_ARGS, entries))
    if set(map(type, args)) == {bytes}:
        size = sum(map(len, args)) + sum(map(len, map(_FUNCTION, entries))) + _ENTRY_ROOM * len(args)
        if size <= call_budget(max_bytes):
            return [Calls(instance_id, len(entries), encode_batch(entries))], []
    batches, too_large = fit_calls(entries, max_bytes)
    return [batch_message(Calls, instance_id, batch) for batch in batches], too_large


def fit_calls(entries: list[tuple], max_bytes: int) -> tuple[list[list[tuple]], list[tuple[int, int]]]:
    """Call entries packed into batches that each fit a message of ``max_bytes``.

    Returns the batches and, apart, ``(call_id, size)`` of each call that cannot fit even
    alone (it must fail with ``ARGUMENTS_TOO_LARGE``). The fast path, all in one batch,
    costs one pass over the entries' sizes.
    """
    budget = call_budget(max_bytes)
    sizes = [(len(args) if type(args := entry[2]) is bytes else arguments_size(args))
             + len(entry[1]) + _ENTRY_ROOM for entry in entries]
    out_of_band = sum(len(entry[2][1]) for entry in entries if type(entry[2]) is tuple)
    if sum(sizes) <= budget and out_of_band <= MAX_BATCH_BUFFERS:
        return [entries], []
    batches: list[list[tuple]] = [[]]
    too_large: list[tuple[int, int]] = []
    used = frames = 0
    for entry, size in zip(entries, sizes):
        if size > budget:
            too_large.append((entry[0], arguments_size(entry[2])))
            continue
        buffers = len(entry[2][1]) if type(entry[2]) is tuple else 0
        if batches[-1] and (used + size > budget or frames + buffers > MAX_BATCH_BUFFERS):
            batches.append([])
            used = frames = 0
        batches[-1].append(entry)
        used += size
        frames += buffers
    return [batch for batch in batches if batch], too_large


def fit_results(msg: Results, frames: list, max_bytes: int) -> list[list]:
    """The frames to send for ``msg`` so that none is over ``max_bytes``.

    The fast path returns ``[frames]`` untouched. Otherwise the batch is decoded: an entry
    whose own payload cannot fit is replaced by a ``RESULT_TOO_LARGE`` entry (that call
    fails, the others do not), and the entries are packed into as many batches as needed.
    """
    budget = max_bytes - _ENVELOPE_ROOM
    if sum(len(frame) for frame in frames) <= budget:
        return [frames]
    batches: list[list[tuple]] = [[]]
    used = 0
    for entry in batch_entries(msg):
        call_id, _status, payload, duration = entry
        size = (arguments_size(payload) if type(payload) in (bytes, bytearray, tuple) else 0) + _ENTRY_ROOM
        if size > budget:
            too_large = safe_dumps((size - _ENTRY_ROOM, max_bytes))
            entry = (call_id, int(CallStatus.RESULT_TOO_LARGE), too_large, duration)
            size = len(too_large) + _ENTRY_ROOM
        if used + size > budget and batches[-1]:
            batches.append([])
            used = 0
        batches[-1].append(entry)
        used += size
    return [encode(message) for batch in batches
            for message in results_messages(msg.instance_id, batch)]
