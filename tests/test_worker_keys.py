"""Per-worker keys: an allow-list the manager checks, so one node is revoked alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import serverless
from serverless.security import generate_secret, read_secret_file, write_secret_file
from serverless.worker_keys import AllowList, read_worker_key

from conftest import FAST
from faultkit import wait_until

pytestmark = pytest.mark.timeout(120)


def add(x, y):
    return x + y


def key_worker(address: str, key_file, workdir) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SERVERLESS_SECRET_FILE", "SERVERLESS_KEY_FILE")}
    return subprocess.Popen([sys.executable, "-m", "serverless.worker", address, "--cores", "1",
                             "--memory", "512", "--connect-timeout", "20", "--workdir",
                             str(workdir), "--key-file", str(key_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def new_key(key_file, secret_file, allow_list, name) -> str:
    made = subprocess.run([sys.executable, "-m", "serverless.worker_keys", "new", str(key_file),
                           "--secret-file", str(secret_file), "--allow-list", str(allow_list),
                           "--name", name], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_one_node_is_revoked_without_rotating_the_others(tmp_path):
    secret_file = write_secret_file(tmp_path / "secret", generate_secret())
    allow = tmp_path / "workers.allow"
    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    public_a = new_key(key_a, secret_file, allow, "node-a")
    public_b = new_key(key_b, secret_file, allow, "node-b")
    secret = read_secret_file(secret_file)
    for key_file in (key_a, key_b):  # a node holds neither the secret nor the server's key
        text = key_file.read_bytes()
        keys = read_worker_key(key_file)
        assert secret not in text and keys.server_secret == b""
        assert (key_file.stat().st_mode & 0o777) == 0o600
    assert allow.read_text().split() == [public_a, "node-a", public_b, "node-b"]
    assert len(AllowList(allow).keys()) == 2
    with serverless.Manager(local_workers=0, secret_file=secret_file, worker_keys=allow,
                            log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("k", [add], mode="direct", slots=1))
        a = key_worker(m.address, key_a, tmp_path / "wa")
        b = key_worker(m.address, key_b, tmp_path / "wb")
        wait_until(lambda: len(m.workers()) == 2 or a.poll() is not None or b.poll() is not None,
                   what="both key workers joined")
        assert a.poll() is None and b.poll() is None, (public_a, public_b, allow.read_text(),
                                                       AllowList(allow).keys())
        assert [m.call("k", "add", i, i).result(timeout=60) for i in range(10)] == \
            [2 * i for i in range(10)]
        # revoke node b: its line goes (a new file renamed over the old one)
        fresh = tmp_path / "workers.allow.new"
        fresh.write_text(f"{public_a} node-a\n")
        fresh.chmod(0o600)
        fresh.rename(allow)
        b.terminate()  # the node is taken down; its key must not let it (or a thief) back
        b.communicate(timeout=30)
        wait_until(lambda: len(m.workers()) == 1, what="node b gone")
        again = key_worker(m.address, key_b, tmp_path / "wb2")
        output, _ = again.communicate(timeout=60)
        assert again.returncode == 4 and "refused this worker's key" in output, output
        # node a goes on serving, and a new worker with a's key still joins
        assert m.call("k", "add", 20, 22).result(timeout=60) == 42
        a2 = key_worker(m.address, key_a, tmp_path / "wa2")
        wait_until(lambda: len(m.workers()) == 2, what="a second worker with key a")
        assert len(m.workers()) == 2
    assert a.wait(timeout=30) == 0 and a2.wait(timeout=30) == 0


def test_a_key_made_for_another_manager_or_a_loose_allow_list_admits_nothing(tmp_path):
    ours = write_secret_file(tmp_path / "ours", generate_secret())
    theirs = write_secret_file(tmp_path / "theirs", generate_secret())
    allow = tmp_path / "allow"
    new_key(tmp_path / "other.key", theirs, allow, "elsewhere")
    with serverless.Manager(local_workers=0, secret_file=ours, worker_keys=allow,
                            log_dir=tmp_path / "logs", **FAST) as m:
        w = key_worker(m.address, tmp_path / "other.key", tmp_path / "w")
        output, _ = w.communicate(timeout=60)
        assert w.returncode == 4, output  # it does not trust our manager's key either
        assert m.workers() == []
    allow.chmod(0o666)
    listed = AllowList(allow)
    assert listed.keys() == frozenset() and "open to other users" in listed.error


def test_local_workers_ignore_a_key_file_in_the_users_environment(tmp_path, monkeypatch):
    secret_file = write_secret_file(tmp_path / "secret", generate_secret())
    new_key(tmp_path / "node.key", secret_file, tmp_path / "allow", "node")
    monkeypatch.setenv("SERVERLESS_KEY_FILE", str(tmp_path / "node.key"))
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("k", [add], mode="direct"))
        assert m.call("k", "add", 1, 2).result(timeout=60) == 3
