"""What the secret costs on the manager-worker link, and whether ipc:// would be cheaper.

    python -m bench.transport_security [-n N] [--calls C]

Two measurements, each side by side in one run:

* the zmq link alone (ROUTER in this process, DEALER in a child, 100-byte messages):
  the p50 round trip, and pipelined throughput both ways (the ROUTER sends N messages the
  DEALER echoes back, as call batches go out and result batches come in), for
  ``tcp`` without security, ``tcp+curve`` (what every manager now uses) and ``ipc``
  without security in a 0700 directory (what local workers could use instead);
* the engine: C trivial direct-mode calls (``map``) and one call in flight, with the
  default ``Manager()`` (CURVE) and ``Manager(insecure=True)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

__all__ = ["link", "engine", "main"]

MESSAGE = b"x" * 100


def _peer(endpoint: str, curve: str) -> None:
    """The echoing DEALER (a child process)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.sndhwm = sock.rcvhwm = 0
    if curve:
        server_public, public, secret = curve.encode().split(b",")
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
    sock.connect(endpoint)
    sock.send(b"hello")
    while True:
        message = sock.recv()
        if message == b"stop":
            break
        sock.send(message)
    sock.close(linger=1000)
    context.term()


def link(kind: str, n: int) -> dict[str, float]:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.sndhwm = router.rcvhwm = 0  # a ROUTER at its high-water mark drops silently
    curve = ""
    private = None
    if kind == "tcp+curve":
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = server_public, server_secret
        curve = b",".join([server_public, client_public, client_secret]).decode()
    if kind == "ipc":
        private = tempfile.mkdtemp(prefix="serverless-ipc-")  # 0700
        endpoint = f"ipc://{private}/manager"
        router.bind(endpoint)
    else:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, "-m", "bench.transport_security", "--peer",
                              endpoint, "--curve", curve])
    try:
        identity, _ = router.recv_multipart()
        for _ in range(200):
            router.send_multipart([identity, MESSAGE])
            router.recv_multipart()
        trips = []
        for _ in range(n):
            started = time.perf_counter()
            router.send_multipart([identity, MESSAGE])
            router.recv_multipart()
            trips.append(time.perf_counter() - started)
        started = time.perf_counter()
        window = 1000
        sent = received = 0
        while received < n * 10:
            while sent < n * 10 and sent - received < window:
                router.send_multipart([identity, MESSAGE])
                sent += 1
            router.recv_multipart()
            received += 1
        elapsed = time.perf_counter() - started
        router.send_multipart([identity, b"stop"])
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        router.close()
        context.term()
        if private:
            shutil.rmtree(private, ignore_errors=True)
    return {"rtt_p50_us": statistics.median(trips) * 1e6,
            "echoed_msgs_per_s": n * 10 / elapsed}


def _add(x, y):
    return x + y


def engine(calls: int, insecure: bool) -> dict[str, float]:
    import serverless

    with serverless.Manager(insecure=insecure) as m:
        m.install(serverless.Library("b", [_add], mode="direct"))
        list(m.map("b", "_add", range(500), range(500)))
        started = time.perf_counter()
        list(m.map("b", "_add", range(calls), range(calls)))
        rate = calls / (time.perf_counter() - started)
        trips = []
        for i in range(300):
            t = time.perf_counter()
            m.call("b", "_add", i, 1).result()
            trips.append(time.perf_counter() - t)
    return {"calls_per_s": rate, "one_call_p50_us": statistics.median(trips) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_security")
    parser.add_argument("-n", type=int, default=2000, help="round trips per link (x10 pipelined)")
    parser.add_argument("--calls", type=int, default=5000, help="engine calls per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--curve", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        _peer(args.peer, args.curve)
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}")
    for round_ in range(args.rounds):
        for kind in ("tcp", "tcp+curve", "ipc"):
            figures = link(kind, args.n)
            print(f"round {round_} link {kind:10s} round trip p50 {figures['rtt_p50_us']:7.1f} us, "
                  f"pipelined echo {figures['echoed_msgs_per_s']:9,.0f} msgs/s")
        for insecure in (False, True):
            figures = engine(args.calls, insecure)
            name = "insecure=True" if insecure else "default (CURVE)"
            print(f"round {round_} engine {name:15s} {figures['calls_per_s']:9,.0f} calls/s, "
                  f"one call p50 {figures['one_call_p50_us']:6.0f} us")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
