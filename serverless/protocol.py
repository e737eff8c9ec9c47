"""The wire protocol: every message the manager, workers and library processes exchange.

Each message is a small frozen dataclass with a ``TAG``; :data:`MESSAGES` maps tags to classes
and no other module compares tags. A message travels as a list of frames:

    frame 0   the envelope: ``(tag, field, field, ...)`` pickled with protocol 5
    frame 1   the opaque payload, for the messages that carry one (``Deploy``, ``Calls``,
              ``Results``): it is forwarded by the worker agent without being decoded

Envelopes and batch payloads contain only plain values (ints, floats, strings, bytes,
tuples, lists, dicts, None), and they are decoded with an unpickler that refuses every
global, so a malformed or hostile frame can raise :class:`ProtocolError` but cannot run
code. Function arguments and results are real pickles nested inside batches as ``bytes``;
they are unpickled only by the library process (arguments) and the manager (results).

Over zmq the frames are the parts of a multipart message. Between a worker agent and its
library processes, which talk over a local stream socket, :func:`pack_stream` and
:class:`StreamDecoder` add length prefixes.

The first message a worker sends, :class:`Register`, carries :data:`PROTOCOL_VERSION`; the
manager answers :class:`Reject` if it differs. ``Register``'s first field and ``Reject``'s
single one are frozen across versions, so a peer of another version always gets a clear
answer: a Register whose layout differs from ours raises
:class:`~serverless.errors.ProtocolVersionError` (not a plain ProtocolError) when its
version differs, and the manager rejects it with that message.

Validation: :func:`decode` raises :class:`ProtocolError` for anything malformed (never
another exception, never runs code): a frame that is not a plain-value pickle, an unknown
tag, a wrong field count or type, a negative count or id, a float that is not finite, a
``Cancel`` with ids that are not ints, a ``Deploy`` whose options are not plain strings.
The size of messages over zmq is bounded by the sockets (``max_message_bytes``, zmq's
MAXMSGSIZE, which drops a connection that sends more). Each side tells the other its bound
(``Register``, ``Welcome``) and keeps under it: :func:`fit_calls` splits the manager's call
batches, leaving out the calls whose own arguments are too large (they fail with status
``ARGUMENTS_TOO_LARGE``); :func:`fit_results` splits a worker's result batches, failing
only the calls whose own result is too large (status ``RESULT_TOO_LARGE``).

Call batch entries are tuples ``(call_id, function, args, timeout)`` where ``args`` is the
pickled ``(args, kwargs)``, or ``(pickle, n)`` when the call's ``n`` large buffers travel
out of band as frames after the payload (:func:`batch_message`, :func:`batch_entries`), and
``timeout`` is seconds or ``None``. Result batch entries are
tuples ``(call_id, status, payload, duration)``; ``status`` is a :class:`CallStatus` and the
payload's meaning depends on it (see :mod:`serverless.serialization`).
"""

from __future__ import annotations

import dataclasses
import enum
import io
import math
import operator
import pickle
import struct
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ProtocolError, ProtocolVersionError

if typing.TYPE_CHECKING:
    import socket

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_MESSAGE_BYTES",
    "CallStatus",
    "Message",
    "MESSAGES",
    "Register",
    "Welcome",
    "Reject",
    "Heartbeat",
    "Deploy",
    "InstanceReady",
    "InstanceFailed",
    "StopInstance",
    "InstanceStopped",
    "Calls",
    "Results",
    "Cancel",
    "Shutdown",
    "Goodbye",
    "encode",
    "decode",
    "encode_batch",
    "decode_batch",
    "safe_loads",
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
    "pack_stream",
    "StreamDecoder",
    "STREAM_READ_SIZE",
    "BIG_FRAME",
]

PROTOCOL_VERSION = 3  # 2: Welcome carries max_message_bytes; RESULT_TOO_LARGE
# 3: Register carries the worker's max_message_bytes; ARGUMENTS_TOO_LARGE
MAX_MESSAGE_BYTES = 1 << 31  # the default ceiling on one message; configurable per peer
_PICKLE = 5


class CallStatus(enum.IntEnum):
    """How a call ended, as reported in a result batch entry."""

    OK = 0  # payload: the pickled return value
    RAISED = 1  # payload: see serialization.encode_exception
    CRASHED = 2  # payload: safe pickle of (exit_code, detail)
    TIMEOUT = 3  # payload: safe pickle of (timeout_seconds, detail)
    OUT_OF_MEMORY = 4  # payload: safe pickle of (limit_mb, detail)
    CANCELLED = 5  # payload: empty
    RESULT_NOT_SERIALIZABLE = 6  # payload: utf-8 text of the error
    BAD_ARGUMENTS = 7  # payload: utf-8 traceback of the failed unpickling
    UNKNOWN_FUNCTION = 8  # payload: utf-8 name
    RESULT_TOO_LARGE = 9  # payload: safe pickle of (result_bytes, limit_bytes)
    ARGUMENTS_TOO_LARGE = 10  # payload: safe pickle of (argument_bytes, limit_bytes); the
    #                          manager's own verdict on a call it could not send, never on the wire


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain values only: any global (class, function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise ProtocolError(f"refused global {module}.{name} in a protocol frame")


def safe_loads(data: bytes | memoryview) -> Any:
    """Unpickle a frame that may hold only plain values; raise ProtocolError otherwise."""
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except ProtocolError:
        raise
    except Exception as exc:  # any malformed input: truncated, bad opcode, recursion...
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None


def safe_dumps(value: Any) -> bytes:
    return pickle.dumps(value, _PICKLE)


# --- messages -------------------------------------------------------------------------

MESSAGES: dict[str, type[Message]] = {}


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages. ``payload`` (when a class has one) travels as its own frame."""

    TAG: ClassVar[str] = ""
    HAS_PAYLOAD: ClassVar[bool] = False
    HAS_BUFFERS: ClassVar[bool] = False  # frames after the payload (Calls)
    _CHECKS: ClassVar[tuple[tuple[str, tuple[type, ...]], ...]] = ()

    def _validate(self) -> None:
        """Checks beyond field types (override); raise ProtocolError."""


_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (float, int),
    str: (str,),
    bytes: (bytes,),
    bool: (bool,),
    tuple: (tuple,),
    list: (list,),
    dict: (dict,),
}


def _field_check(hint: Any) -> tuple[type, ...]:
    """The isinstance() check for a field annotation like ``int`` or ``str | None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        allowed: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            allowed += (type(None),) if arg is type(None) else _field_check(arg)
        return allowed
    if origin is not None:
        hint = origin
    try:
        return _SIMPLE_TYPES[hint]
    except KeyError:
        raise TypeError(f"protocol fields must be plain types, not {hint!r}") from None


def message(tag: str) -> typing.Callable[[type], type]:
    """Register a message class under ``tag`` and precompute its field checks."""

    def register(cls: type) -> type:
        if tag in MESSAGES:
            raise ValueError(f"duplicate message tag {tag!r}")
        cls.TAG = tag
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("payload", "buffers")]
        cls.HAS_PAYLOAD = "payload" in fields
        cls.HAS_BUFFERS = "buffers" in fields
        cls._CHECKS = tuple((name, _field_check(hints[name])) for name in names)
        MESSAGES[tag] = cls
        return cls

    return register


@message("register")
@dataclass(frozen=True, slots=True)
class Register(Message):
    """worker -> manager, first message: who I am and what I offer."""

    version: int
    name: str
    hostname: str
    pid: int
    cores: float
    memory_mb: int
    python: str
    max_message_bytes: int  # the largest message the worker accepts: keep call batches under it


@message("welcome")
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """manager -> worker: registered; heartbeat settings both sides use."""

    worker_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    max_message_bytes: int  # the largest message the manager accepts: keep results under it


@message("reject")
@dataclass(frozen=True, slots=True)
class Reject(Message):
    """manager -> worker: not registered (wrong version, bad resources...); the worker exits."""

    reason: str


@message("heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """either way: I am alive (sent when nothing else was sent for an interval)."""


@message("deploy")
@dataclass(frozen=True, slots=True)
class Deploy(Message):
    """manager -> worker -> library: start an instance of a library.

    ``payload`` is the serialized library (functions, imports, setup), opaque to the agent.
    ``options`` holds what the agent needs to start and watch the process.
    """

    instance_id: int
    library: str
    mode: str
    slots: int
    cores: float
    memory_mb: int
    options: dict
    payload: bytes = b""

    def _validate(self) -> None:
        python = self.options.get("python")
        env = self.options.get("env", {})
        if python is not None and not isinstance(python, str):
            raise ProtocolError("deploy.options.python: not a string")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ProtocolError("deploy.options.env: not a dict of strings")


@message("instance-ready")
@dataclass(frozen=True, slots=True)
class InstanceReady(Message):
    """library -> worker -> manager: imports and setup done, calls may come."""

    instance_id: int
    pid: int


@message("instance-failed")
@dataclass(frozen=True, slots=True)
class InstanceFailed(Message):
    """library or worker -> manager: the instance failed to start, or died."""

    instance_id: int
    reason: str
    traceback: str
    during_start: bool


@message("stop-instance")
@dataclass(frozen=True, slots=True)
class StopInstance(Message):
    """manager -> worker -> library: finish nothing more, stop the instance."""

    instance_id: int


@message("instance-stopped")
@dataclass(frozen=True, slots=True)
class InstanceStopped(Message):
    """worker -> manager: a stop asked for is done; its resources are free."""

    instance_id: int


@message("calls")
@dataclass(frozen=True, slots=True)
class Calls(Message):
    """manager -> worker -> library: a batch of calls for one instance.

    ``buffers`` are the calls' out-of-band argument buffers, one frame each after the
    payload, in the order of the entries that name them (see :func:`batch_message`).
    """

    instance_id: int
    count: int
    payload: bytes = b""
    buffers: tuple = ()


@message("results")
@dataclass(frozen=True, slots=True)
class Results(Message):
    """library -> worker -> manager: a batch of finished calls (``buffers``: as in Calls)."""

    instance_id: int
    count: int
    payload: bytes = b""
    buffers: tuple = ()


@message("cancel")
@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """manager -> worker -> library: stop these calls (queued or running)."""

    instance_id: int
    call_ids: tuple

    def _validate(self) -> None:
        if not all(type(call_id) is int for call_id in self.call_ids):
            raise ProtocolError("cancel.call_ids: not all ints")


@message("shutdown")
@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """manager -> worker: stop all instances and exit."""

    reason: str


@message("goodbye")
@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """worker -> manager: I am leaving; what I held must go elsewhere."""

    reason: str


# --- encoding -------------------------------------------------------------------------


def encode(msg: Message) -> list[bytes]:
    """Frames for ``msg``: the envelope, then the payload if the message has one."""
    cls = type(msg)
    envelope = (cls.TAG, *(getattr(msg, name) for name, _ in cls._CHECKS))
    frames = [pickle.dumps(envelope, _PICKLE)]
    if cls.HAS_PAYLOAD:
        frames.append(msg.payload)  # type: ignore[attr-defined]
    if cls.HAS_BUFFERS:
        frames.extend(msg.buffers)  # type: ignore[attr-defined]
    return frames


def decode(frames: Sequence[bytes | memoryview]) -> Message:
    """The message in ``frames``; ProtocolError if anything about it is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    envelope = safe_loads(frames[0])
    if not isinstance(envelope, tuple) or not envelope or type(envelope[0]) is not str:
        raise ProtocolError("envelope is not a tagged tuple")
    cls = MESSAGES.get(envelope[0])
    if cls is None:
        raise ProtocolError(f"unknown message tag {envelope[0][:40]!r}")
    values = envelope[1:]
    try:
        _check_fields(cls, values)
    except ProtocolError:
        if cls is Register and values and type(values[0]) is int and values[0] != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"protocol version {values[0]} is not {PROTOCOL_VERSION}: run the same "
                "serverless version on the manager and the workers", values[0]) from None
        raise
    expected_frames = 2 if cls.HAS_PAYLOAD else 1
    if len(frames) != expected_frames and not (cls.HAS_BUFFERS and len(frames) > expected_frames):
        raise ProtocolError(f"{cls.TAG}: expected {expected_frames} frames, got {len(frames)}")
    if cls.HAS_BUFFERS:
        msg = cls(*values, payload=frames[1], buffers=tuple(frames[2:]))  # type: ignore[call-arg]
    elif cls.HAS_PAYLOAD:
        msg = cls(*values, payload=frames[1])  # type: ignore[call-arg]
    else:
        msg = cls(*values)
    msg._validate()
    return msg


def _check_fields(cls: type[Message], values: tuple) -> None:
    if len(values) != len(cls._CHECKS):
        raise ProtocolError(f"{cls.TAG}: expected {len(cls._CHECKS)} fields, got {len(values)}")
    for value, (name, allowed) in zip(values, cls._CHECKS):
        if not isinstance(value, allowed) or (type(value) is bool and bool not in allowed):
            raise ProtocolError(f"{cls.TAG}.{name}: unexpected {type(value).__name__}")
        if isinstance(value, (int, float)) and not 0 <= value < math.inf:
            raise ProtocolError(f"{cls.TAG}.{name}: {value!r} is out of range")


def encode_batch(entries: list[tuple]) -> bytes:
    """The payload of a Calls or Results message."""
    return pickle.dumps(entries, _PICKLE)


def decode_batch(payload: bytes | memoryview) -> list[tuple]:
    """The entries of a Calls or Results payload (plain tuples, checked for shape)."""
    entries = safe_loads(payload)
    if type(entries) is not list:
        raise ProtocolError("batch payload is not a list")
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 4 or type(entry[0]) is not int:
            raise ProtocolError("malformed batch entry")
    return entries


_ENVELOPE_ROOM = 4096  # bytes kept free for the envelope, pickle and CURVE framing
_ENTRY_ROOM = 64  # pickle framing of one result entry


# A call's arguments: their pickle, or (pickle, buffers) when large buffers travel out of
# band, each as a frame of its own (serverless.serialization.dumps_args).
Arguments = typing.Union[bytes, tuple[bytes, tuple[typing.Union[bytes, bytearray], ...]]]
MAX_CALL_BUFFERS = 256  # out-of-band buffers of one call (more: all in band)
MAX_BATCH_BUFFERS = 1024  # out-of-band buffers of one Calls message


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
    entries = decode_batch(msg.payload)
    buffers = msg.buffers
    if not buffers:
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


# --- stream framing (worker agent <-> library process) ---------------------------------

_COUNT = struct.Struct("!I")
_LENGTH = struct.Struct("!Q")
STREAM_READ_SIZE = 1 << 16  # reads of 1 MiB made glibc mmap and munmap a buffer every time
BIG_FRAME = 1 << 20  # frames from this size on are read into a buffer of their own
_MAX_STREAM_FRAMES = 2 + MAX_BATCH_BUFFERS  # envelope, payload, out-of-band buffers


def pack_stream(frames: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Buffers to write to a stream for one message: a frame count, then length + bytes each."""
    out: list[bytes | memoryview] = [_COUNT.pack(len(frames))]
    for frame in frames:
        out.append(_LENGTH.pack(len(frame)))
        out.append(frame)
    return out


class StreamDecoder:
    """Turns bytes read from a stream back into frame lists, one per message.

    A frame of :data:`BIG_FRAME` bytes or more gets a buffer of its own as soon as its
    length is known, and :meth:`receive` reads the rest of it straight into that buffer
    (one copy from the kernel, no growing buffer, no slicing); such a frame comes out as a
    ``bytearray``, smaller ones as ``bytes``.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()  # read, not yet parsed (headers, small frames)
        self._max = max_message_bytes
        self._count = -1  # frames in the message being read; -1: its header is not in yet
        self._frames: list[bytes | bytearray] = []  # its frames so far
        self._big: bytearray | None = None  # a big frame being filled in place
        self._filled = 0

    def receive(self, sock: socket.socket) -> list[list[bytes | bytearray]] | None:
        """Read from ``sock`` once; the messages now complete, or None at EOF.

        The socket's exceptions (``BlockingIOError`` on a non-blocking one) go to the caller.
        """
        big = self._big
        if big is None:
            data = sock.recv(STREAM_READ_SIZE)
            return list(self.feed(data)) if data else None
        received = sock.recv_into(memoryview(big)[self._filled:])
        if not received:
            return None
        self._filled += received
        if self._filled < len(big):
            return []
        self._big = None
        self._frames.append(big)
        return list(self._parse())

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[list[bytes | bytearray]]:
        """Add ``data``; yield every message that is now complete."""
        view = memoryview(data)
        while True:
            big = self._big
            if big is None:
                self._buffer += view
                view = view[len(view):]
            else:
                take = min(len(view), len(big) - self._filled)
                big[self._filled:self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                if self._filled < len(big):
                    return
                self._big = None
                self._frames.append(big)
            yield from self._parse()
            if not view:
                return

    def _parse(self) -> Iterator[list[bytes | bytearray]]:
        buf = self._buffer
        pos = 0
        try:
            while True:
                if self._count < 0:
                    if len(buf) - pos < _COUNT.size:
                        return
                    (count,) = _COUNT.unpack_from(buf, pos)
                    if count > _MAX_STREAM_FRAMES:
                        raise ProtocolError(f"stream message with {count} frames")
                    self._count = count
                    pos += _COUNT.size
                while len(self._frames) < self._count:
                    if len(buf) - pos < _LENGTH.size:
                        return
                    (length,) = _LENGTH.unpack_from(buf, pos)
                    if length > self._max:
                        raise ProtocolError(f"stream frame of {length} bytes is over the limit")
                    start = pos + _LENGTH.size
                    if len(buf) - start >= length:
                        self._frames.append(bytes(buf[start:start + length]))
                        pos = start + length
                    elif length >= BIG_FRAME:  # all the rest of the buffer is its beginning
                        big = bytearray(length)
                        have = len(buf) - start
                        big[:have] = buf[start:]
                        self._big, self._filled = big, have
                        pos = len(buf)
                        return
                    else:
                        return
                frames, self._frames, self._count = self._frames, [], -1
                yield frames
        finally:
            del buf[:pos]
