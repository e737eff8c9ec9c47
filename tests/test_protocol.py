"""The wire protocol on its own: every message round-trips, malformed input is refused."""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import typing

import pytest

from serverless import protocol
from serverless.errors import ProtocolError
from serverless.protocol import (
    BIG_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    Calls,
    Heartbeat,
    Register,
    Results,
    StreamDecoder,
    batch_entries,
    batch_message,
    calls_messages,
    decode,
    decode_batch,
    encode,
    encode_batch,
    fit_calls,
    fit_results,
    pack_stream,
    results_messages,
)

pytestmark = pytest.mark.timeout(30)

_SAMPLES = {int: 7, float: 1.5, str: "text", bytes: b"payload", dict: {"k": 1}, tuple: (1, 2),
            bool: True, list: [1]}


def sample(cls: type) -> protocol.Message:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        base = typing.get_origin(hint) or hint
        if base in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            base = typing.get_args(hint)[0]
        values[f.name] = _SAMPLES.get(base, None)
    spec = ("b3-" + "0" * 64, 10, "a.csv", "", "workflow", "")  # a FileSpec (serverless.data)
    values.update({"gate": {"files": (spec,)}, "want": {"file": spec},
                   "holdings": {"added": (spec[0],), "removed": ()}}.get(cls.TAG, {}))
    if "buffers" in values:  # frames of their own after the payload
        values["buffers"] = (b"first buffer", b"second")
    values.update(_TYPED_SAMPLES.get(cls.TAG, {}))
    return cls(**values)


_TYPED_SAMPLES = {  # fields whose items are checked, not only their container
    "imports-learned": {"learned": ("numpy.random",), "rejected": (("x", "failed: ..."),)},
}


@pytest.mark.parametrize("tag", sorted(MESSAGES))
def test_every_message_round_trips(tag):
    message = sample(MESSAGES[tag])
    frames = encode(message)
    back = decode([bytes(f) for f in frames])
    assert type(back) is type(message)
    for f in dataclasses.fields(message):
        assert bytes(getattr(back, f.name)) == bytes(getattr(message, f.name)) \
            if f.name == "payload" else getattr(back, f.name) == getattr(message, f.name)


def test_out_of_band_arguments_travel_as_frames_of_their_own():
    big, other = os.urandom(100_000), os.urandom(70_000)
    entries = [(1, "f", b"inband", None), (2, "g", (b"pickle-2", (big, other)), 1.5),
               (3, "f", (b"pickle-3", (bytearray(b"x" * 65536),)), None)]
    message = batch_message(Calls, 9, entries)
    frames = encode(message)
    assert len(frames) == 2 + 3 and bytes(frames[2]) == big  # envelope, payload, buffers
    assert len(frames[1]) < 1000  # the batch pickle does not carry the buffers
    back = batch_entries(decode([bytes(f) for f in frames]))
    assert back[0] == entries[0]
    assert back[1][2][0] == b"pickle-2" and list(back[1][2][1]) == [big, other]
    assert all(type(b) is bytearray for _, _, (_, bufs), _ in back[1:] for b in bufs)  # writable
    assert batch_message(Calls, 9, entries[:1]).buffers == ()  # in-band calls: no extra frame


@pytest.mark.parametrize("wire", [
    [(1, "f", (b"p", 2), None)],  # names more buffers than the message has
    [(1, "f", (b"p", 0), None)],
    [(1, "f", (b"p", "1"), None)],
    [(1, "f", b"inband", None)],  # a buffer nobody names
])
def test_calls_whose_buffers_do_not_match_are_refused(wire):
    message = Calls(1, len(wire), pickle.dumps(wire, 5), (b"one buffer",))
    with pytest.raises(ProtocolError):
        batch_entries(decode(encode(message)))


def test_calls_messages_one_message_when_all_fits_several_when_not():
    small = [(i, "f", b"a" * 100, None) for i in range(5)]
    [message], too_large = calls_messages(3, small, 1 << 20)
    assert not too_large and message.buffers == () and decode_batch(message.payload) == small
    mixed = small + [(6, "f", (b"p", (b"b" * 70_000,)), None), (7, "f", b"c" * 300_000, None)]
    messages, too_large = calls_messages(3, mixed, 200_000)
    assert too_large == [(7, 300_000)]
    back = [entry for message in messages for entry in batch_entries(message)]
    assert [entry[0] for entry in back] == [0, 1, 2, 3, 4, 6]
    assert back[-1][2] == (b"p", (bytearray(b"b" * 70_000),))


def test_results_out_of_band_split_by_buffer_count_and_by_size_in_fit_results():
    buffer = b"r" * 70_000
    entries = [(i, 0, (b"p%d" % i, (buffer,) * 200), 0.1) for i in range(7)] + [(9, 0, b"ok", 0.2)]
    messages = results_messages(4, entries)
    assert [len(m.buffers) for m in messages] == [1000, 400]  # at most 1,024 a message
    back = [e for m in messages for e in batch_entries(decode([bytes(f) for f in encode(m)]))]
    assert [e[0] for e in back] == [0, 1, 2, 3, 4, 5, 6, 9] and back[-1] == entries[-1]
    assert back[3][2] == (b"p3", (bytearray(buffer),) * 200)
    # a batch over the manager's limit is split, its buffers with their entries
    small = [(i, 0, (b"q", (b"s" * 100_000,)), 0.1) for i in range(5)]
    [message] = results_messages(4, small)
    parts = fit_results(message, encode(message), 300_000)
    assert len(parts) > 1 and all(sum(len(f) for f in part) <= 300_000 for part in parts)
    assert sorted(e[0] for part in parts for e in batch_entries(decode(part))) == [0, 1, 2, 3, 4]


def test_fit_calls_counts_out_of_band_buffers_in_size_and_number():
    buffer = b"z" * 70_000
    entries = [(i, "f", (b"p", (buffer,) * 200), None) for i in range(12)]
    batches, too_large = fit_calls(entries, 1 << 31)
    assert not too_large and [len(b) for b in batches] == [5, 5, 2]  # at most 1,024 buffers
    batches, too_large = fit_calls(entries[:1] + [(99, "f", (b"p", (b"y" * 200_000,)), None)], 150_000)
    assert too_large == [(0, 200 * 70_000 + 1), (99, 200_001)]


def test_register_carries_the_protocol_version():
    frames = encode(Register(PROTOCOL_VERSION, "w", "host", 1, 2.0, 1024, "3.11", 1 << 31))
    assert decode(frames).version == PROTOCOL_VERSION


def test_tags_are_unique_and_registered():
    assert len({cls.TAG for cls in MESSAGES.values()}) == len(MESSAGES)
    assert all(MESSAGES[cls.TAG] is cls for cls in MESSAGES.values())


@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [b"not a pickle"],
    [pickle.dumps(["calls", 1, 1])],                    # not a tuple
    [pickle.dumps(("no-such-tag",))],
    [pickle.dumps(("calls", 1))],                       # missing a field
    [pickle.dumps(("calls", "1", 1)), b""],             # wrong field type
    [pickle.dumps(("calls", True, 1)), b""],            # a bool is not an int here
    [pickle.dumps(("calls", 1, 1))],                    # missing its payload frame
    [pickle.dumps(("heartbeat",)), b"extra"],           # a frame too many
])
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_an_envelope_that_would_run_code_is_refused():
    with pytest.raises(ProtocolError):
        decode([pickle.dumps(("heartbeat", _RunsCode()))])
    with pytest.raises(ProtocolError):
        decode_batch(pickle.dumps([(1, _RunsCode(), b"", None)]))


def test_batches_round_trip_and_are_checked_for_shape():
    entries = [(1, "add", b"args", None), (2, "add", b"args", 5.0)]
    assert decode_batch(encode_batch(entries)) == entries
    for bad in [{"not": "a list"}, [(1, 2, 3)], [("id", "f", b"", None)], [[1, "f", b"", None]]]:
        with pytest.raises(ProtocolError):
            decode_batch(pickle.dumps(bad))


def test_payload_frames_are_passed_through_untouched():
    payload = os.urandom(1000)
    message = decode(encode(Calls(3, 1, payload)))
    assert bytes(message.payload) == payload and message.instance_id == 3


def _chunks(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_stream_framing_survives_any_split(chunk):
    messages = [encode(Heartbeat()), encode(Results(1, 2, b"x" * 5000)), encode(Heartbeat())]
    stream = b"".join(bytes(part) for m in messages for part in pack_stream(m))
    decoder = StreamDecoder()
    out = [frames for piece in _chunks(stream, chunk) for frames in decoder.feed(piece)]
    assert [type(decode(frames)) for frames in out] == [Heartbeat, Results, Heartbeat]
    assert bytes(decode(out[1]).payload) == b"x" * 5000


def _big_stream() -> tuple[bytes, bytes]:
    big = os.urandom(3 * BIG_FRAME + 123)
    messages = [encode(Heartbeat()), encode(Calls(4, 1, big)), encode(Results(1, 2, b"r" * 70)),
                encode(Calls(5, 1, big[:BIG_FRAME])), encode(Heartbeat())]
    return b"".join(bytes(part) for m in messages for part in pack_stream(m)), big


@pytest.mark.parametrize("chunk", [1000, 65536, 1 << 22])
def test_big_frames_are_filled_in_place_whatever_the_split(chunk):
    stream, big = _big_stream()
    decoder = StreamDecoder()
    out = [frames for piece in _chunks(stream, chunk) for frames in decoder.feed(piece)]
    assert [type(decode(frames)) for frames in out] == [Heartbeat, Calls, Results, Calls, Heartbeat]
    assert out[1][1] == big
    if chunk < BIG_FRAME:  # arriving in pieces, it was read into a buffer of its own
        assert isinstance(out[1][1], bytearray)
    assert out[3][1] == big[:BIG_FRAME]
    assert bytes(decode(out[2]).payload) == b"r" * 70


def test_receive_reads_big_frames_from_a_socket_straight_into_their_buffer():
    stream, big = _big_stream()
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.setblocking(False)
        reader.setblocking(False)
        decoder, out, sent = StreamDecoder(), [], 0
        while len(out) < 5:
            if sent < len(stream):
                try:
                    sent += writer.send(stream[sent:sent + (1 << 20)])
                except BlockingIOError:
                    pass
            try:
                messages = decoder.receive(reader)
            except BlockingIOError:
                continue
            assert messages is not None
            out += messages
        assert out[1][1] == big and out[3][1] == big[:BIG_FRAME]
        writer.close()
        assert decoder.receive(reader) is None  # EOF


def test_stream_decoder_refuses_frames_over_its_limit():
    decoder = StreamDecoder(max_message_bytes=100)
    stream = b"".join(bytes(p) for p in pack_stream([b"x" * 101]))
    with pytest.raises(ProtocolError, match="over the limit"):
        list(decoder.feed(stream))


def test_stream_decoder_refuses_absurd_frame_counts():
    with pytest.raises(ProtocolError):
        list(StreamDecoder().feed((1 << 30).to_bytes(4, "big")))


def test_an_envelope_over_the_bound_is_refused_before_it_is_unpickled():
    import tracemalloc

    from serverless.protocol import MAX_ENVELOPE_BYTES

    lists = b"\x80\x05]" + b"]a" * (MAX_ENVELOPE_BYTES // 2 + 10) + b"."  # a million lists
    assert len(lists) > MAX_ENVELOPE_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="envelope of .* over"):
            decode([lists])
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # nothing was unpickled
    finally:
        tracemalloc.stop()
    small = b"\x80\x05]" + b"]a" * 1000 + b"."
    with pytest.raises(ProtocolError, match="tagged tuple"):  # under the bound: decoded, refused
        decode([small])
