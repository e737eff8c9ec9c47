"""Every field of every Calls and Results entry is checked when the batch is decoded.

A result entry with a duration of ``"x"``, NaN or ``10**400`` once reached the scheduler
and ended the manager's loop. Now :func:`batch_entries` refuses it with ProtocolError, the
manager drops that message (logged) and serves on: shown here with a real manager and a
hand-written worker that holds the secret (a trusted but buggy or hostile peer).
"""

from __future__ import annotations

import math
import pickle
import socket
import time

import pytest
import zmq

import serverless
from serverless.errors import ProtocolError
from serverless.protocol import (
    PROTOCOL_VERSION,
    Calls,
    Deploy,
    Heartbeat,
    InstanceReady,
    Register,
    Results,
    batch_entries,
    decode,
    encode,
    encode_batch,
)
from serverless.security import derive_keys, read_secret_file

from conftest import FAST
from log_watch import watch_logs

pytestmark = pytest.mark.timeout(120)

GOOD_RESULT = (1, 0, pickle.dumps(3), 0.25)
GOOD_CALL = (1, "add", pickle.dumps(((1, 2), {})), None)

BAD_RESULTS = [
    (1, 0, b"", "x"),  # duration not a number
    (1, 0, b"", math.nan),
    (1, 0, b"", math.inf),
    (1, 0, b"", 10**400),  # an int float() cannot hold
    (1, 0, b"", -1.0),
    (1, 0, b"", True),
    (1, 99, b"", 0.0),  # status not a CallStatus
    (1, -1, b"", 0.0),
    (1, 1.0, b"", 0.0),
    (1, "0", b"", 0.0),
    (1, 0, "text", 0.0),  # payload not bytes
    (1, 0, None, 0.0),
    (1, 0, (b"", 0), 0.0),  # out of band naming no buffer
    (1, 0, (b"", "1"), 0.0),
    (1, 0, (b"", 1, 2), 0.0),
    (-5, 0, b"", 0.0),  # call id
    ("1", 0, b"", 0.0),
    (1, 0, b""),  # arity
    [1, 0, b"", 0.0],
]

BAD_CALLS = [
    (1, 7, b"", None),  # function not a str
    (1, b"add", b"", None),
    (1, "add", "args", None),  # arguments not bytes
    (1, "add", (b"", -1), None),
    (1, "add", b"", 0),  # timeout not > 0
    (1, "add", b"", -2.0),
    (1, "add", b"", math.nan),
    (1, "add", b"", math.inf),
    (1, "add", b"", "5"),
    (1, "add", b"", 10**400),
    (-1, "add", b"", None),
]


@pytest.mark.parametrize("entry", BAD_RESULTS, ids=repr)
def test_a_bad_results_entry_is_refused_at_decode(entry):
    message = decode(encode(Results(3, 1, encode_batch([GOOD_RESULT, entry]))))
    with pytest.raises(ProtocolError, match="results"):
        batch_entries(message)


@pytest.mark.parametrize("entry", BAD_CALLS, ids=repr)
def test_a_bad_calls_entry_is_refused_at_decode(entry):
    message = decode(encode(Calls(3, 1, encode_batch([GOOD_CALL, entry]))))
    with pytest.raises(ProtocolError, match="calls"):
        batch_entries(message)


def test_good_entries_and_a_wrong_count_and_dangling_out_of_band_data():
    assert batch_entries(Results(3, 1, encode_batch([GOOD_RESULT]))) == [GOOD_RESULT]
    assert batch_entries(Calls(3, 2, encode_batch([GOOD_CALL, (2, "f", b"", 1)]))) \
        == [GOOD_CALL, (2, "f", b"", 1)]
    with pytest.raises(ProtocolError, match="count"):
        batch_entries(Results(3, 5, encode_batch([GOOD_RESULT])))
    with pytest.raises(ProtocolError, match="out-of-band"):
        batch_entries(Results(3, 1, encode_batch([(1, 0, (b"", 1), 0.0)])))


def add(x, y):
    return x + y


class FakeWorker:
    """A worker written by hand that holds the manager's secret."""

    def __init__(self, manager: serverless.Manager) -> None:
        keys = derive_keys(read_secret_file(manager.secret_file))
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.identity = b"fake-worker"
        self.sock.curve_serverkey = keys.server_public
        self.sock.curve_publickey = keys.client_public
        self.sock.curve_secretkey = keys.client_secret
        self.sock.connect(f"tcp://{manager.address}")
        self.send(Register(PROTOCOL_VERSION, "fake", socket.gethostname(), 1, 4.0, 4096,
                           "python", 1 << 26))

    def send(self, msg) -> None:
        self.sock.send_multipart(encode(msg))

    def send_frames(self, frames) -> None:
        self.sock.send_multipart(frames)

    def receive(self, kind):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.sock.poll(100):  # heartbeat meanwhile, as a worker does
                msg = decode(self.sock.recv_multipart())
                if isinstance(msg, kind):
                    return msg
            self.send(Heartbeat())
        raise AssertionError(f"no {kind.__name__} from the manager")

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def test_bad_result_entries_from_an_authenticated_worker_are_dropped_and_service_goes_on(tmp_path):
    with watch_logs("serverless.manager") as logs, serverless.Manager(
            local_workers=0, log_dir=tmp_path, **FAST) as m:
        m.install(serverless.Library("v", [add], mode="direct"))
        future = m.call("v", "add", 1, 2)
        fake = FakeWorker(m)
        try:
            deploy = fake.receive(Deploy)
            fake.send(InstanceReady(deploy.instance_id, 1))
            calls = batch_entries(fake.receive(Calls))
            call_id = calls[0][0]
            for duration in ("x", math.nan, 10**400, -1.0):
                bad = (call_id, 0, pickle.dumps("forged"), duration)
                fake.send(Results(deploy.instance_id, 1, encode_batch([bad])))
            bad_status = (call_id, 42, b"", 0.0)
            fake.send(Results(deploy.instance_id, 1, encode_batch([bad_status])))
            logs.wait_for("dropped a bad message", count=5)
            assert not future.done()
            fake.send(Results(deploy.instance_id, 1,
                              encode_batch([(call_id, 0, pickle.dumps(3), 0.01)])))
            assert future.result(timeout=60) == 3
            # the loop still serves: a second call goes to the same worker and settles
            second = m.call("v", "add", 2, 2)
            calls = batch_entries(fake.receive(Calls))
            fake.send(Results(deploy.instance_id, 1,
                              encode_batch([(calls[0][0], 0, pickle.dumps(4), 0.01)])))
            assert second.result(timeout=60) == 4
        finally:
            fake.close()
