"""The crash journal: what a library instance is running, and the results it has not sent.

A library sends results in batches (direct mode at the end of a turn, fork mode holding
them while it is busy), so when an instance dies, some calls have finished without their
result having left. Their results, and the ids of the calls running at that moment, are
what the agent needs to tell the manager the truth: results are delivered, only the calls
that were running are charged for the crash, and a direct-mode call that killed its
instance fails as that call's crash. The journal keeps both in shared memory, where they
outlive the process, at the cost of a few memory writes per call and no system call::

    agent:   memfd_create, ftruncate ------ fd passed at start ------> library: mmap (writer)
    library: before a call:   running ids <- [call ids]           (header)
             a result:        append (call id, status, duration, payload)  (records)
             results sent:    records emptied
    agent:   the library ended (EOF): mmap (reader), read_journal -> (entries, running ids)

The header is written after the record it covers, so a reader sees whole records only. A
result both sent and journaled (the library died between the two) reaches the manager
twice; the manager keeps the first and ignores the other, as for any stale result.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable

from serverless.errors import ProtocolError

__all__ = ["Journal", "create_journal", "read_journal", "without_results", "JOURNAL_BYTES",
           "MAX_RUNNING"]

JOURNAL_BYTES = 1 << 20  # virtual size; only the pages written are ever allocated
_HEADER = 4096
_USED = struct.Struct("=Q")  # offset 0: bytes of records after the header
_COUNT = struct.Struct("=Q")  # offset 8: how many running ids follow (UNKNOWN: too many)
_ONE = struct.Struct("=QQ")  # offset 8: a count of 1 and the id, in one write (direct mode)
_ID = struct.Struct("=Q")
_RECORD = struct.Struct("=QIdI")  # a result: call id, status, duration, payload length
MAX_RUNNING = (_HEADER - 16) // _ID.size
_RUNNING: dict[int, struct.Struct] = {}  # layouts of the count and that many ids, made once
_UNKNOWN = (1 << 64) - 1


def create_journal(name: str) -> int:
    """A new journal's file descriptor (close-on-exec; pass it to the library explicitly)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, JOURNAL_BYTES)
    except OSError:
        os.close(fd)
        raise
    return fd


class Journal:
    """The library's side: records results and running calls (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)
        os.close(fd)
        self._used = 0
        self._running: list[int] = []

    def record(self, entry: tuple) -> bool:
        """Keep a result until it is sent; False if it does not fit (send everything now)."""
        payload = entry[2]
        if type(payload) is not bytes:
            return False  # out-of-band buffers: large, not worth copying, send at once
        view = self._map
        start = _HEADER + self._used
        end = start + _RECORD.size + len(payload)
        if end > JOURNAL_BYTES:
            return False
        _RECORD.pack_into(view, start, entry[0], entry[1], entry[3], len(payload))
        view[start + _RECORD.size:end] = payload
        self._used = end - _HEADER
        _USED.pack_into(view, 0, self._used)
        return True

    def sent(self) -> None:
        """Every result recorded so far has been sent."""
        if self._used:
            self._used = 0
            _USED.pack_into(self._map, 0, 0)

    def running_one(self, call_id: int) -> None:
        """Direct mode: ``call_id`` runs now (0: none), in one write."""
        _ONE.pack_into(self._map, 8, 1 if call_id else 0, call_id)

    def started(self, call_id: int) -> None:
        """Fork mode: ``call_id`` runs now, beside the others."""
        self._running.append(call_id)
        self._write_running()

    def ended(self, call_id: int) -> None:
        """Fork mode: ``call_id`` no longer runs."""
        try:
            self._running.remove(call_id)
        except ValueError:
            return
        self._write_running()

    def _write_running(self) -> None:
        running = self._running
        count = len(running)
        if count > MAX_RUNNING:
            _COUNT.pack_into(self._map, 8, _UNKNOWN)
            return
        layout = _RUNNING.get(count)
        if layout is None:
            layout = _RUNNING[count] = struct.Struct(f"=Q{count}Q")  # the count, then the ids
        layout.pack_into(self._map, 8, count, *running)

    def close(self) -> None:
        self._map.close()


def read_journal(fd: int) -> tuple[list[tuple], tuple[int, ...] | None]:
    """The agent's side, once the library has ended: the result entries it had not sent
    and the ids of the calls it was running (None: unknown). Malformed content raises
    ProtocolError; payloads stay opaque bytes, as in any Results batch."""
    with mmap.mmap(fd, JOURNAL_BYTES, prot=mmap.PROT_READ) as view:
        (used,) = _USED.unpack_from(view, 0)
        (count,) = _COUNT.unpack_from(view, 8)
        running: tuple[int, ...] | None = None
        if count <= MAX_RUNNING:
            running = struct.unpack_from(f"={count}Q", view, 16)
        if used > JOURNAL_BYTES - _HEADER:
            raise ProtocolError("journal: record area over its size")
        entries = []
        pos, end = _HEADER, _HEADER + used
        while pos < end:
            if pos + _RECORD.size > end:
                raise ProtocolError("journal: truncated record")
            call_id, status, duration, length = _RECORD.unpack_from(view, pos)
            pos += _RECORD.size
            if pos + length > end:
                raise ProtocolError("journal: truncated record")
            entries.append((call_id, status, view[pos:pos + length], duration))
            pos += length
        return entries, running


def without_results(running: Iterable[int] | None, entries: list[tuple]) -> tuple[int, ...] | None:
    """The running ids whose result is not among ``entries``."""
    if running is None:
        return None
    done = {entry[0] for entry in entries}
    return tuple(call_id for call_id in running if call_id and call_id not in done)
