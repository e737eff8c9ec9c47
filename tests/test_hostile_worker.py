"""A registered worker that misbehaves costs only itself: the manager's side of issue 11 §2.

A fake worker speaking the protocol over a real zmq socket (or a real worker with a fault
injected where the manager handles its message) sends what no correct worker would: a
message that raises while handled, a report on another worker's instance, absurd
resource claims, an identity that is not UTF-8, or nothing at all for a call it holds.
The manager drops it (or refuses it), retries its calls, and keeps serving. These
managers run with ``insecure=True`` so that the fake worker needs no keys: what is tested
is what the manager does with a worker it has admitted (docs/security.md covers admission).
"""

from __future__ import annotations

import os
import pickle
import signal
import time

import psutil
import pytest
import zmq

import serverless
from serverless.protocol import (
    PROTOCOL_VERSION,
    Calls,
    Deploy,
    Heartbeat,
    InstanceReady,
    Register,
    Reject,
    Results,
    Shutdown,
    Welcome,
    decode,
    encode,
    encode_batch,
)

from conftest import FAST, start_worker
from faultkit import libraries_of, wait_until
from log_watch import watch_logs

pytestmark = pytest.mark.timeout(120)


def add(x, y):
    return x + y


def whoami():
    return os.getpid()


def wait_for_file(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


class FakeWorker:
    """A worker that speaks the protocol as the test says, on a real DEALER socket."""

    def __init__(self, address: str, identity: bytes, cores: float = 1.0,
                 memory_mb: int = 1024) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(f"tcp://{address}")
        self.send(Register(PROTOCOL_VERSION, "fake", "fake-host", os.getpid(), cores, memory_mb,
                           "python", 1 << 24))

    def send(self, msg) -> None:
        self.sock.send_multipart(encode(msg))

    def expect(self, kind, timeout: float = 30.0):
        """The next message of type ``kind`` (heartbeating meanwhile, as workers do)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.send(Heartbeat())
            if self.sock.poll(100):
                msg = decode(self.sock.recv_multipart())
                if isinstance(msg, kind):
                    return msg
        raise AssertionError(f"no {kind.__name__} within {timeout} s")

    def close(self) -> None:
        self.sock.close()
        self.context.term()


@pytest.mark.parametrize("duration", ["x", float("nan"), 10**400, -1.0, None])
def test_a_malformed_result_entry_does_not_stop_the_manager(tmp_path, duration) -> None:
    """Reproduced by the review: a Results entry with a duration of "x", NaN or 10**400
    raised in the scheduler and ended the loop; the call never settled, nor did later ones.
    Now the entry is refused (at decode) or its duration ignored: either way the call ends
    and the manager goes on serving."""
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs",
                            insecure=True, **FAST) as m:
        m.install(serverless.Library("adder", [add], mode="direct"))
        future = m.call("adder", "add", 2, 3)
        fake = FakeWorker(m.address, b"fake-1")
        deploy = fake.expect(Deploy)
        fake.send(InstanceReady(deploy.instance_id, os.getpid()))
        fake.expect(Calls)
        fake.send(Results(deploy.instance_id, 1, _bad_batch(future.call_id, duration)))
        fake.close()  # silent from now on, whatever the manager made of it
        worker = start_worker(m.address, "--cores", "1", "--insecure",
                              "--workdir", str(tmp_path / "w"))
        try:
            # the registered worker's answer, or, if it was refused, the retry's
            assert future.result(timeout=60) in (99, 5)
            assert m._loop.thread.is_alive()
            assert m.call("adder", "add", 1, 1).result(timeout=60) == 2
        finally:
            m.shutdown()
            assert worker.wait(timeout=30) == 0


def _bad_batch(call_id: int, duration) -> bytes:
    try:
        return encode_batch([(call_id, 0, pickle.dumps(99), duration)])
    except Exception:  # the encoder checks its fields: build the entry by hand
        return pickle.dumps([(call_id, 0, pickle.dumps(99), duration)])


def test_an_exception_while_handling_a_workers_message_drops_only_that_worker(tmp_path) -> None:
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs",
                            insecure=True, **FAST) as m:
        m.install(serverless.Library("who", [whoami], mode="direct"))
        first = start_worker(m.address, "--cores", "1", "--insecure",
                             "--workdir", str(tmp_path / "a"))
        wait_until(lambda: len(m.workers()) == 1, what="worker A")
        scheduler = m._loop.scheduler
        original = scheduler.instance_ready

        def fails_once(instance_id):  # fault injection: a bug met handling A's message
            scheduler.instance_ready = original
            raise RuntimeError("a bug in handling InstanceReady")

        scheduler.instance_ready = fails_once
        future = m.call("who", "whoami")
        assert first.wait(timeout=60) == 0  # dropped: told to stop, and it did
        second = start_worker(m.address, "--cores", "1", "--insecure",
                              "--workdir", str(tmp_path / "b"))
        try:
            pid = future.result(timeout=60)  # retried on B
            assert pid in {p.pid for p in psutil.Process(second.pid).children(recursive=True)}
            assert m._loop.thread.is_alive()
        finally:
            m.shutdown()
            assert second.wait(timeout=30) == 0


def test_a_worker_reporting_on_another_workers_instance_is_refused_and_dropped(tmp_path) -> None:
    release = tmp_path / "release"
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs",
                            insecure=True, **FAST) as m:
        m.install(serverless.Library("slow", [wait_for_file], mode="direct"))
        future = m.call("slow", "wait_for_file", str(release))
        wait_until(lambda: any(i.outstanding for i in m._loop.scheduler.instances.values()),
                   what="the call sent to the local worker's instance")
        [instance_id] = list(m._loop.scheduler.instances)
        fake = FakeWorker(m.address, b"fake-2")
        fake.expect(Welcome)
        fake.send(InstanceReady(instance_id, os.getpid()))
        fake.send(Results(instance_id, 1, encode_batch(
            [(future.call_id, 0, pickle.dumps("forged"), 0.001)])))
        fake.expect(Shutdown)  # dropped
        wait_until(lambda: len(m.workers()) == 1, what="the fake worker gone")
        assert not future.done()
        fake.close()
        release.write_text("")
        assert future.result(timeout=60) == "released"


@pytest.mark.parametrize(("cores", "memory_mb"), [
    (1e9, 1024), (float("inf"), 1024), (float("nan"), 1024), (0.0, 1024), (-1.0, 1024),
    (4.0, 2**60), (4.0, -5),
])
def test_absurd_resource_claims_are_rejected_at_registration(tmp_path, cores, memory_mb) -> None:
    with watch_logs("serverless.manager") as logs, \
            serverless.Manager(local_workers=0, log_dir=tmp_path / "logs",
                            insecure=True, **FAST) as m:
        fake = FakeWorker(m.address, b"greedy", cores=cores, memory_mb=memory_mb)
        try:  # rejected by the manager, or (inf, nan) refused when decoded: never welcomed
            end = time.monotonic() + 30
            while not logs.count("b'greedy'"):
                assert time.monotonic() < end, "the claim was neither rejected nor refused"
                if fake.sock.poll(50):
                    answer = decode(fake.sock.recv_multipart())
                    assert isinstance(answer, Reject), answer
                    assert "cores" in answer.reason or "memory" in answer.reason
                    break
            assert m.workers() == []
        finally:
            fake.close()
        sane = FakeWorker(m.address, b"sane", cores=4096.0, memory_mb=2**20)
        try:
            sane.expect(Welcome)
            assert [w.cores for w in m.workers()] == [4096.0]
        finally:
            sane.close()


def test_workers_are_keyed_by_their_raw_identity_bytes(tmp_path) -> None:
    identity = b"\xff\xfe not utf-8 \x00\x80"
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs",
                            insecure=True, **FAST) as m:
        m.install(serverless.Library("adder", [add], mode="direct"))
        future = m.call("adder", "add", 20, 22)
        fake = FakeWorker(m.address, identity)
        try:
            deploy = fake.expect(Deploy)  # reached at its own identity
            assert [w.worker_id for w in m.workers()] == [identity]
            fake.send(InstanceReady(deploy.instance_id, os.getpid()))
            calls = fake.expect(Calls)
            assert calls.instance_id == deploy.instance_id
            fake.send(Results(deploy.instance_id, 1, encode_batch(
                [(future.call_id, 0, pickle.dumps(42), 0.001)])))
            assert future.result(timeout=30) == 42
        finally:
            fake.close()


def sleeps_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(2)
    return os.getpid()


def test_an_instance_that_never_answers_is_written_off_after_timeout_plus_grace(tmp_path) -> None:
    """The library process is stopped (SIGSTOP): its worker heartbeats on, but nothing comes
    back for the call; the manager's deadline (timeout + call_grace) retries it elsewhere."""
    marker = str(tmp_path / "started")
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", call_grace=1.0,
                            **FAST) as m:
        m.install(serverless.Library("once", [sleeps_once], mode="direct", timeout=3))
        future = m.call("once", "sleeps_once", marker)
        wait_until(lambda: os.path.exists(marker), what="the call running")
        [worker] = m.workers()
        [library] = libraries_of(worker.pid)
        library.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            pid = future.result(timeout=60)
            assert pid != library.pid  # a new instance ran it
            assert time.monotonic() - started < 30
            assert [w.pid for w in m.workers()] == [worker.pid]  # the worker stays
            library.wait(timeout=30)  # the stopped instance was killed
        finally:
            try:
                library.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
