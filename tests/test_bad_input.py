"""Bad input end to end: garbage, malformed frames, other versions, oversized messages.

Each test throws something at a real manager (and its real local worker) on loopback, checks
it was refused, and then proves the manager and the worker still serve calls.
"""

from __future__ import annotations

import os
import pickle
import random
import socket

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

import serverless
from serverless.protocol import PROTOCOL_VERSION, Reject, Results, decode, encode, encode_batch

from conftest import FAST
from log_watch import watch_logs

pytestmark = pytest.mark.timeout(120)

LIMIT = 1 << 20


def add(x, y):
    return x + y


def blob(size):
    return b"x" * size


def length(data):
    return len(data)


def whoami():
    return os.getpid()


def raw_tcp(port: int, data: bytes) -> bool:
    """Write ``data`` to the port; True if the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(2.0)  # a bound on waiting for the close, not a synchronisation
            while sock.recv(65536):
                pass
            return True
        except ConnectionError:
            return True
        except socket.timeout:
            return False


def zmtp3_greeting(mechanism: bytes) -> bytes:
    return b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + mechanism.ljust(20, b"\0") + b"\0" * 32


def still_serving(m: serverless.Manager, worker_pid: int) -> None:
    assert list(m.map("bad", "add", range(50), range(50))) == [2 * i for i in range(50)]
    assert [w.pid for w in m.workers()] == [worker_pid]


def test_garbage_and_malformed_frames_are_dropped_and_calls_go_on(tmp_path):
    rng = random.Random(5)
    with watch_logs() as logs, serverless.Manager(local_cores=2, max_message_bytes=LIMIT,
                                                  log_dir=tmp_path, insecure=True, **FAST) as m:
        m.install(serverless.Library("bad", [add], mode="direct"))
        assert m.call("bad", "add", 1, 1).result(timeout=60) == 2
        worker_pid = m.workers()[0].pid
        port = int(m.address.rpartition(":")[2])

        # stray TCP clients: zmq refuses what is not ZMTP, or delivers old-ZMTP frames that
        # the decoder refuses (loopback without a secret speaks unauthenticated zmq)
        raw_tcp(port, bytes(rng.getrandbits(8) for _ in range(4096)))
        raw_tcp(port, b"GET / HTTP/1.1\r\nHost: manager\r\n\r\n")
        raw_tcp(port, b"\x05\x00abcd\x05\x00efgh")
        assert raw_tcp(port, zmtp3_greeting(b"BOGUS") + os.urandom(64))  # dropped at once
        logs.wait_for("dropped a malformed message")

        # a zmq client sending malformed messages, then another version's Register
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(f"tcp://{m.address}")
        for frames in (
            [b"garbage"],
            [os.urandom(100), os.urandom(10)],
            [pickle.dumps(("calls", "not", "ints"))],
            [b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR."],
            [pickle.dumps(("register", PROTOCOL_VERSION, "w", "h", 1, float("nan"), 1, "py"))],
            encode(Results(1, 1, encode_batch([(1, 0, pickle.dumps("forged"), 0.0)]))),
            [pickle.dumps(("register", 99, "future", "layout"))],
        ):
            dealer.send_multipart(frames)
        answers = []
        while not any("protocol version 99" in a.reason for a in answers):
            assert dealer.poll(30_000), "no answer from the manager"
            answers.append(decode(dealer.recv_multipart()))
        assert all(isinstance(a, Reject) for a in answers)  # the forged Results too
        dealer.close()
        context.term()
        assert not (tmp_path / "ran").exists()
        assert logs.count("refused global os.system") == 1
        still_serving(m, worker_pid)


def test_an_oversized_message_drops_only_that_connection(tmp_path):
    with serverless.Manager(local_cores=2, max_message_bytes=LIMIT, log_dir=tmp_path,
                            insecure=True, **FAST) as m:
        m.install(serverless.Library("bad", [add]))
        assert m.call("bad", "add", 1, 1).result(timeout=60) == 2
        worker_pid = m.workers()[0].pid
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.linger = 0
        monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        dealer.connect(f"tcp://{m.address}")
        dealer.send_multipart([b"y" * (2 * LIMIT)])
        events = []
        while zmq.EVENT_DISCONNECTED not in events:
            assert monitor.poll(30_000), f"not disconnected; events: {events}"
            events.append(parse_monitor_message(monitor.recv_multipart())["event"])
        dealer.disable_monitor()
        monitor.close()
        dealer.close()
        context.term()
        still_serving(m, worker_pid)


def test_garbage_to_a_manager_with_a_secret_is_refused_at_the_handshake(tmp_path):
    with watch_logs("serverless.transport") as logs, serverless.Manager(
            local_cores=2, secret="a-long-enough-secret-for-tests", log_dir=tmp_path, **FAST) as m:
        m.install(serverless.Library("bad", [add]))
        assert m.call("bad", "add", 1, 1).result(timeout=60) == 2
        worker_pid = m.workers()[0].pid
        port = int(m.address.rpartition(":")[2])
        assert raw_tcp(port, b"\x05\x00abcd" * 10)  # old ZMTP: refused when CURVE is on
        assert raw_tcp(port, zmtp3_greeting(b"NULL") + os.urandom(300))
        logs.wait_for("the manager refused a connection")
        still_serving(m, worker_pid)


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_a_result_over_the_limit_fails_only_its_call(tmp_path, mode):
    with serverless.Manager(local_cores=2, max_message_bytes=LIMIT, log_dir=tmp_path, **FAST) as m:
        m.install(serverless.Library("big", [blob, whoami], mode=mode, max_instances=1,
                                          slots=2 if mode == "fork" else 1))
        instance_pid = m.call("big", "whoami").result(timeout=60)
        worker_pid = m.workers()[0].pid
        with pytest.raises(serverless.ResultTooLarge, match="max_message_bytes") as info:
            m.call("big", "blob", 2 * LIMIT).result(timeout=60)
        assert isinstance(info.value, serverless.ResultNotSerializable)
        assert info.value.size >= 2 * LIMIT and info.value.limit == LIMIT
        assert "big.blob" in str(info.value)
        # results that fit alone but not together travel in several batches
        sizes = [LIMIT // 3] * 6
        assert [len(r) for r in m.map("big", "blob", sizes)] == sizes
        assert len(m.call("big", "blob", 1000).result(timeout=60)) == 1000
        if mode == "direct":  # the same process served every call
            assert m.call("big", "whoami").result(timeout=60) == instance_pid
        assert [w.pid for w in m.workers()] == [worker_pid]


def test_arguments_over_the_managers_limit_are_refused_by_call(tmp_path):
    with serverless.Manager(local_cores=2, max_message_bytes=LIMIT, log_dir=tmp_path, **FAST) as m:
        m.install(serverless.Library("args", [length]))
        with pytest.raises(serverless.ArgumentsTooLarge, match="max_message_bytes") as info:
            m.call("args", "length", b"x" * (2 * LIMIT))
        assert isinstance(info.value, serverless.ArgumentNotSerializable)
        assert info.value.size > 2 * LIMIT and info.value.limit == LIMIT
        # under the limit alone but not together: the calls travel in several batches
        assert list(m.map("args", "length", [b"y" * (LIMIT // 3)] * 6)) == [LIMIT // 3] * 6


def test_a_library_over_the_managers_limit_is_refused_by_install(tmp_path):
    weights = b"w" * (2 * LIMIT)

    def predict(x):
        return len(weights) + x

    with serverless.Manager(local_workers=0, max_message_bytes=LIMIT, log_dir=tmp_path) as m:
        with pytest.raises(serverless.SerializationError, match="setup"):
            m.install(serverless.Library("heavy", [predict]))
        assert m.libraries() == []


def test_a_worker_with_a_smaller_limit_fails_only_the_calls_it_cannot_take(tmp_path):
    from conftest import start_worker

    worker_limit = 200_000
    weights = b"w" * 300_000

    def predict(x):
        return len(weights) + x

    with serverless.Manager(local_workers=0, log_dir=tmp_path, **FAST) as m:
        m.install(serverless.Library("args", [length, whoami]))
        m.install(serverless.Library("heavy", [predict]))
        small = [m.call("args", "length", b"s" * 30_000) for _ in range(20)]  # 600 kB in all
        big = m.call("args", "length", b"b" * 300_000)
        worker = start_worker(m.address, "--cores", "1", "--memory", "512", "--workdir",
                              str(tmp_path / "worker"), "--max-message-bytes", str(worker_limit),
                              secret_file=m.secret_file)
        try:
            assert [f.result(timeout=60) for f in small] == [30_000] * 20
            with pytest.raises(serverless.ArgumentsTooLarge, match="max-message-bytes") as info:
                big.result(timeout=60)
            assert info.value.size >= 300_000 and info.value.limit == worker_limit
            # a library too large for that worker fails to deploy there, with the reason
            with pytest.raises(serverless.LibraryFailed, match="max-message-bytes"):
                m.call("heavy", "predict", 1).result(timeout=60)
            [info] = m.workers()  # still connected, still serving
            assert info.pid == worker.pid
            assert m.call("args", "length", b"after").result(timeout=60) == 5
        finally:
            m.shutdown()
            assert worker.wait(timeout=30) == 0
