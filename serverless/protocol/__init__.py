"""The wire protocol: every message the manager, workers and library processes exchange.

Three modules, re-exported here (import from ``serverless.protocol``):

* :mod:`.messages`: the message classes, their tags, the version, and the validated codec;
* :mod:`.batches`: the payload of ``Calls``/``Results`` (entries, out-of-band buffers,
  splitting batches under a peer's message limit);
* :mod:`.framing`: length-prefixed frames for byte streams (agent <-> library, pipes).

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
:func:`batch_entries` checks every field of every Calls and Results entry the same way
(ids ints >= 0, a status of :class:`CallStatus`, durations finite seconds >= 0, timeouts
None or finite seconds > 0, payloads bytes or out-of-band references that match the
frames, the entry count), so a bad entry raises ProtocolError at decode, never later in
the scheduler or a library; the common batch is checked in a few C-level passes.
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

from .batches import *  # noqa: F403
from .batches import __all__ as _batches_all
from .framing import *  # noqa: F403
from .framing import __all__ as _framing_all
from .messages import *  # noqa: F403
from .messages import __all__ as _messages_all

__all__ = [*_messages_all, *_batches_all, *_framing_all]
