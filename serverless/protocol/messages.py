"""Protocol messages: each a small frozen dataclass with a tag, and their validated codec.

Each message is a frozen dataclass with a ``TAG``; :data:`MESSAGES` maps tags to classes and
no other module compares tags. A message travels as a list of frames:

    frame 0   the envelope: ``(tag, field, field, ...)`` pickled with protocol 5
    frame 1   the opaque payload, for the messages that carry one (``Deploy``, ``Calls``,
              ``Results``): it is forwarded by the worker agent without being decoded
    frame 2+  out-of-band buffers (``Calls``, ``Results``), see :mod:`.batches`

Envelopes contain only plain values and are decoded with an unpickler that refuses every
global (:func:`safe_loads`), so a malformed or hostile frame can raise
:class:`~serverless.errors.ProtocolError` but cannot run code. :func:`decode` checks the
tag, the field count and types, ranges (no negative count or id, no float that is not
finite) and each message's own ``_validate``.
"""


from __future__ import annotations

import dataclasses
import enum
import io
import math
import pickle
import pickletools
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ProtocolError, ProtocolVersionError

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_ENVELOPE_BYTES",
    "clip_text",
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
    "InstanceWarning",
    "StopInstance",
    "InstanceStopped",
    "ImportsLearned",
    "Output",
    "Calls",
    "Results",
    "Cancel",
    "Shutdown",
    "Goodbye",
    "Gate",
    "Fetch",
    "Want",
    "Fetched",
    "Holdings",
    "encode",
    "decode",
    "safe_loads",
    "safe_dumps",
]

PROTOCOL_VERSION = 4  # 2: Welcome carries max_message_bytes; RESULT_TOO_LARGE
# 3: Register carries the worker's max_message_bytes; ARGUMENTS_TOO_LARGE
# 4: this round's messages (hardening, security, data); one bump for the whole round
# The default ceiling on one message (zmq's MAXMSGSIZE, per frame; configurable per peer).
# It holds before authentication too (handshake frames), so it is sized for calls: large
# data travels as files (the data path), not inside messages.
MAX_MESSAGE_BYTES = 256 << 20
# Envelopes hold a tag and a few plain fields; a larger one is refused before it is
# unpickled (a 20 MB pickle of nested lists grows to about 1.1 GB of objects).
MAX_ENVELOPE_BYTES = 1 << 20
MAX_TEXT = 64 << 10  # what a message's free text (a reason, a traceback) is clipped to
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


# PUT and LONG_BINPUT name a memo slot by number, and the C unpickler grows its memo to
# twice that number before storing: 27 bytes can make it allocate and zero gigabytes.
# Our encoder (protocol 5) never emits them: it memoizes with MEMOIZE. A frame that might
# hold one with a large number (a C-speed search, which string bytes also match) is read
# opcode by opcode first. Frames over SCREENED_BYTES are not screened (see safe_loads).
_MAYBE_BIG_PUT = re.compile(rb"r(?:...[^\x00]|..[\x10-\xff])|p\s*\+?[0-9_]{7}", re.DOTALL)
SCREENED_BYTES = 1024
_MEMO_PUTS = frozenset({"PUT", "LONG_BINPUT"})


def _refuse_memo_puts(data: bytes | memoryview) -> None:
    """ProtocolError if ``data`` holds a PUT or LONG_BINPUT opcode before anything malformed.

    Where pickletools cannot parse further, the unpickler stops at the same opcode with
    its own error (or, for a global, the refusal), so it is left to say why.
    """
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name in _MEMO_PUTS:
                raise ProtocolError(f"refused {opcode.name} in a protocol frame")
    except ProtocolError:
        raise
    except Exception:
        return


def safe_loads(data: bytes | memoryview, screen: bool = False) -> Any:
    """Unpickle a frame that may hold only plain values; raise ProtocolError otherwise.

    A frame of up to :data:`SCREENED_BYTES` (or any size with ``screen``: envelopes) that
    might hold a memo PUT with a large slot number is checked opcode by opcode first.
    Larger batch payloads are not: reading every batch opcode by opcode would cost more
    than unpickling it, and only peers holding the secret can send one.
    """
    if (screen or len(data) <= SCREENED_BYTES) and _MAYBE_BIG_PUT.search(data):
        _refuse_memo_puts(data)
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except ProtocolError:
        raise
    except Exception as exc:  # any malformed input: truncated, bad opcode, recursion...
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None


def clip_text(text: str, keep_end: bool = False) -> str:
    """``text`` cut to :data:`MAX_TEXT` characters (its end, for a traceback), so that the
    envelope carrying it stays far below :data:`MAX_ENVELOPE_BYTES`."""
    if len(text) <= MAX_TEXT:
        return text
    cut = "[...]\n"
    return cut + text[-(MAX_TEXT - len(cut)):] if keep_end else text[:MAX_TEXT - len(cut)] + cut


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
        environment = self.options.get("environment")
        if environment is not None and not (
                isinstance(environment, dict)
                and all(isinstance(environment.get(k), str) for k in ("kind", "path", "id"))):
            raise ProtocolError("deploy.options.environment: not an environment description")
        if environment is not None and environment.get("file") is not None:
            _check_spec("deploy.options.environment.file", environment["file"])


@message("instance-ready")
@dataclass(frozen=True, slots=True)
class InstanceReady(Message):
    """library -> worker -> manager: imports and setup done, calls may come."""

    instance_id: int
    pid: int


@message("instance-failed")
@dataclass(frozen=True, slots=True)
class InstanceFailed(Message):
    """library or worker -> manager: the instance failed to start, or died.

    ``running``: the calls that were running when it died (from its crash journal), the
    only ones the manager charges an attempt; None when the worker could not tell.
    """

    instance_id: int
    reason: str
    traceback: str
    during_start: bool
    running: tuple | None = None

    def _validate(self) -> None:
        if self.running is not None and not all(type(c) is int for c in self.running):
            raise ProtocolError("instance-failed.running: not all ints")


@message("instance-warning")
@dataclass(frozen=True, slots=True)
class InstanceWarning(Message):
    """library -> worker -> manager: something the user should know about an instance,
    said once (e.g. it has several threads when it forks)."""

    instance_id: int
    text: str


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


@message("imports-learned")
@dataclass(frozen=True, slots=True)
class ImportsLearned(Message):
    """library -> worker -> manager: modules the instance imported between forks because
    its calls imported them (``learned``), and ``(name, reason)`` pairs it refused to."""

    instance_id: int
    learned: tuple
    rejected: tuple

    def _validate(self) -> None:
        if not all(type(name) is str for name in self.learned):
            raise ProtocolError("imports-learned.learned: not all strings")
        if not all(type(pair) is tuple and len(pair) == 2 and type(pair[0]) is str
                   and type(pair[1]) is str for pair in self.rejected):
            raise ProtocolError("imports-learned.rejected: not all (name, reason) pairs")


@message("output")
@dataclass(frozen=True, slots=True)
class Output(Message):
    """library -> worker -> manager (``Manager(forward_output=True)``): a chunk of what the
    instance's calls wrote to stdout and stderr, at most 64 KiB."""

    instance_id: int
    data: bytes

    def _validate(self) -> None:
        if len(self.data) > 65536:
            raise ProtocolError("output.data: over 64 KiB")


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


# --- data (issue 13; see serverless.data and docs/data.md) ----------------------------

_SPEC_TYPES = (str, int, str, str, str, str)  # serverless.data.FileSpec's fields


def _check_spec(where: str, spec: object) -> None:
    if (type(spec) is not tuple or len(spec) != len(_SPEC_TYPES)
            or not all(type(v) is t for v, t in zip(spec, _SPEC_TYPES))):
        raise ProtocolError(f"{where}: a file spec is a tuple of {len(_SPEC_TYPES)} plain fields")
    content_id, size, name = spec[0], spec[1], spec[2]
    if (size < -1 or not content_id or "/" in content_id or content_id.startswith(".")
            or not name or "/" in name or name in (".", "..", "unpacked") or "\0" in name):
        raise ProtocolError(f"{where}: a bad file spec")


@message("gate")
@dataclass(frozen=True, slots=True)
class Gate(Message):
    """manager -> worker: the next Calls for ``instance_id`` needs these files (FileSpec
    tuples) in the worker's cache; the agent holds it until they are there."""

    instance_id: int
    files: tuple

    def _validate(self) -> None:
        for spec in self.files:
            _check_spec("gate", spec)


@message("fetch")
@dataclass(frozen=True, slots=True)
class Fetch(Message):
    """manager -> worker: fetch ``content_id`` (``size`` bytes) from ``source``: a chunk
    server's ``tcp://host:port``, ``manager:PORT`` (the manager's host) or ``url``."""

    content_id: str
    size: int
    source: str


@message("want")
@dataclass(frozen=True, slots=True)
class Want(Message):
    """worker -> manager: name a source for this file (a FileSpec)."""

    file: tuple

    def _validate(self) -> None:
        _check_spec("want", self.file)


@message("fetched")
@dataclass(frozen=True, slots=True)
class Fetched(Message):
    """worker -> manager: a fetch from ``source`` ended: ``outcome`` is "ok" (it holds
    ``size`` bytes now), "failed" (the source failed: name another) or "gave-up" (the
    content itself is bad, or cannot fit: the worker's calls failed)."""

    content_id: str
    source: str
    outcome: str
    size: int


@message("holdings")
@dataclass(frozen=True, slots=True)
class Holdings(Message):
    """worker -> manager: its chunk server's address and the entries added to or removed
    from its cache (content ids), so the manager directs who fetches from whom."""

    address: str
    added: tuple
    removed: tuple

    def _validate(self) -> None:
        if not all(type(i) is str for i in self.added + self.removed):
            raise ProtocolError("holdings: content ids are strings")


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
    if len(frames[0]) > MAX_ENVELOPE_BYTES:  # before unpickling: bounded memory
        raise ProtocolError(f"an envelope of {len(frames[0]):,} bytes is over the "
                            f"{MAX_ENVELOPE_BYTES:,} limit")
    envelope = safe_loads(frames[0], screen=True)
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
