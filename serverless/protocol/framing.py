"""Stream framing: length-prefixed frames for byte streams (agent <-> library, pipes).

Over zmq the frames of a message are the parts of a multipart message. Over a stream
socket or a pipe, :func:`pack_stream` writes a frame count, then a length and the bytes of
each frame; :class:`StreamDecoder` turns what is read back into frame lists, refusing a
message with too many frames or a frame over its limit.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Iterator, Sequence

from ..errors import ProtocolError
from .batches import MAX_BATCH_BUFFERS

if typing.TYPE_CHECKING:
    import socket

__all__ = ["pack_stream", "StreamDecoder", "STREAM_READ_SIZE", "BIG_FRAME", "MAX_STREAM_BYTES"]

_COUNT = struct.Struct("!I")
_LENGTH = struct.Struct("!Q")
STREAM_READ_SIZE = 1 << 16  # reads of 1 MiB made glibc mmap and munmap a buffer every time
BIG_FRAME = 1 << 20  # frames from this size on are read into a buffer of their own
_MAX_STREAM_FRAMES = 2 + MAX_BATCH_BUFFERS  # envelope, payload, out-of-band buffers
# A frame's limit on the local, trusted stream between an agent and its library processes:
# above the network's message limit, so that a result too large for the manager reaches
# the agent and fails only its call (ResultTooLarge) instead of ending the instance.
MAX_STREAM_BYTES = 1 << 31


def pack_stream(frames: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Buffers to write to a stream for one message: a frame count, then length + bytes each."""
    out: list[bytes | memoryview] = [_COUNT.pack(len(frames))]
    for frame in frames:
        out.append(_LENGTH.pack(len(frame)))
        out.append(frame)
    return out


class StreamDecoder:
    """Turns bytes read from a stream back into frame lists, one per message.

    A frame of :data:`BIG_FRAME` bytes or more gets a buffer of its own as soon as its
    length is known, and :meth:`receive` reads the rest of it straight into that buffer
    (one copy from the kernel, no growing buffer, no slicing); such a frame comes out as a
    ``bytearray``, smaller ones as ``bytes``.
    """

    def __init__(self, max_message_bytes: int = MAX_STREAM_BYTES) -> None:
        self._buffer = bytearray()  # read, not yet parsed (headers, small frames)
        self._max = max_message_bytes
        self._count = -1  # frames in the message being read; -1: its header is not in yet
        self._frames: list[bytes | bytearray] = []  # its frames so far
        self._big: bytearray | None = None  # a big frame being filled in place
        self._filled = 0

    def receive(self, sock: socket.socket) -> list[list[bytes | bytearray]] | None:
        """Read from ``sock`` once; the messages now complete, or None at EOF.

        The socket's exceptions (``BlockingIOError`` on a non-blocking one) go to the caller.
        """
        big = self._big
        if big is None:
            data = sock.recv(STREAM_READ_SIZE)
            return list(self.feed(data)) if data else None
        received = sock.recv_into(memoryview(big)[self._filled:])
        if not received:
            return None
        self._filled += received
        if self._filled < len(big):
            return []
        self._big = None
        self._frames.append(big)
        return list(self._parse())

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[list[bytes | bytearray]]:
        """Add ``data``; yield every message that is now complete."""
        view = memoryview(data)
        while True:
            big = self._big
            if big is None:
                self._buffer += view
                view = view[len(view):]
            else:
                take = min(len(view), len(big) - self._filled)
                big[self._filled:self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                if self._filled < len(big):
                    return
                self._big = None
                self._frames.append(big)
            yield from self._parse()
            if not view:
                return

    def _parse(self) -> Iterator[list[bytes | bytearray]]:
        buf = self._buffer
        pos = 0
        try:
            while True:
                if self._count < 0:
                    if len(buf) - pos < _COUNT.size:
                        return
                    (count,) = _COUNT.unpack_from(buf, pos)
                    if count > _MAX_STREAM_FRAMES:
                        raise ProtocolError(f"stream message with {count} frames")
                    self._count = count
                    pos += _COUNT.size
                while len(self._frames) < self._count:
                    if len(buf) - pos < _LENGTH.size:
                        return
                    (length,) = _LENGTH.unpack_from(buf, pos)
                    if length > self._max:
                        raise ProtocolError(f"stream frame of {length} bytes is over the limit")
                    start = pos + _LENGTH.size
                    if len(buf) - start >= length:
                        self._frames.append(bytes(buf[start:start + length]))
                        pos = start + length
                    elif length >= BIG_FRAME:  # all the rest of the buffer is its beginning
                        big = bytearray(length)
                        have = len(buf) - start
                        big[:have] = buf[start:]
                        self._big, self._filled = big, have
                        pos = len(buf)
                        return
                    else:
                        return
                frames, self._frames, self._count = self._frames, [], -1
                yield frames
        finally:
            del buf[:pos]
