"""Bytes on TCP connections, as the kernel counts them (``ss -tinp``): a measure of what
crossed each link that does not depend on serverless's own counters.

:func:`snapshot` lists every established TCP socket of the given processes with its
local and peer ports and the kernel's ``bytes_acked`` (sent and acknowledged) and
``bytes_received``. A snapshot misses connections already closed (a finished chunk
fetch), so :class:`Sampler` takes one every ``interval`` seconds during a run and keeps
each connection's largest counts: a lower bound (what a connection sent after its last
sample is missed), close to the truth for transfers that last many intervals.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

__all__ = ["Socket", "snapshot", "available", "Sampler"]

_PID = re.compile(r"pid=(\d+)")
_FIELD = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


@dataclass(frozen=True)
class Socket:
    pid: int
    local_port: int
    peer_port: int
    sent: int  # bytes_acked: sent and acknowledged by the peer
    received: int


def available() -> bool:
    return shutil.which("ss") is not None


def snapshot(pids: set[int]) -> list[Socket]:
    """The established TCP sockets of ``pids`` on loopback, with their byte counts."""
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                         text=True, timeout=30).stdout
    found = []
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2]):
        parts = head.split()
        if len(parts) < 4:
            continue
        owners = {int(p) for p in _PID.findall(head)}
        mine = owners & pids
        if not mine:
            continue
        fields = dict((k, int(v)) for k, v in _FIELD.findall(info))
        found.append(Socket(min(mine), _port(parts[2]), _port(parts[3]),
                            fields.get("bytes_acked", 0), fields.get("bytes_received", 0)))
    return found


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


class Sampler:
    """Snapshots in a thread; :meth:`stop` returns every connection seen, at its largest."""

    def __init__(self, pids: set[int], interval: float = 0.1) -> None:
        self.pids = set(pids)
        self.interval = interval
        self._seen: dict[tuple[int, int, int], Socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        for s in snapshot(self.pids):
            key = (s.pid, s.local_port, s.peer_port)
            old = self._seen.get(key)
            if old is None or (s.sent, s.received) >= (old.sent, old.received):
                self._seen[key] = s

    def stop(self) -> list[Socket]:
        self._stop.set()
        self._thread.join()
        self._take()
        return list(self._seen.values())
