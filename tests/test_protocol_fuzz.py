"""Fuzzing the protocol decoder: hostile bytes raise ProtocolError, never anything else.

Every frame a peer sends goes through :func:`serverless.protocol.decode` (and batches
through ``decode_batch``, library streams through ``StreamDecoder``). Random bytes, random
plain-value envelopes and mutations of valid frames must end as a message or a
ProtocolError, quickly, and must never import or call anything.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serverless.errors import ProtocolError, ProtocolVersionError
from serverless.protocol import (
    MESSAGES,
    PROTOCOL_VERSION,
    CallStatus,
    Calls,
    Cancel,
    Fetch,
    Fetched,
    Gate,
    Holdings,
    Want,
    Deploy,
    Goodbye,
    Heartbeat,
    ImportsLearned,
    InstanceFailed,
    InstanceWarning,
    InstanceReady,
    InstanceStopped,
    Output,
    Register,
    Reject,
    Results,
    Shutdown,
    StopInstance,
    StreamDecoder,
    Welcome,
    decode,
    decode_batch,
    encode,
    encode_batch,
    fit_calls,
    fit_results,
    pack_stream,
    safe_loads,
)

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

VALID = [
    Register(PROTOCOL_VERSION, "w", "host", 12, 2.0, 1024, "/usr/bin/python3", 1 << 31),
    Welcome("w.abc", 1.0, 15.0, 1 << 20),
    Reject("no"),
    Heartbeat(),
    Deploy(3, "lib", "fork", 2, 1.0, 0, {"env": {"A": "1"}, "python": "py"}, b"\x80\x05payload"),
    InstanceReady(3, 99),
    InstanceFailed(3, "why", "tb", True),
    InstanceFailed(3, "why", "tb", False, (7, 8)),
    InstanceWarning(3, "it has 4 threads when it forks"),
    StopInstance(3),
    InstanceStopped(3),
    ImportsLearned(3, ("json.tool",), (("six.moves", "failed: no module"),)),
    Output(3, b"hello\n"),
    Calls(3, 1, encode_batch([(1, "f", pickle.dumps(((1, 2), {})), None)])),
    Results(3, 1, encode_batch([(1, 0, pickle.dumps(3), 0.001)])),
    Cancel(3, (1, 2)),
    Shutdown("bye"),
    Goodbye("bye"),
    Gate(3, (("b3-" + "0" * 64, 10, "a.csv", "", "workflow", ""),)),
    Fetch("b3-" + "0" * 64, 10, "tcp://127.0.0.1:5000"),
    Want(("sha256-" + "1" * 64, -1, "x.tgz", "https://example.org/x.tgz", "call", "tar")),
    Fetched("b3-" + "0" * 64, "manager:5000", "ok", 10),
    Holdings("tcp://127.0.0.1:5001", ("b3-" + "0" * 64,), ()),
]


def decodes_or_refuses(frames) -> None:
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    assert type(msg) in MESSAGES.values()


def test_every_message_type_round_trips():
    assert {type(m) for m in VALID} == set(MESSAGES.values())
    for msg in VALID:
        assert decode(encode(msg)) == msg


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=4))
def test_random_frames_are_refused(frames):
    decodes_or_refuses(frames)


@FUZZ
@given(st.binary(max_size=300))
def test_random_batches_are_refused(payload):
    try:
        entries = decode_batch(payload)
    except ProtocolError:
        return
    assert all(type(e) is tuple and len(e) == 4 for e in entries)


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@FUZZ
@given(st.sampled_from(sorted(MESSAGES)), st.lists(plain, max_size=9), st.lists(st.binary(max_size=30), max_size=2))
def test_well_formed_envelopes_with_random_fields_are_checked(tag, fields, extra):
    """Valid pickles of plain values with a real tag: the field checks must hold."""
    frames = [pickle.dumps((tag, *fields), 5), *extra]
    decodes_or_refuses(frames)


def mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
    if not data:
        return draw(st.binary(max_size=10))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 8)):]
    if kind == "truncate":
        return data[:at]
    return data[:at] + draw(st.sampled_from(VALID_ENVELOPES))[at:]


VALID_ENVELOPES = [encode(m)[0] for m in VALID]


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_frames_are_refused_or_decoded(msg, data):
    frames = encode(msg)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(frames) - 1))
        frames[index] = mutate(frames[index], data.draw)
    decodes_or_refuses(frames)
    if isinstance(msg, (Calls, Results)) and len(frames) == 2:
        try:
            decode_batch(frames[1])
        except ProtocolError:
            pass


@FUZZ
@given(st.lists(st.sampled_from(VALID), max_size=4), st.data())
def test_stream_decoder_never_raises_anything_else(messages, data):
    stream = b"".join(bytes(b) for msg in messages for b in pack_stream(encode(msg)))
    if data.draw(st.booleans()):
        stream = mutate(stream, data.draw)
    decoder = StreamDecoder(max_message_bytes=1 << 16)
    cut = data.draw(st.integers(0, len(stream)))
    try:
        for chunk in (stream[:cut], stream[cut:]):
            for frames in decoder.feed(chunk):
                decodes_or_refuses(frames)
    except ProtocolError:
        pass


# --- pickles that would run code --------------------------------------------------


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def code_running_pickles(marker: str) -> list[bytes]:
    command = f"touch {marker}"
    return [
        pickle.dumps(RunsShell(command), protocol)
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1)
    ] + [
        b"cos\nsystem\n(S'" + command.encode() + b"'\ntR.",  # protocol 0, GLOBAL + REDUCE
        b"(S'" + command.encode() + b"'\nios\nsystem\n.",  # INST
        pickle.dumps(("calls", RunsShell(command))),  # hidden inside an envelope
        b"\x80\x02\x82\x01.",  # EXT1: the copyreg extension registry
        b"\x80\x02X\x01\x00\x00\x00x\x94Q.",  # BINPERSID: persistent ids
    ]


def test_a_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "ran"
    for data in code_running_pickles(str(marker)):
        with pytest.raises(ProtocolError):
            safe_loads(data)
        with pytest.raises(ProtocolError):
            decode([data])
        with pytest.raises(ProtocolError):
            decode_batch(data)
    assert decode_batch(encode_batch([(1, 0, b"", 0.0)])) == [(1, 0, b"", 0.0)]  # plain is fine
    assert not marker.exists()
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in
               pickletools.genops(code_running_pickles(str(marker))[2]))


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                min_size=1, max_size=30)


@FUZZ
@given(names, names, st.sampled_from([b"c", b"\x93"]))
def test_no_global_is_ever_resolved(module, name, opcode):
    """GLOBAL ("c") and STACK_GLOBAL: even builtins and this test's own names are refused."""
    if opcode == b"c":
        data = b"c" + module.encode() + b"\n" + name.encode() + b"\n."
    else:  # BINUNICODE module, BINUNICODE name, STACK_GLOBAL
        data = b"\x80\x04" + b"".join(
            b"X" + struct.pack("<I", len(text.encode())) + text.encode() for text in (module, name)
        ) + b"\x93."
    with pytest.raises(ProtocolError, match="refused global"):
        safe_loads(data)
    for module, name in (("builtins", "eval"), ("os", "system"), (__name__, "RunsShell")):
        with pytest.raises(ProtocolError, match="refused global"):
            safe_loads(b"c" + module.encode() + b"\n" + name.encode() + b"\n.")


# --- validation beyond types ------------------------------------------------------


@pytest.mark.parametrize("envelope", [
    ("register", PROTOCOL_VERSION, "w", "h", 1, float("nan"), 1, "py"),
    ("register", PROTOCOL_VERSION, "w", "h", 1, float("inf"), 1, "py"),
    ("register", PROTOCOL_VERSION, "w", "h", -1, 1.0, 1, "py"),
    ("register", PROTOCOL_VERSION, "w", "h", 1, True, 1, "py"),
    ("calls", -1, 1),
    ("cancel", 1, ("a", 2)),
    ("welcome", "w", 1.0, 2.0),  # a version 1 Welcome
])
def test_out_of_range_fields_are_refused(envelope):
    frames = [pickle.dumps(envelope, 5)] + ([b""] if envelope[0] == "calls" else [])
    with pytest.raises(ProtocolError):
        decode(frames)


def test_deploy_options_must_be_plain_strings():
    good = Deploy(1, "lib", "fork", 1, 1.0, 0, {"env": {"A": "1"}}, b"")
    frames = encode(good)
    assert decode(frames) == good
    for options in ({"env": ["A"]}, {"env": {"A": 1}}, {"python": 3}):
        bad = encode(Deploy(1, "lib", "fork", 1, 1.0, 0, options, b""))
        with pytest.raises(ProtocolError):
            decode(bad)


@pytest.mark.parametrize("fields", [
    (PROTOCOL_VERSION + 1, "w", "h", 1, 1.0),
    (2, "w", "h", 1, 1.0, 1, "py"),  # the layout before max_message_bytes joined
    (1, "w", "h", 1, 1.0, 1, "py", 1 << 31, "new field"),
    (99, "a", "layout", "we", "do", "not", "know", 1, 2, 3),
])
def test_another_versions_register_raises_protocol_version_error(fields):
    """Whatever its layout, so the manager can answer it; same layout: the manager checks."""
    with pytest.raises(ProtocolVersionError, match="protocol version") as info:
        decode([pickle.dumps(("register", *fields), 5)])
    assert info.value.version == fields[0]
    same_layout = decode([pickle.dumps(("register", fields[0], "w", "h", 1, 1.0, 1, "py", 1 << 31), 5)])
    assert same_layout.version == fields[0]


# --- result batches under the size limit ------------------------------------------


def test_fit_calls_packs_batches_under_the_limit_and_sets_apart_calls_too_large_alone():
    entries = [(i, "f", b"a" * 30_000, None) for i in range(1, 11)] + [(11, "f", b"b" * 200_000, 1.0)]
    assert fit_calls(entries[:3], 1 << 20) == ([entries[:3]], [])  # the fast path: one batch
    batches, too_large = fit_calls(entries, 100_000)
    assert too_large == [(11, 200_000)]
    assert [e for batch in batches for e in batch] == entries[:10]  # the rest, in order
    assert len(batches) > 1
    for batch in batches:
        frames = encode(Calls(3, len(batch), encode_batch(batch)))
        assert sum(len(frame) for frame in frames) <= 100_000


def test_fit_results_leaves_small_batches_alone():
    msg = Results(1, 1, encode_batch([(1, 0, b"x" * 100, 0.1)]))
    frames = encode(msg)
    assert fit_results(msg, frames, 1 << 16) == [frames]


def test_fit_results_splits_big_batches_and_fails_only_oversized_results():
    limit = 1 << 20
    entries = [(1, 0, b"a" * 400_000, 0.1), (2, 0, b"b" * (2 << 20), 0.2),
               (3, 0, b"c" * 400_000, 0.3), (4, 0, b"d" * 400_000, 0.4), (5, 1, b"e", 0.5)]
    msg = Results(7, len(entries), encode_batch(entries))
    parts = fit_results(msg, encode(msg), limit)
    assert len(parts) >= 2
    seen = {}
    for frames in parts:
        assert all(len(frame) <= limit for frame in frames)
        part = decode(frames)
        assert isinstance(part, Results) and part.instance_id == 7
        batch = decode_batch(part.payload)
        assert part.count == len(batch)
        seen.update({entry[0]: entry for entry in batch})
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert seen[1] == entries[0] and seen[3] == entries[2] and seen[5] == entries[4]
    call_id, status, payload, duration = seen[2]
    assert status == CallStatus.RESULT_TOO_LARGE and duration == 0.2
    assert safe_loads(payload) == (2 << 20, limit)


# --- memo slots that would make the unpickler allocate gigabytes ------------------------


@pytest.mark.parametrize("frame", [
    # a mutated Calls envelope Hypothesis found: LONG_BINPUT to slot ~1.26e9 (34 s, GBs)
    b"\x80\x05\x95\x0f\x00\x00\x00\x00\x00\x00\x00\x8c\x05\x00callr\x94K\x03K\x01\x87\x94.",
    b"\x80\x05]r\x00\x00\x00\x7f.",  # LONG_BINPUT to slot 2**31 - 2**24
    b"\x80\x05]p1000000000\n.",  # PUT to slot 10**9, as text
    b"\x80\x05]p 1_000_000_000\n.",  # the same, as int() also reads it
])
def test_memo_puts_with_huge_slots_are_refused_at_once(frame):
    started = time.monotonic()
    with pytest.raises(ProtocolError):
        decode([frame])
    with pytest.raises(ProtocolError):
        safe_loads(frame)
    assert time.monotonic() - started < 1.0
