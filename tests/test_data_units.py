"""The data plane's parts without a manager: the chunk transfer (authenticated, resumable),
the cache (reservations, eviction, pins, forever lock), the manager's source choice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

from serverless.data.file import FileSpec
from serverless.data.hashing import hash_path
from serverless.data.transfer import CHUNK, ChunkFetch, ChunkServer
from serverless.protocol import Fetch, Fetched, Holdings
from serverless.security import derive_keys, generate_secret
from serverless.manager.data import DataDirectory
from serverless.worker.data.cache import Cache

pytestmark = pytest.mark.timeout(60)


def fetch_all(path, content_id, size, address, keys, into, timeout=10.0):
    context = zmq.Context()
    fd = os.open(into, os.O_WRONLY | os.O_CREAT, 0o600)
    fetch = ChunkFetch(context, content_id, size, fd, keys, window=4)
    try:
        fetch.resume(address)
        end = time.monotonic() + timeout
        while fetch.sock is not None and time.monotonic() < end:
            if fetch.sock.poll(100):
                outcome = fetch.on_readable()
                if outcome is not None:
                    return outcome, fetch
        return "stalled", fetch
    finally:
        fetch.close_socket()
        os.close(fd)
        context.term()


def test_a_chunk_transfer_is_authenticated_and_hash_checked(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * CHUNK + 123))
    content_id = hash_path(src)
    keys = derive_keys(generate_secret())
    server = ChunkServer("127.0.0.1", {content_id: str(src)}.get, keys)
    try:
        outcome, fetch = fetch_all(src, content_id, src.stat().st_size, server.address, keys,
                                   tmp_path / "out.bin")
        assert outcome == "done" and fetch.digest_ok()
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        # without the secret: the handshake fails, not a byte arrives
        outcome, fetch = fetch_all(src, content_id, src.stat().st_size, server.address, None,
                                   tmp_path / "no.bin", timeout=1.5)
        assert outcome == "stalled" and fetch.offset == 0
        # a name it does not hold
        outcome, fetch = fetch_all(src, "b3-" + "0" * 64, 10, server.address, keys,
                                   tmp_path / "x.bin")
        assert outcome == "failed" and fetch.why == "missing"
    finally:
        server.close()


def spec(i: int, size: int, level: str = "workflow") -> FileSpec:
    return FileSpec(f"b3-{i:064x}", size, f"f{i}", "", level, "")


def put(cache: Cache, s: FileSpec) -> None:
    assert cache.reserve(s.content_id, s.size) == "ok"
    temp = cache.incoming(s.content_id)
    temp.write_bytes(b"x" * s.size)
    path, size = cache.commit(s, temp)
    cache.added(s, path, size)


def test_the_cache_evicts_least_recently_used_unpinned_entries(tmp_path):
    cache = Cache(tmp_path / "c", tmp_path / "forever", limit=100)
    a, b, c = spec(1, 40), spec(2, 40), spec(3, 40)
    put(cache, a)
    put(cache, b)
    cache.pin("call-1", [a.content_id])
    cache.lookup(b.content_id)
    put(cache, c)  # a is pinned: b goes although a is older
    assert cache.lookup(a.content_id) and cache.lookup(b.content_id) is None
    cache.pin("call-2", [c.content_id])
    assert cache.reserve("b3-" + "9" * 64, 30) == "later"  # a and c pinned: wait
    assert cache.reserve("b3-" + "9" * 64, 101) == "never"
    cache.unpin("call-1")
    assert cache.reserve("b3-" + "9" * 64, 30) == "ok"
    assert cache.lookup(a.content_id) is None  # evicted once unpinned


def test_a_call_level_entry_goes_with_its_last_pin(tmp_path):
    cache = Cache(tmp_path / "c", tmp_path / "forever", limit=None)
    s = spec(4, 10, "call")
    put(cache, s)
    cache.pin(1, [s.content_id])
    cache.pin(2, [s.content_id])
    assert cache.unpin(1) == []
    assert cache.unpin(2) == [s.content_id]
    assert not (tmp_path / "c" / s.content_id).exists()


def test_a_forever_lock_is_released_when_its_holder_dies(tmp_path):
    cache = Cache(tmp_path / "c", tmp_path / "forever")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(tmp_path / 'forever' / 'b3-x.lock')!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    assert cache.forever_lock("b3-x") is None
    half = tmp_path / "forever" / ".incoming" / "b3-x.999.0"
    half.write_bytes(b"half a file its fetcher left when it died")
    holder.kill()
    holder.wait()
    lock = cache.forever_lock("b3-x")
    assert lock is not None and not half.exists()
    lock.release()


def test_the_manager_sends_a_file_once_and_peers_carry_the_rest():
    d = DataDirectory(manager_port=5000, upload_cap=2)
    s = spec(5, 1000)
    for i in range(6):
        d.holdings(f"w{i}", Holdings(f"tcp://10.0.0.{i}:1", (), ()))
    first = d.want("w0", s)
    assert first == [("w0", Fetch(s.content_id, 1000, "manager:5000"))]
    assert all(d.want(f"w{i}", s) == [] for i in range(1, 6))  # wait for a peer
    after = d.fetched("w0", Fetched(s.content_id, "manager:5000", "ok", 1000))
    assert sorted(w for w, _ in after) == ["w1", "w2"]  # upload cap 2 at w0
    assert all(msg.source == "tcp://10.0.0.0:1" for _, msg in after)
    more = d.fetched("w1", Fetched(s.content_id, "tcp://10.0.0.0:1", "ok", 1000))
    assert len(more) == 3 and d.origin_bytes == 1000  # w0 freed a slot, w1 serves 2
    # a source that fails is avoided: w3 asks again and is sent elsewhere
    target, msg = more[0]
    again = d.fetched(target, Fetched(s.content_id, msg.source, "failed", 0))
    again += d.want(target, s)
    assert all(m.source != msg.source for w, m in again if w == target)


def test_calls_and_new_instances_go_where_their_input_files_are():
    import serverless
    from serverless.manager.records import CallRecord, DeployInstance, SendCalls
    from serverless.manager.scheduler import Scheduler

    def noop(p):
        return p

    s = Scheduler()
    d = s.data = DataDirectory(manager_port=1)
    big = spec(7, 500 * 1024 * 1024)
    for w in ("w1", "w2", "w3"):
        s.worker_joined(w, cores=1, memory_mb=1000)
    d.holdings("w2", Holdings("tcp://h:2", (big.content_id,), ()))
    s.install("lib", serverless.Library("lib", [noop], cores=1), b"blob")
    call = CallRecord(1, "lib", "noop", b"", None, None)
    call.files = (tuple(big),)
    deploys = [a for a in s.submit([call]) if isinstance(a, DeployInstance)]
    assert [a.worker_id for a in deploys] == ["w2"]  # the instance goes where the file is
    # with ready instances everywhere, the call goes to the worker holding the file
    s2 = Scheduler()
    s2.data = d
    s2.install("lib", serverless.Library("lib", [noop], cores=1), b"blob")
    plain = [CallRecord(10 + i, "lib", "noop", b"", None, None) for i in range(12)]
    s2.submit(plain)
    ids = [a.instance_id for w in ("w1", "w2", "w3")
           for a in s2.worker_joined(w, cores=1, memory_mb=1000) if isinstance(a, DeployInstance)]
    assert len(ids) == 3
    for instance_id in ids:
        for a in s2.instance_ready(instance_id):
            if isinstance(a, SendCalls):  # finish them: every instance idle, with room
                s2.results(a.instance_id, [(c.call_id, 0, b"", 0.001) for c in a.calls])
    call2 = CallRecord(2, "lib", "noop", b"", None, None)
    call2.files = (tuple(big),)
    sends = [a for a in s2.submit([call2]) if isinstance(a, SendCalls)]
    assert [a.worker_id for a in sends] == ["w2"]
