"""Attacks by another local user, tried for real (issue 11; docs/security.md's table).

The attacker is a second account (uid/gid 65534 through ``setpriv``), against a manager and
workers running as us, on 127.0.0.1. These tests need root (to become the other user) and
an interpreter the other user can run with pyzmq and serverless importable; they skip with
the reason otherwise. Each test checks that the attack fails and that service goes on.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import serverless
from serverless.security import write_secret_file

from conftest import FAST, start_worker

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
SECRET_FILE_ENV = "SERVERLESS_SECRET_FILE"


@functools.lru_cache(maxsize=1)
def _why_no_second_user() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to act as a second local user (uid 65534) through setpriv"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to act as a second local user"
    try:
        probe = subprocess.run(_as_nobody(["-c", "import zmq, serverless"]), cwd="/",
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"uid 65534 cannot run {sys.executable}: {exc}"
    if probe.returncode != 0:
        return (f"uid 65534 cannot import zmq and serverless with {sys.executable} (a "
                f"checkout or venv it cannot read?): {probe.stderr.strip()[-200:]}")
    return None


def _as_nobody(python_args: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, *python_args]


def second_user():
    why = _why_no_second_user()
    if why:
        pytest.skip(why)


def run_as_nobody(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != SECRET_FILE_ENV}
    return subprocess.run(_as_nobody(["-c", textwrap.dedent(code), *args]), cwd="/", env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_as_nobody(code: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != SECRET_FILE_ENV}
    return subprocess.Popen(_as_nobody(["-c", textwrap.dedent(code), *args]), cwd="/", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def add(x, y):
    return x + y


# --- 1: the default is no longer open to other local users ------------------------

INTRUDER = """
    import sys, zmq
    from serverless.protocol import PROTOCOL_VERSION, Register, encode, decode
    address, secret_file = sys.argv[1], sys.argv[2]
    try:
        open(secret_file).read()
        print("READ THE SECRET")
    except OSError as exc:
        print("secret unreadable:", type(exc).__name__)
    context = zmq.Context()
    for keys in (None, zmq.curve_keypair()):
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        if keys is not None:  # CURVE, guessing: the server key is unknown to us
            sock.curve_serverkey = zmq.curve_keypair()[0]
            sock.curve_publickey, sock.curve_secretkey = keys
        sock.connect("tcp://" + address)
        sock.send_multipart(encode(Register(PROTOCOL_VERSION, "intruder", "h", 1, 1000.0,
                                            10**6, "python", 1 << 26)))
        while sock.poll(3000):
            print("RECEIVED", decode(sock.recv_multipart()).TAG)
        sock.close()
    context.term()
    print("done")
"""


def token_closure():
    token = "tok-7f1d-secret-api-token"

    def use():
        return len(token)

    return use


def test_another_user_can_neither_register_nor_receive_code_from_a_default_manager(tmp_path):
    second_user()
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("tokens", {"use": token_closure()}))
        future = m.call("tokens", "use")  # queued: no worker yet
        attack = run_as_nobody(INTRUDER, m.address, str(m.secret_file))
        assert "done" in attack.stdout, attack.stderr
        assert "secret unreadable" in attack.stdout and "READ THE SECRET" not in attack.stdout
        assert "RECEIVED" not in attack.stdout, attack.stdout  # no Welcome, no Deploy
        assert m.workers() == [] and not future.done()
        worker = start_worker(m.address, "--cores", "1", "--memory", "512", "--workdir",
                              str(tmp_path / "w"), secret_file=m.secret_file)
        assert future.result(timeout=60) == len("tok-7f1d-secret-api-token")
    assert worker.wait(timeout=30) == 0


# --- 1: a reconnecting worker refuses whoever took its dead manager's port --------

MANAGER = """
    import sys, time, serverless
    m = serverless.Manager(local_workers=0, port=int(sys.argv[2]) if len(sys.argv) > 2 else 0,
                           log_dir=sys.argv[1] + "/mlogs", secret_file=sys.argv[1] + "/secret",
                           heartbeat_interval=0.2, heartbeat_timeout=30.0)
    print(m.address, flush=True)
    while not m.workers():
        time.sleep(0.02)
    print("joined", flush=True)
    sys.stdin.read()
"""

IMPOSTOR = """
    import sys, zmq
    from serverless.protocol import Welcome, encode
    port = sys.argv[1]
    context = zmq.Context()
    plain = context.socket(zmq.ROUTER)  # no secret at all
    plain.linger = 0
    plain.bind("tcp://127.0.0.1:" + port)
    print("bound", flush=True)
    heard = 0  # a worker that spoke to us would get a Welcome, then whatever we like
    poller = zmq.Poller()
    poller.register(plain, zmq.POLLIN)
    for _ in range(40):
        for sock, _ in poller.poll(100):
            identity, *frames = sock.recv_multipart()
            heard += 1
            sock.send_multipart([identity] + encode(Welcome("w", 1.0, 30.0, 1 << 26)))
    print("heard", heard, flush=True)
"""


def test_a_reconnecting_worker_never_talks_to_whoever_took_the_managers_port(tmp_path):
    second_user()
    script = tmp_path / "manager.py"
    script.write_text(textwrap.dedent(MANAGER))
    manager = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        address = manager.stdout.readline().strip()
        port = address.rpartition(":")[2]
        worker = start_worker(address, "--cores", "1", "--memory", "512", "--workdir",
                              str(tmp_path / "w"), "--connect-timeout", "30",
                              secret_file=tmp_path / "secret")
        assert manager.stdout.readline().strip() == "joined"
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        impostor = run_as_nobody(IMPOSTOR, port, timeout=60)
        assert "bound" in impostor.stdout, impostor.stderr  # it did take the port
        assert "heard 0" in impostor.stdout, impostor.stdout  # the worker never spoke to it
        assert worker.poll() is None or worker.returncode != 0
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        if manager.poll() is None:
            manager.kill()
            manager.wait()


# --- 4: files other users planted --------------------------------------------------

PLANT_SECRET = """
    import os, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"sls2-" + b"A" * 43 + b"\\n")
    os.close(fd)
    print("planted")
"""

PLANT_LOG_DIR = """
    import os, sys
    root, target = sys.argv[1], sys.argv[2]
    os.mkdir(root, 0o777)
    os.chmod(root, 0o777)
    os.mkdir(os.path.join(root, "worker-0"), 0o777)
    os.chmod(os.path.join(root, "worker-0"), 0o777)
    os.symlink(target, os.path.join(root, "worker-0", "worker.log"))
    print("planted")
"""


def sticky_tmp() -> Path:
    """A world-writable sticky directory like /tmp, that we own and remove after."""
    path = Path(tempfile.mkdtemp(prefix="serverless-attack-"))
    path.chmod(0o1777)
    return path


def test_a_secret_file_planted_by_another_user_is_refused():
    second_user()
    shared = sticky_tmp()
    try:
        planted = shared / "cluster.secret"
        out = run_as_nobody(PLANT_SECRET, str(planted))
        assert "planted" in out.stdout, out.stderr
        with pytest.raises(serverless.SecurityError, match="another user"):
            serverless.Manager(local_workers=0, secret_file=planted)
        worker = start_worker("127.0.0.1:1", "--connect-timeout", "5", secret_file=planted)
        output = worker.communicate(timeout=60)[0].decode()
        assert worker.returncode == 2 and "another user" in output, output
    finally:
        shutil.rmtree(shared)


def test_a_log_dir_planted_with_symlinks_by_another_user_is_refused(tmp_path):
    second_user()
    shared = sticky_tmp()
    target = tmp_path / "precious"
    target.write_text("untouched\n")
    try:
        planted = shared / "logs"
        out = run_as_nobody(PLANT_LOG_DIR, str(planted), str(target))
        assert "planted" in out.stdout, out.stderr
        with pytest.raises(serverless.SecurityError, match="another user"):
            serverless.Manager(log_dir=planted)
        worker = start_worker("127.0.0.1:1", "--workdir", str(planted / "worker-0"),
                              "--insecure", "--connect-timeout", "5")
        output = worker.communicate(timeout=60)[0].decode()
        assert worker.returncode == 2 and "another user" in output, output
        assert target.read_text() == "untouched\n"
    finally:
        shutil.rmtree(shared)


def test_a_fifo_symlink_or_loose_file_as_the_secret_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.secret"
    os.mkfifo(fifo, 0o600)
    real = write_secret_file(tmp_path / "real.secret", serverless.security.generate_secret())
    link = tmp_path / "link.secret"
    link.symlink_to(real)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    in_loose = write_secret_file(tmp_path / "x.secret", serverless.security.generate_secret())
    moved = loose / "x.secret"
    in_loose.rename(moved)
    for path, why in ((fifo, "not a regular file"), (link, "symbolic link"),
                      (moved, "writable by other users")):
        worker = start_worker("127.0.0.1:1", "--connect-timeout", "5", secret_file=path)
        output = worker.communicate(timeout=30)[0].decode()  # a FIFO once hung here for ever
        assert worker.returncode == 2 and why in output, (path, output)
        with pytest.raises(serverless.SecurityError, match=why):
            serverless.Manager(local_workers=0, secret_file=path)


def test_a_world_writable_log_dir_or_workdir_of_ours_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(serverless.SecurityError, match="writable by other users"):
        serverless.Manager(local_workers=0, log_dir=loose)
    worker = start_worker("127.0.0.1:1", "--workdir", str(loose), "--insecure",
                          "--connect-timeout", "5")
    output = worker.communicate(timeout=30)[0].decode()
    assert worker.returncode == 2 and "writable by other users" in output, output


def test_a_library_name_cannot_make_a_worker_write_outside_its_workdir(tmp_path):
    logs = tmp_path / "logs"
    with serverless.Manager(local_cores=1, log_dir=logs, **FAST) as m:
        m.install(serverless.Library("../../escaped", [add], mode="direct"))
        assert m.call("../../escaped", "add", 1, 2).result(timeout=60) == 3
    assert not list(tmp_path.glob("escaped*")) and not list(logs.glob("escaped*"))
    inside = list((logs / "worker-0").glob("*escaped*.log"))
    assert inside and all(p.parent == logs / "worker-0" for p in inside)
    assert (inside[0].stat().st_mode & 0o777) == 0o600
