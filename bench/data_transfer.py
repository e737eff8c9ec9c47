"""``python -m bench.data_transfer``: the transfer path's own figures, side by side in one run.

* **hashing**: GB/s of BLAKE3 (our content names), hashlib's sha256 and blake2b, over the
  same in-memory buffer, and of :func:`serverless.data.hashing.hash_path` on a file in the
  page cache;
* **peer transfer vs loopback TCP**: one :class:`~serverless.data.transfer.ChunkServer`
  serving a file and one :class:`~serverless.data.transfer.ChunkFetch` receiving it (with
  and without a secret: CURVE-encrypted or not), each in its own process as two workers
  would be, against a plain TCP stream between two processes over 127.0.0.1 (1 MiB
  ``send``/``recv_into``, nothing written): the ratio is the figure;
* **manager bytes vs N**: a manager and N ``serverless-worker`` processes with separate
  caches; every worker runs calls on the same file; the manager's chunk server counts the
  bytes it sent (the target: at most twice the file, whatever N).

``python -m bench.data`` calls :func:`run_all`. Take the heavy lock:
``flock /work/coord/heavy.lock python -m bench.data_transfer``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["hashing", "peer_vs_tcp", "manager_bytes", "run_all", "main"]

MB = 1 << 20


def hashing(size_mb: int = 256) -> dict[str, float]:
    """GB/s of each hash over ``size_mb`` MiB (in memory), and of hash_path on a file."""
    import blake3

    from serverless.data import hashing as content

    buffer = os.urandom(size_mb * MB)
    out: dict[str, float] = {}
    for name, make in (("blake3", blake3.blake3), ("sha256", hashlib.sha256),
                       ("blake2b", hashlib.blake2b)):
        best = 0.0
        for _ in range(3):
            h = make()
            start = time.perf_counter()
            h.update(buffer)
            best = max(best, len(buffer) / (time.perf_counter() - start) / 1e9)
        out[name] = round(best, 2)
    with tempfile.NamedTemporaryFile() as f:
        f.write(buffer)
        f.flush()
        start = time.perf_counter()
        with open(f.name, "rb") as g:
            content.hash_file_object(g)
        out["blake3_file"] = round(len(buffer) / (time.perf_counter() - start) / 1e9, 2)
    return out


def _tcp_sender(port: int, total: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        chunk = os.urandom(MB)
        sent = 0
        while sent < total:
            s.sendall(chunk)
            sent += len(chunk)


def _tcp_stream(total: int) -> float:
    """MB/s of a plain TCP stream between two processes over loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sender = multiprocessing.get_context("spawn").Process(target=_tcp_sender, args=(port, total))
    sender.start()
    conn, _ = listener.accept()
    buffer = bytearray(MB)
    got = 0
    start = time.perf_counter()
    while got < total:
        n = conn.recv_into(buffer)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - start
    conn.close()
    listener.close()
    sender.join()
    return got / elapsed / 1e6


def _serve(path: str, content_id: str, secret: str | None, ready, stop) -> None:
    from serverless.data.transfer import ChunkServer
    from serverless.security import derive_keys

    keys = derive_keys(secret) if secret else None
    server = ChunkServer("127.0.0.1", {content_id: path}.get, keys)
    ready.send(server.address)
    stop.wait()
    server.close()


def _chunk_transfer(path: Path, content_id: str, secret: str | None, into: Path) -> float:
    """MB/s of one ChunkFetch from a ChunkServer in another process (written, hashed)."""
    import zmq

    from serverless.data.transfer import ChunkFetch
    from serverless.security import derive_keys

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    server = ctx.Process(target=_serve, args=(str(path), content_id, secret, child, stop))
    server.start()
    address = parent.recv()
    size = path.stat().st_size
    context = zmq.Context()
    fd = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fetch = ChunkFetch(context, content_id, size, fd, derive_keys(secret) if secret else None)
        start = time.perf_counter()
        fetch.resume(address)
        outcome = None
        while outcome is None:
            fetch.sock.poll(10000)
            outcome = fetch.on_readable()
        elapsed = time.perf_counter() - start
        if outcome != "done" or not fetch.digest_ok():
            raise RuntimeError(f"transfer {outcome}: {fetch.why}")
    finally:
        os.close(fd)
        context.term()
        stop.set()
        server.join()
    return size / elapsed / 1e6


def peer_vs_tcp(size_mb: int = 512, rounds: int = 3) -> dict[str, Any]:
    """Best of ``rounds`` for each, interleaved, so both see the same load."""
    from serverless.data.hashing import hash_path
    from serverless.security import generate_secret

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "payload.bin")
        with open(path, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(MB))
        content_id = hash_path(path)
        secret = generate_secret()
        tcp, plain, curve = [], [], []
        for _ in range(rounds):
            tcp.append(_tcp_stream(size_mb * MB))
            plain.append(_chunk_transfer(path, content_id, None, Path(tmp, "out")))
            curve.append(_chunk_transfer(path, content_id, secret, Path(tmp, "out")))
    best = {"tcp_MBps": max(tcp), "chunks_MBps": max(plain), "chunks_curve_MBps": max(curve)}
    best["ratio"] = round(best["chunks_MBps"] / best["tcp_MBps"], 2)
    best["ratio_curve"] = round(best["chunks_curve_MBps"] / best["tcp_MBps"], 2)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in best.items()} | {
        "size_mb": size_mb}


def _where(p, pause):
    import time
    time.sleep(pause)
    return str(p).split("/cache/")[0]


def manager_bytes(workers: int, size_mb: int = 64, calls_per_worker: int = 4) -> dict[str, Any]:
    """Bytes the manager's chunk server sent when ``workers`` workers need one file."""
    import subprocess

    import serverless

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "input.bin")
        with open(path, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(MB))
        with serverless.Manager(local_workers=0, heartbeat_interval=0.5, heartbeat_timeout=20) as m:
            procs = []
            for i in range(workers):
                args = [sys.executable, "-m", "serverless.worker", m.address, "--cores", "1",
                        "--name", f"w{i}", "--workdir", f"{tmp}/w{i}",
                        "--forever-dir", f"{tmp}/forever{i}", "--die-with-parent", str(os.getpid())]
                if m.secret_file is not None:
                    args += ["--secret-file", str(m.secret_file)]
                procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            try:
                end = time.monotonic() + 60
                while len(m.workers()) < workers and time.monotonic() < end:
                    time.sleep(0.05)
                m.install(serverless.Library("b", [_where], cores=1, slots=1))
                f = serverless.File(path)
                start = time.perf_counter()
                futures = [m.call("b", "_where", f, 0.2) for _ in range(workers * calls_per_worker)]
                holders = {fut.result(600) for fut in futures}
                elapsed = time.perf_counter() - start
                sent = m._loop.data.bytes_sent
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
    return {"workers": workers, "workers_used": len(holders), "file_mb": size_mb,
            "manager_sent_mb": round(sent / MB, 1), "times_the_file": round(sent / (size_mb * MB), 2),
            "seconds": round(elapsed, 2)}


def run_all(quick: bool = False, workers: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, Any]:
    from .machine import load_average

    out: dict[str, Any] = {"load_before": load_average()}
    out["hashing_GBps"] = hashing(64 if quick else 256)
    out["peer_vs_tcp"] = peer_vs_tcp(64 if quick else 512, 1 if quick else 3)
    out["manager_bytes"] = [manager_bytes(n, 8 if quick else 64) for n in workers]
    out["load_after"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_transfer")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_all(args.quick, tuple(int(n) for n in args.workers.split(",")))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
