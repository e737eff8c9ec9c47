"""Microbenchmarks of the per-call pieces of the hot path (issue 3), with pytest-benchmark.

Each one times one piece in isolation, with no sockets and no processes, and asserts its
result is right, so that in CI (``--benchmark-disable``: every benchmark runs once, as a
plain test) they are ordinary tests. To time them::

    pytest tests/test_microbench.py --benchmark-enable --benchmark-columns=min,median,ops

The pieces, in the order a call meets them: the manager pickles the arguments, the
scheduler takes the call and answers with a SendCalls action, the loop encodes a Calls
batch (the agent and the library decode it), the library encodes the Results batch (the
manager decodes it), and the manager turns the result entry into the future's value.
"""

from __future__ import annotations

import pytest

import serverless
from serverless.manager.future import CallFuture
from serverless.manager.loop import resolve
from serverless.manager.records import CallRecord, CallsFinished, SendCalls
from serverless.manager.scheduler import Scheduler
from serverless.protocol import (
    CallStatus,
    Calls,
    Results,
    decode,
    decode_batch,
    encode,
    encode_batch,
)
from serverless.serialization import dumps_args, dumps_result, loads_args

BATCH = 256  # calls per Calls/Results message, a typical batch in direct mode


def add(x: int, y: int) -> int:
    return x + y


def _call(call_id: int) -> CallRecord:
    future = CallFuture(call_id, "lib", "add", None)
    record = CallRecord(call_id, "lib", "add", dumps_args((call_id, 1), {}), None, future)
    future.record = record
    return record


@pytest.mark.timeout(60)
def test_argument_encoding(benchmark) -> None:
    blob = benchmark(dumps_args, (1, 2.5, "three"), {"four": [4]})
    assert loads_args(blob) == ((1, 2.5, "three"), {"four": [4]})


@pytest.mark.timeout(60)
def test_protocol_calls_batch_round_trip(benchmark) -> None:
    entries = [(i, "add", dumps_args((i, 1), {}), None) for i in range(BATCH)]

    def round_trip() -> list[tuple]:
        frames = encode(Calls(7, len(entries), encode_batch(entries)))
        msg = decode(frames)
        assert isinstance(msg, Calls) and msg.instance_id == 7
        return decode_batch(msg.payload)

    assert benchmark(round_trip) == entries


@pytest.mark.timeout(60)
def test_protocol_results_batch_round_trip(benchmark) -> None:
    entries = [(i, int(CallStatus.OK), dumps_result(i + 1), 1e-6) for i in range(BATCH)]

    def round_trip() -> list[tuple]:
        msg = decode(encode(Results(7, len(entries), encode_batch(entries))))
        assert isinstance(msg, Results) and msg.count == BATCH
        return decode_batch(msg.payload)

    assert benchmark(round_trip) == entries


def _scheduler_with_ready_instance() -> tuple[Scheduler, int]:
    scheduler = Scheduler()
    library = serverless.Library("lib", [add], mode="direct")
    scheduler.install("lib", library, b"")
    actions = scheduler.worker_joined("w1", cores=2.0, memory_mb=4096)
    assert actions == []  # nothing queued: nothing deployed yet
    [deploy] = scheduler.submit([_call(0)])
    scheduler.instance_ready(deploy.instance_id)  # the queued call goes out here
    scheduler.results(deploy.instance_id, [(0, int(CallStatus.OK), b"", 1e-6)])
    return scheduler, deploy.instance_id


@pytest.mark.timeout(60)
def test_scheduling_one_call(benchmark) -> None:
    scheduler, instance_id = _scheduler_with_ready_instance()
    call_ids = iter(range(1, 10**9))

    def one_call() -> tuple[list, list]:
        call = _call(next(call_ids))
        sent = scheduler.submit([call])
        finished = scheduler.results(instance_id, [(call.call_id, 0, b"", 1e-6)])
        return sent, finished

    sent, finished = benchmark(one_call)
    assert [type(a) for a in sent] == [SendCalls]
    assert sent[0].instance_id == instance_id and len(sent[0].calls) == 1
    assert isinstance(finished[0], CallsFinished) and len(finished[0].results) == 1
    assert not scheduler.instances[instance_id].outstanding


@pytest.mark.timeout(60)
def test_result_decoding_settles_the_future(benchmark) -> None:
    payload = dumps_result({"answer": 42})
    calls: list[CallRecord] = []

    def new_call() -> tuple[tuple, dict]:
        calls.append(_call(len(calls)))
        return (calls[-1], int(CallStatus.OK), payload), {}

    benchmark.pedantic(resolve, setup=new_call, rounds=2000 if benchmark.enabled else 1)
    assert calls and all(c.future.done() and c.future.result() == {"answer": 42} for c in calls)
