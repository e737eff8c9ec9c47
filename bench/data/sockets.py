"""Bytes on TCP connections, as the kernel counts them (``ss -tinp``): a measure of what
crossed each link that does not depend on serverless's own counters.

:func:`snapshot` lists every established TCP socket of the given processes with its
local and peer ports and the kernel's ``bytes_acked`` (sent and acknowledged) and
``bytes_received``. Connections closed before the snapshot are not counted, so take it
while the run's connections are still open.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["Socket", "snapshot", "available"]

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
