"""Secrets, CURVE and who may talk to the manager: real managers and workers on loopback."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

import serverless
from serverless.protocol import PROTOCOL_VERSION, Heartbeat, Register, Results, encode, encode_batch
from serverless.security import (
    SECRET_FILE_ENV,
    CurveKeys,
    derive_keys,
    is_loopback,
    read_secret_file,
    write_secret_file,
)

from conftest import FAST, assert_all_exited, descendants, tree_of
from log_watch import watch_logs

pytestmark = pytest.mark.timeout(120)

SECRET = "correct-horse-battery-staple-" + "7f3a9c"  # distinctive, to search for
WRONG = "a-different-secret-of-enough-length"


def add(x, y):
    return x + y


def read_fifo(path):
    with open(path) as f:  # blocks until the test writes
        return f.read()


def cli_worker(address: str, *args: str, secret_file: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != SECRET_FILE_ENV}
    if secret_file is not None:
        env[SECRET_FILE_ENV] = str(secret_file)
    return subprocess.Popen([sys.executable, "-m", "serverless.worker", address, "--cores", "1",
                             "--memory", "512", "--connect-timeout", "20", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def intruder_sends(address: str, keys: CurveKeys | None, messages: list[list[bytes]],
                   identity: bytes | None = None) -> int:
    """A raw DEALER sends ``messages``; returns the first handshake event it sees."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 2000  # if the handshake succeeds, the messages do go out
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.client_public
        sock.curve_secretkey = keys.client_secret
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED)
    try:
        sock.connect(f"tcp://{address}")
        for frames in messages:
            try:  # a refused handshake may already have closed the pipe: never block
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass
        assert monitor.poll(30_000), "no handshake event"
        return parse_monitor_message(monitor.recv_multipart())["event"]
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close()
        context.term()


def random_client_keys(server: CurveKeys) -> CurveKeys:
    """Keys of someone who knows the server's public key but not the secret."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(server.server_public, b"", public, secret)


# --- the rules ----------------------------------------------------------------------


def test_binding_beyond_loopback_without_a_secret_is_refused():
    for host in ("0.0.0.0", "::", "*", "10.1.2.3", "eth0"):
        with pytest.raises(serverless.SecurityError, match="without a secret.*secret_file"):
            serverless.Manager(host, local_workers=0, insecure=True)
    assert not descendants()


def test_contradictory_secret_options_are_refused():
    for options in ({"secret": False}, {"insecure": True, "secret": SECRET},
                    {"insecure": True, "secret_file": "/nonexistent"}):
        with pytest.raises(ValueError):
            serverless.Manager(local_workers=0, **options)


def test_loopback_is_recognised():
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.1")


def test_keys_are_derived_deterministically_from_the_secret():
    keys = derive_keys(SECRET)
    assert keys == derive_keys(SECRET.encode() + b"\n")  # a file's newline is ignored
    assert keys != derive_keys(WRONG)
    assert keys.server_public != keys.client_public
    assert zmq.curve_public(keys.server_secret) == keys.server_public
    assert SECRET not in repr(keys) and keys.server_secret.decode() not in repr(keys)
    with pytest.raises(serverless.SecurityError, match="too short"):
        derive_keys("short")


def test_secret_files_are_private(tmp_path):
    path = write_secret_file(tmp_path / "s", SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path) == SECRET.encode()
    path.chmod(0o640)
    with pytest.raises(serverless.SecurityError, match="chmod 600"):
        read_secret_file(path)
    with pytest.raises(FileExistsError):  # never overwrites
        write_secret_file(path, WRONG)
    with pytest.raises(ValueError, match="not both"):
        serverless.Manager(local_workers=0, secret=SECRET, secret_file=path)


def test_a_generated_secret_is_written_0600_and_removed_at_shutdown(tmp_path):
    with serverless.Manager(local_workers=0, secret=True, log_dir=tmp_path / "logs") as m:
        path = m.secret_file
        assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert not path.is_relative_to(m.log_dir)
    assert not path.exists()
    with serverless.Manager(local_workers=0, insecure=True) as m:
        assert m.secret_file is None


def test_a_secret_file_that_does_not_exist_is_created_and_kept(tmp_path):
    path = tmp_path / "cluster.secret"
    with serverless.Manager(local_workers=0, secret_file=path) as m:
        assert m.secret_file == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    with serverless.Manager(local_workers=0, secret_file=path):
        pass
    assert path.read_bytes() == first


# --- end to end ---------------------------------------------------------------------


def test_a_cli_worker_with_the_secret_serves_calls(tmp_path):
    path = write_secret_file(tmp_path / "secret", SECRET)
    with serverless.Manager(local_workers=0, secret=SECRET, **FAST) as m:
        m.install(serverless.Library("sec", [add]))
        future = m.call("sec", "add", 2, 3)
        by_option = cli_worker(m.address, "--secret-file", str(path), "--workdir", str(tmp_path / "a"))
        by_env = cli_worker(m.address, "--workdir", str(tmp_path / "b"), secret_file=path)
        assert future.result(timeout=60) == 5
        assert list(m.map("sec", "add", range(20), range(20))) == [2 * i for i in range(20)]
        by_env.poll()
        assert by_env.returncode is None, by_env.stdout.read()
    assert by_option.wait(timeout=30) == 0 and by_env.wait(timeout=30) == 0


def test_local_workers_use_the_secret(tmp_path):
    with serverless.Manager(local_cores=2, secret=SECRET, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("local", [add], mode="direct"))
        assert m.call("local", "add", 1, 1).result(timeout=60) == 2
        procs = tree_of(m)
    assert_all_exited(procs)


def test_a_worker_with_the_wrong_secret_is_never_registered(tmp_path):
    wrong = write_secret_file(tmp_path / "wrong", WRONG)
    right = write_secret_file(tmp_path / "right", SECRET)
    with serverless.Manager(local_workers=0, secret=SECRET, **FAST) as m, \
            watch_logs("serverless.transport") as logs:
        m.install(serverless.Library("guarded", [add]))
        future = m.call("guarded", "add", 20, 22)
        for args, fragment in (
            (["--secret-file", str(wrong)], "refused this worker's key"),
            (["--insecure"], "requires a secret"),
        ):
            worker = cli_worker(m.address, "--workdir", str(tmp_path / "w"), *args)
            output, _ = worker.communicate(timeout=60)
            assert worker.returncode == 4 and fragment in output, output
        # below the CLI's check: a raw client speaking the protocol with wrong keys
        register = encode(Register(PROTOCOL_VERSION, "intruder", "h", 1, 4.0, 1024, "py", 1 << 31))
        assert intruder_sends(m.address, derive_keys(WRONG), [register]) & _FAILED
        assert intruder_sends(m.address, None, [register]) & _FAILED
        event = intruder_sends(m.address, random_client_keys(derive_keys(SECRET)), [register])
        assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        logs.wait_for("refused a connection from 127.0.0.1")
        logs.wait_for("does not hold the secret")
        assert m.workers() == [] and not future.done()
        good = cli_worker(m.address, "--workdir", str(tmp_path / "good"), secret_file=right)
        assert future.result(timeout=60) == 42
        assert len(m.workers()) == 1
    assert good.wait(timeout=30) == 0


def test_a_client_without_the_key_cannot_inject_results(tmp_path):
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    with watch_logs("serverless.manager") as logs, \
            serverless.Manager(local_cores=2, secret=SECRET, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("slow", [read_fifo], slots=1))
        future = m.call("slow", "read_fifo", str(fifo))
        logs.wait_for("joined")
        worker_identity = m.workers()[0].worker_id  # its raw identity, to impersonate
        register = encode(Register(PROTOCOL_VERSION, "intruder", "h", 1, 4.0, 1024, "py", 1 << 31))
        forged = [register] + [encode(Results(instance, 1, encode_batch(
            [(future.call_id, 0, pickle.dumps("forged"), 0.0)]))) for instance in range(5)]
        for keys in (None, derive_keys(WRONG), random_client_keys(derive_keys(SECRET))):
            for identity in (worker_identity, b"intruder"):
                assert intruder_sends(m.address, keys, forged, identity) & _FAILED
        # the same client with the right keys does get through (a heartbeat: rejected, harmless)
        assert intruder_sends(m.address, derive_keys(SECRET), [encode(Heartbeat())]) \
            == zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert not future.done() and len(m.workers()) == 1
        with open(fifo, "w") as f:  # opens once the call is running; then it ends
            f.write("real")
        assert future.result(timeout=60) == "real"


def test_the_secret_never_appears_in_logs_or_process_lists(tmp_path):
    path = write_secret_file(tmp_path / "secret", SECRET)
    keys = derive_keys(SECRET)
    forbidden = [SECRET, keys.server_secret.decode(), keys.client_secret.decode()]
    log_dir = tmp_path / "logs"
    with watch_logs("serverless") as logs, \
            serverless.Manager(local_cores=1, secret=SECRET, log_dir=log_dir, **FAST) as m:
        assert all(s not in repr(m.config) for s in forbidden)
        m.install(serverless.Library("quiet", [add], mode="fork"))
        remote = cli_worker(m.address, "--log-level", "DEBUG", "--workdir", str(log_dir / "remote"),
                            "--secret-file", str(path))
        logs.wait_for("joined", count=2)
        assert [m.call("quiet", "add", i, 1).result(timeout=60) for i in range(10)] == list(range(1, 11))
        intruder_sends(m.address, derive_keys(WRONG), [[b"x"]])  # the refusal is logged too
        processes = descendants()
        assert len(processes) >= 3  # local worker, remote worker, a library
        for proc in processes:
            try:
                cmdline, environ = " ".join(proc.cmdline()), proc.environ()
            except psutil.NoSuchProcess:
                continue
            for secret in forbidden:
                assert secret not in cmdline, proc
                assert all(secret not in value for value in environ.values()), proc
    output = remote.communicate(timeout=30)[0]
    assert "registered with" in output  # it did log
    texts = logs.texts() + [output]
    for file in log_dir.rglob("*"):
        if file.is_file():
            texts.append(file.read_text(errors="replace"))
    assert len(texts) > 3
    for secret in forbidden:
        assert all(secret not in text for text in texts)


def test_the_cli_refuses_a_secret_on_the_command_line(tmp_path):
    worker = cli_worker("127.0.0.1:1", "--secret", SECRET)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 2 and "--secret-file" in output and SECRET not in output


def test_the_cli_refuses_a_secret_file_other_users_can_read(tmp_path):
    path = write_secret_file(tmp_path / "secret", SECRET)
    path.chmod(0o644)
    worker = cli_worker("127.0.0.1:1", secret_file=path)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 2 and "chmod 600" in output and SECRET not in output


@pytest.mark.timeout(30)
def test_a_secret_file_under_home_is_made_with_its_directory(tmp_path, monkeypatch):
    from serverless.security import ManagerSecret

    monkeypatch.setenv("HOME", str(tmp_path))
    made = ManagerSecret(None, "~/.serverless/secret")
    assert made.file == tmp_path / ".serverless" / "secret"
    assert made.file.stat().st_mode & 0o777 == 0o600
    assert made.file.parent.stat().st_mode & 0o777 == 0o700
    again = ManagerSecret(None, "~/.serverless/secret")
    assert again.keys == made.keys  # the same file: the same keys


def test_generated_secrets_skip_scrypt_and_old_secrets_keep_their_keys(tmp_path):
    import hashlib
    import hmac
    import time

    from zmq.utils import z85

    from serverless.security import generate_secret, is_generated

    secret = generate_secret()
    assert is_generated(secret.encode()) and not is_generated(SECRET.encode())
    assert generate_secret() != secret
    started = time.perf_counter()
    keys = derive_keys(secret)
    assert time.perf_counter() - started < 0.05  # HKDF alone: no scrypt on Manager() start
    assert keys != derive_keys(generate_secret())
    # a phrase or a file written by an older version derives exactly the keys it did
    salt = b"serverless CURVE keys v1"
    stretched = hashlib.scrypt(SECRET.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    master = hmac.new(salt, stretched, hashlib.sha256).digest()
    old_server_secret = z85.encode(hmac.new(master, b"server\x01", hashlib.sha256).digest())
    old_file = tmp_path / "old.secret"
    old_file.write_text(SECRET + "\n")
    old_file.chmod(0o600)
    assert derive_keys(read_secret_file(old_file)).server_secret == old_server_secret
    with serverless.Manager(local_workers=0) as m:  # the default writes a generated secret
        assert is_generated(read_secret_file(m.secret_file))
