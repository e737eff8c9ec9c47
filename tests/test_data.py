"""serverless.File end to end on one local worker: paths, directories, archives, URLs,
read-only copies, content naming, the typed errors (issue 13)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import serverless
from serverless.data import hashing

from conftest import FAST

pytestmark = pytest.mark.timeout(120)


def describe(p):
    """What the function sees of a File."""
    import pathlib
    return (isinstance(p, pathlib.Path), str(p), p.read_bytes() if p.is_file() else sorted(
        str(q.relative_to(p)) for q in p.rglob("*")))


def shape(value):
    """The types a File became, wherever it was in the arguments."""
    import pathlib
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shape(v) for v in value)
    return "path" if isinstance(value, pathlib.Path) else value


def write_into(p):
    with open(p, "ab") as f:
        f.write(b"overwritten")


def read_text(p, name=None):
    return (p / name).read_text() if name else p.read_text()


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    with serverless.Manager(local_cores=2, log_dir=logs, **FAST) as manager:
        manager.install(serverless.Library("io", [describe, shape, write_into, read_text]))
        yield manager


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "a.csv").write_bytes(b"x,y\n1,2\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "one.txt").write_text("one")
    (tree / "sub" / "two.txt").write_text("two")
    return tmp_path


def test_a_file_becomes_a_local_path_with_its_name_and_content(m, data):
    is_path, where, content = m.call("io", "describe", serverless.File(data / "a.csv")).result(60)
    assert is_path and content == b"x,y\n1,2\n"
    assert where.endswith("/a.csv") and str(data) not in where  # a copy, in the worker's cache


def test_files_anywhere_in_the_arguments_become_paths(m, data):
    f = serverless.File(data / "a.csv")
    got = m.call("io", "shape", [[f, 1], (f,), {"k": f, "n": 2}, f]).result(60)
    assert got == [["path", 1], ("path",), {"k": "path", "n": 2}, "path"]
    assert m.call("io", "shape", {"only": f}).result(60) == {"only": "path"}


def test_a_directory_arrives_as_a_directory(m, data):
    is_path, _, listing = m.call("io", "describe", serverless.File(data / "tree")).result(60)
    assert is_path and listing == ["one.txt", "sub", "sub/two.txt"]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".zip", ".tar.zst"])
def test_an_archive_is_unpacked_once(m, data, suffix):
    archive = data / f"pack{suffix}"
    make_archive(archive, {"top.txt": b"top", "d/inner.txt": b"inner"})
    f = serverless.File(archive, unpack=True)
    first = m.call("io", "describe", f).result(60)
    second = m.call("io", "describe", f).result(60)
    assert first[2] == ["d", "d/inner.txt", "top.txt"]
    assert first[1] == second[1]  # the same unpacked directory: unpacked once
    assert m.call("io", "read_text", f, "d/inner.txt").result(60) == "inner"


def test_a_corrupt_archive_fails_the_call_with_the_archive_error(m, data):
    bad = data / "broken.tar.gz"
    make_archive(bad, {"a.txt": os.urandom(100_000)})
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    with pytest.raises(serverless.ArchiveError, match="broken.tar.gz"):
        m.call("io", "describe", serverless.File(bad, unpack=True)).result(60)
    assert m.call("io", "shape", 5).result(60) == 5  # the worker serves on


def test_a_missing_file_raises_from_call_and_nothing_is_queued(m, data):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        m.call("io", "describe", serverless.File(data / "nope.csv"))
    with pytest.raises(ValueError, match="cannot unpack"):
        serverless.File(data / "a.csv", unpack=True)


def test_the_input_is_read_only_and_the_cached_copy_stays_intact(m, data):
    f = serverless.File(data / "a.csv")
    with pytest.raises(PermissionError):
        m.call("io", "write_into", f).result(60)
    assert m.call("io", "describe", f).result(60)[2] == b"x,y\n1,2\n"


def test_a_changed_file_is_a_new_file(m, data):
    path = data / "a.csv"
    f = serverless.File(path)
    assert m.call("io", "describe", f).result(60)[2] == b"x,y\n1,2\n"
    path.write_bytes(b"changed")
    assert m.call("io", "describe", f).result(60)[2] == b"changed"


def test_a_large_file_is_hashed_once_per_stat_identity(m, data, monkeypatch):
    path = data / "big.bin"
    path.write_bytes(os.urandom(3 << 20))
    count = []
    real = hashing.hash_file_object
    monkeypatch.setattr(hashing, "hash_file_object", lambda f: count.append(1) or real(f))
    f = serverless.File(path)
    futures = [m.call("io", "describe", f) for _ in range(5)]
    futures += [m.call("io", "describe", serverless.File(path)) for _ in range(5)]
    assert all(fut.result(60)[2] == path.read_bytes() for fut in futures)
    assert len(count) <= 1  # 0 if an earlier test hashed this stat identity


# --- URLs -----------------------------------------------------------------------------


@pytest.fixture
def web(data):
    """A local HTTP server over ``data`` (127.0.0.1 only), in a thread."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(data), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_is_fetched_by_the_worker_and_checked(m, data, web):
    content = (data / "a.csv").read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    f = serverless.File(f"{web}/a.csv", sha256=sha)
    is_path, where, got = m.call("io", "describe", f).result(60)
    assert is_path and got == content and where.endswith("a.csv")


def test_a_url_whose_hash_differs_fails_with_both_hashes(m, data, web):
    wrong = "0" * 64
    received = hashlib.sha256((data / "a.csv").read_bytes()).hexdigest()
    with pytest.raises(serverless.FileIntegrityError) as info:
        m.call("io", "describe", serverless.File(f"{web}/a.csv", sha256=wrong)).result(60)
    assert wrong in str(info.value) and received in str(info.value)
    assert info.value.expected == wrong and info.value.received == received


def test_an_unpacked_url_archive(m, data, web):
    make_archive(data / "w.zip", {"in/zip.txt": b"zipped"})
    sha = hashlib.sha256((data / "w.zip").read_bytes()).hexdigest()
    f = serverless.File(f"{web}/w.zip", sha256=sha, unpack=True)
    assert m.call("io", "read_text", f, "in/zip.txt").result(60) == "zipped"


def test_a_url_that_does_not_exist_fails_the_call(m, web):
    with pytest.raises(serverless.TransferFailed, match="404"):
        m.call("io", "describe", serverless.File(f"{web}/missing.bin")).result(60)


def make_archive(path: Path, members: dict[str, bytes]) -> None:
    name = path.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for member, content in members.items():
                z.writestr(member, content)
        return
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, content in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    raw = buffer.getvalue()
    if name.endswith(".tar.gz"):
        import gzip
        raw = gzip.compress(raw)
    elif name.endswith(".tar.zst"):
        import zstandard
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)


def test_a_call_cancelled_while_its_file_downloads_ends_and_others_go_on(m, data):
    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(60)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"late")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        held = m.call("io", "describe", serverless.File(
            f"http://127.0.0.1:{server.server_address[1]}/slow.bin"))
        assert m.call("io", "shape", 1).result(60) == 1  # not behind the held call
        assert held.cancel()
        assert m.call("io", "shape", 2).result(60) == 2
        import time
        end = time.monotonic() + 30  # the held call ended on the worker too (a result came)
        while any(i.outstanding for i in list(m._loop.scheduler.instances.values())):
            assert time.monotonic() < end, "the cancelled call never ended at its instance"
            time.sleep(0.02)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
