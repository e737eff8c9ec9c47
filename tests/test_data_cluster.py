"""Files across several real workers over TCP: peers, a peer killed mid-transfer, eviction,
CacheFull, waiting for room, the node's "forever" cache (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import serverless
from serverless.data.transfer import TEST_DELAY_ENV

from conftest import FAST

pytestmark = pytest.mark.timeout(180)

MB = 1 << 20


def where(p, pause=0.0):
    """The cache path of the input (it names the worker) and its size."""
    import time
    time.sleep(pause)
    return str(p), p.stat().st_size


def who(p, pause=0.0):
    """The cache path of the input and the pid of the library instance that ran the call."""
    import os
    import time
    time.sleep(pause)
    return str(p), os.getppid()


def spawn(m: serverless.Manager, tmp: Path, name: str, *extra: str, env: dict | None = None,
          cores: str = "1", memory: str = "1000") -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "ab")
    args = [sys.executable, "-m", "serverless.worker", m.address, "--cores", cores,
            "--memory", memory, "--name", name, "--workdir", str(tmp / name),
            "--cache-dir", str(tmp / name / "cache"), "--forever-dir", str(tmp / "forever"),
            "--connect-timeout", "20", "--die-with-parent", str(os.getpid()), *extra]
    if m.secret_file is not None:
        args += ["--secret-file", str(m.secret_file)]
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def manager_bytes(m: serverless.Manager) -> int:
    return m._loop.data.bytes_sent


def test_every_worker_gets_the_file_and_the_manager_sends_it_about_once(tmp_path):
    data = tmp_path / "input.bin"
    data.write_bytes(os.urandom(12 * MB))
    with serverless.Manager(local_workers=0, secret=True, **FAST) as m:
        workers = [spawn(m, tmp_path, f"w{i}") for i in range(4)]
        try:
            m.install(serverless.Library("d", [where], cores=1, slots=1))
            wait_for(lambda: len(m.workers()) == 4, what="4 workers")
            f = serverless.File(data)
            futures = [m.call("d", "where", f, 0.3) for _ in range(16)]
            results = [fut.result(120) for fut in futures]
            caches = {path.split("/cache/")[0] for path, _ in results}
            assert all(size == 12 * MB for _, size in results)
            assert len(caches) == 4  # every worker ran calls with its own copy
            assert manager_bytes(m) <= 2 * 12 * MB  # peers carried the rest
        finally:
            stop(*workers)


def test_a_peer_killed_mid_transfer_the_receiver_finishes_from_another_source(tmp_path):
    size = 24 * MB
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(size))
    with serverless.Manager(local_workers=0, **FAST) as m:
        m.install(serverless.Library("seed", [where], cores=1, memory_mb=0))
        m.install(serverless.Library("work", [where], cores=1, memory_mb=800))
        # a: cannot host "work" (memory), serves its cache slowly (the test hook)
        a = spawn(m, tmp_path, "a", memory="100", env={TEST_DELAY_ENV: "0.05"})
        try:
            f = serverless.File(data)
            assert m.call("seed", "where", f).result(60)[1] == size
            assert manager_bytes(m) == size
            b = spawn(m, tmp_path, "b", "--transfer-timeout", "1", memory="1000")
            future = m.call("work", "where", f)
            incoming = tmp_path / "b" / "cache" / ".incoming"

            def receiving() -> bool:
                try:
                    return any(p.stat().st_size >= 2 * MB for p in incoming.iterdir())
                except OSError:
                    return False

            wait_for(receiving, what="b receiving from a")
            a.send_signal(signal.SIGKILL)
            path, got = future.result(90)
            assert got == size and "/b/cache/" in path
            assert (Path(path).read_bytes() == data.read_bytes())
            # b took the rest from the manager, not everything again
            assert size < manager_bytes(m) < 2 * size
        finally:
            stop(a)
            stop(b)


def test_a_disk_limit_evicts_least_recently_used_and_refuses_what_never_fits(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(os.urandom(int(1.2 * MB)))
    huge = tmp_path / "huge.bin"
    huge.write_bytes(os.urandom(5 * MB))
    with serverless.Manager(local_workers=0, **FAST) as m:
        w = spawn(m, tmp_path, "w", "--disk", "3")
        try:
            m.install(serverless.Library("d", [where]))
            cache = tmp_path / "w" / "cache"
            paths = [Path(m.call("d", "where", serverless.File(p)).result(60)[0]) for p in files]
            assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
            with pytest.raises(serverless.CacheFull, match="huge.bin|5.2 MB") as info:
                m.call("d", "where", serverless.File(huge)).result(60)
            assert info.value.size == 5 * MB and info.value.limit == 3 * MB
            # other calls are not affected, and an evicted file comes back
            again = m.call("d", "where", serverless.File(files[0])).result(60)
            assert Path(again[0]).exists() and again[1] == int(1.2 * MB)
            assert sum(1 for p in cache.iterdir() if p.name.startswith("b3-")) <= 2
        finally:
            stop(w)


def test_inputs_that_fit_later_wait_for_room(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(2 * MB))
    b.write_bytes(os.urandom(2 * MB))
    with serverless.Manager(local_workers=0, **FAST) as m:
        w = spawn(m, tmp_path, "w", "--disk", "3", cores="2")
        try:
            m.install(serverless.Library("d", [where], slots=2, cores=2))
            first = m.call("d", "where", serverless.File(a), 1.0)
            second = m.call("d", "where", serverless.File(b), 0.0)
            assert first.result(60)[1] == 2 * MB
            assert second.result(60)[1] == 2 * MB  # waited for a's pin to go, then fit
        finally:
            stop(w)


def test_a_forever_file_survives_the_worker_and_needs_no_transfer(tmp_path):
    data = tmp_path / "keep.bin"
    data.write_bytes(os.urandom(3 * MB))
    f = serverless.File(data, cache="forever")
    for round_ in range(2):
        with serverless.Manager(local_workers=0, **FAST) as m:
            workers = [spawn(m, tmp_path, f"r{round_}w{i}") for i in range(2)]
            try:
                m.install(serverless.Library("d", [who], cores=1))
                wait_for(lambda: len(m.workers()) == 2, what="2 workers")
                # both workers need it at once: one fetches under the node's lock, the
                # other waits for that lock and uses the entry (no second transfer)
                results = [fut.result(60) for fut in [m.call("d", "who", f, 0.2)
                                                      for _ in range(8)]]
                assert len({p for p, _ in results}) == 1  # one entry, shared
                assert len({pid for _, pid in results}) == 2  # by both workers
                assert all(str(tmp_path / "forever") in p for p, _ in results)
                sent = manager_bytes(m)
            finally:
                stop(*workers)
        assert sent == (3 * MB if round_ == 0 else 0)  # warm: no transfer at all
    assert any(p.name.startswith("b3-") for p in (tmp_path / "forever").iterdir())


def test_a_url_is_downloaded_once_and_peers_share_it(tmp_path):
    import hashlib
    import http.server
    import threading

    content = os.urandom(6 * MB)
    gets = []

    class Counting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.bin"
    try:
        with serverless.Manager(local_workers=0, **FAST) as m:
            workers = [spawn(m, tmp_path, f"u{i}") for i in range(3)]
            try:
                m.install(serverless.Library("d", [where], cores=1, slots=1))
                wait_for(lambda: len(m.workers()) == 3, what="3 workers")
                f = serverless.File(url, sha256=hashlib.sha256(content).hexdigest())
                results = [fut.result(120) for fut in [m.call("d", "where", f, 0.3)
                                                       for _ in range(12)]]
                assert {size for _, size in results} == {6 * MB}
                assert len({p.split("/cache/")[0] for p, _ in results}) == 3
                assert gets == ["/x.bin"]  # one worker downloaded; the others got it from it
                assert manager_bytes(m) == 0  # never through the manager
            finally:
                stop(*workers)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount permission; skipped otherwise)."""
    where_ = tmp_path / "tiny"
    where_.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where_)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield where_
    subprocess.run(["umount", "-l", str(where_)], capture_output=True)


def test_a_full_disk_fails_the_call_with_cache_full_and_others_go_on(tmp_path, tiny_disk):
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(4 * MB))
    small.write_bytes(b"small")
    with serverless.Manager(local_workers=0, **FAST) as m:
        w = spawn(m, tmp_path, "w", "--cache-dir", str(tiny_disk / "cache"))  # no --disk
        try:
            m.install(serverless.Library("d", [where]))
            with pytest.raises(serverless.CacheFull, match="disk is full"):
                m.call("d", "where", serverless.File(big)).result(60)
            assert m.call("d", "where", serverless.File(small)).result(60)[1] == 5
        finally:
            stop(w)
