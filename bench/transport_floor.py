"""The round trips a one-call-in-flight latency is made of, measured without the engine.

    python -m bench.transport_floor [-n N]

A call in flight crosses, there and back: a thread hand-off in the manager (the caller to
the loop thread, the loop thread to the caller), a ZeroMQ message over TCP loopback (the
manager's ROUTER to the worker's DEALER) and a local stream socket (the worker agent to the
library process). Each is timed here as a ping-pong of a 100-byte message, p50 and p90 of
the round trip:

    thread     two threads of one process, ``threading.Event`` each way
    pipe       two processes, a pipe each way
    socketpair two processes, one ``socket.socketpair`` (as agent and library talk)
    zmq_tcp    two processes, ROUTER and DEALER over TCP on 127.0.0.1 (as manager and worker)
    chain      three processes: ROUTER -> DEALER -> socketpair -> echo and back, the route
               of a call with no Python work on it: the floor of a direct-mode call's latency
               minus the manager's two thread hand-offs

Wake-ups dominate on virtual machines (an idle vCPU must be woken); so the engine's
latency is reported next to these figures, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from bench.machine import ROOT

__all__ = ["measure", "render"]

MESSAGE = b"x" * 100


def _summary(seconds: list[float]) -> dict[str, float]:
    seconds = sorted(seconds)
    return {"p50_us": statistics.median(seconds) * 1e6,
            "p90_us": seconds[int(len(seconds) * 0.9)] * 1e6}


def _timed(n: int, one_trip: Callable[[], None]) -> dict[str, float]:
    for _ in range(min(100, n)):  # warm-up
        one_trip()
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        one_trip()
        seconds.append(time.perf_counter() - started)
    return _summary(seconds)


def thread_round_trip(n: int) -> dict[str, float]:
    ping, pong = threading.Event(), threading.Event()
    stop = False

    def other() -> None:
        while True:
            ping.wait()
            ping.clear()
            if stop:
                return
            pong.set()

    thread = threading.Thread(target=other, daemon=True)
    thread.start()

    def trip() -> None:
        ping.set()
        pong.wait()
        pong.clear()

    try:
        return _timed(n, trip)
    finally:
        stop = True
        ping.set()
        thread.join(5)


def _echo_child(read_fd: int, write_fd: int) -> None:
    """In a forked child: echo what arrives on ``read_fd`` to ``write_fd`` until EOF."""
    try:
        while data := os.read(read_fd, 65536):
            os.write(write_fd, data)
    finally:
        os._exit(0)


def pipe_round_trip(n: int) -> dict[str, float]:
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_parent)
        os.close(to_parent)
        _echo_child(to_child, from_child)
    os.close(to_child)
    os.close(from_child)

    def trip() -> None:
        os.write(from_parent, MESSAGE)
        os.read(to_parent, 65536)

    try:
        return _timed(n, trip)
    finally:
        os.close(from_parent)
        os.close(to_parent)
        os.waitpid(pid, 0)


def _socketpair_echo() -> tuple[socket.socket, int]:
    """A socket whose other end a forked child echoes, and that child's pid."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        mine.close()
        _echo_child(theirs.fileno(), theirs.fileno())
    theirs.close()
    return mine, pid


def socketpair_round_trip(n: int) -> dict[str, float]:
    mine, pid = _socketpair_echo()

    def trip() -> None:
        mine.sendall(MESSAGE)
        mine.recv(65536)

    try:
        return _timed(n, trip)
    finally:
        mine.close()
        os.waitpid(pid, 0)


def _zmq_round_trip(n: int, relay: bool) -> dict[str, float]:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    peer = subprocess.Popen([sys.executable, "-m", "bench.transport_floor", "--peer",
                             f"tcp://127.0.0.1:{port}", *(["--relay"] if relay else [])],
                            env=env, cwd=str(ROOT))
    try:
        if not router.poll(30_000):
            raise RuntimeError("the peer process did not connect")
        identity, _hello = router.recv_multipart()

        def trip() -> None:
            router.send_multipart([identity, MESSAGE])
            router.recv_multipart()

        result = _timed(n, trip)
        router.send_multipart([identity, b""])  # the peer's stop signal
        peer.wait(10)
        return result
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        router.close()
        context.term()


def zmq_tcp_round_trip(n: int) -> dict[str, float]:
    return _zmq_round_trip(n, relay=False)


def chain_round_trip(n: int) -> dict[str, float]:
    return _zmq_round_trip(n, relay=True)


def _peer(endpoint: str, relay: bool) -> None:
    """The far end: a DEALER that echoes, or (relay) forwards to an echoing child and back."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)
    library = child = None
    if relay:
        library, child = _socketpair_echo()
    dealer.send(b"hello")
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    if library is not None:
        poller.register(library, zmq.POLLIN)
    try:
        while True:
            for sock, _ in poller.poll():
                if sock is dealer:
                    message = dealer.recv()
                    if not message:
                        return
                    if library is None:
                        dealer.send(message)
                    else:
                        library.sendall(message)
                else:
                    dealer.send(library.recv(65536))
    finally:
        if library is not None:
            library.close()
            os.waitpid(child, 0)
        dealer.close()
        context.term()


MEASURES: dict[str, Callable[[int], dict[str, float]]] = {
    "thread": thread_round_trip,
    "pipe": pipe_round_trip,
    "socketpair": socketpair_round_trip,
    "zmq_tcp": zmq_tcp_round_trip,
    "chain": chain_round_trip,
}


def measure(n: int = 2000) -> dict[str, dict[str, float]]:
    """Round-trip p50 and p90 (microseconds) of each hop in :data:`MEASURES`."""
    return {name: run(n) for name, run in MEASURES.items()}


def render(floors: dict[str, Any]) -> str:
    lines = ["transport floors, round trip of 100 bytes with no engine (p50 / p90):"]
    for name, figures in floors.items():
        lines.append(f"  {name:28s} {figures['p50_us']:9.1f} us  {figures['p90_us']:9.1f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_floor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="round trips per hop (default 2000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        _peer(args.peer, args.relay)
        return 0
    floors = measure(args.n)
    print(json.dumps(floors) if args.json else render(floors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
