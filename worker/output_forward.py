"""``Manager(forward_output=True)``: what calls print also reaches the caller's terminal.

    call (child or instance) --write fd 1/2--> pipe --read by the library loop-->
        the instance log (as without forwarding)  +  Output(instance_id, chunk) --> agent
        --> manager, which prints each line prefixed ``(library#instance)``

Set up after the library's imports and setup (their output goes to the log only), before
the first fork, so forked children inherit the pipe as their stdout and stderr. The loop
drains the pipe in every pass before it sends results, so a call's output reaches the
manager before its result. Bounded: a chunk is at most :data:`OUTPUT_CHUNK` bytes, and a
call that prints faster than the loop forwards waits on the full pipe (64 KiB), as a
program writing to a slow terminal does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["OutputForwarder", "OUTPUT_CHUNK"]

OUTPUT_CHUNK = 65536


class OutputForwarder:
    """Owns the pipe behind fds 1 and 2; ``drain()`` logs and hands on what is in it."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        self._send = send
        self._log_fd = os.dup(2)  # the instance log, which fds 1 and 2 pointed at
        os.set_inheritable(self._log_fd, False)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.fd = read_fd
        for stream in (sys.stdout, sys.stderr):  # whole lines leave as they are printed
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)

    def drain(self) -> None:
        """Forward what the pipe holds now (never blocks)."""
        while True:
            try:
                data = os.read(self.fd, OUTPUT_CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self._log_fd, view):]
            self._send(data)
