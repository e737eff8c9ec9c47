"""The worker agent's handle on one library process: start it, talk to it, stop it.

The process is a fresh interpreter (``python -m serverless.worker.library_runtime``), never
a fork of the agent. It gets one end of a socketpair; the agent keeps the other end
non-blocking, with an outbox so that a slow library never blocks the agent's loop.
Its stdout and stderr (and those of its forked call children) go to a log file. The
handle also owns the instance's crash journal (:mod:`.journal`), read once the process
has ended, and a pidfd that becomes readable when it exits, so the agent's loop learns of
an exit without waiting for it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

from serverless.protocol import StreamDecoder, pack_stream
from serverless.safe_files import open_log

from .env_launch import launch_command, launch_variables
from .journal import create_journal, read_journal
from .processes import library_environment

__all__ = ["LibraryHandle"]



class LibraryHandle:
    """One running library instance process."""

    def __init__(
        self,
        instance_id: int,
        library: str,
        python: str | None,
        env: dict[str, str],
        cores: float,
        slots: int,
        log_path: Path,
        max_message_bytes: int,
        environment: dict | None = None,
        mode: str = "fork",
    ) -> None:
        self.instance_id = instance_id
        self.library = library
        self.mode = mode
        self.log_path = log_path
        self.ready = False
        self.stopping = False
        self.decoder = StreamDecoder(max_message_bytes)
        self._outbox: deque[memoryview] = deque()
        parent_sock, child_sock = socket.socketpair()
        self.sock = parent_sock
        self.sock.setblocking(False)
        fd = child_sock.fileno()
        self._journal_fd = create_journal(f"serverless-journal-{instance_id}")
        full_env = library_environment(os.environ, cores, slots, env)
        if environment is None:
            command = [python or sys.executable, "-m", "serverless.worker.library_runtime",
                       str(fd), str(os.getpid()), str(self._journal_fd)]
        else:  # env_launch prepares the environment (maybe a long unpack), then execs into it
            command = launch_command(fd, instance_id, self._journal_fd)
            full_env.update(launch_variables(environment, env))
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(open_log(log_path), "ab", buffering=0) as log:  # O_NOFOLLOW, 0600
            self.process = subprocess.Popen(
                command,
                pass_fds=(child_sock.fileno(), self._journal_fd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=full_env,
                start_new_session=True,  # a terminal's Ctrl-C goes to the agent only
            )
        child_sock.close()
        self.exit_fd = _pidfd(self.process.pid)  # readable once the process has exited
        self.kill_at = 0.0  # when the agent kills it if it has not exited (0: not decided)

    def journal(self) -> tuple[list[tuple], tuple[int, ...] | None]:
        """What the ended process had not sent and was running (see :mod:`.journal`)."""
        return read_journal(self._journal_fd)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, frames: list) -> None:
        """Queue one message's frames; write as much as the socket takes now."""
        self._outbox.extend(memoryview(b) for b in pack_stream(frames))
        self.flush()

    def wants_write(self) -> bool:
        return bool(self._outbox)

    def flush(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                sent = self.sock.sendmsg(list(outbox)[:64])
                while sent and outbox:
                    head = outbox[0]
                    if sent >= len(head):
                        sent -= len(head)
                        outbox.popleft()
                    else:
                        outbox[0] = head[sent:]
                        sent = 0
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            outbox.clear()  # the process is gone; its EOF will be seen by the loop

    def read(self) -> list[list[bytes | bytearray]] | None:
        """Messages that arrived, or None at EOF (the process closed its end or died)."""
        try:
            return self.decoder.receive(self.sock)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None

    def wait_or_kill(self, grace: float = 2.0) -> int:
        """Wait up to ``grace`` seconds for the process to exit, then kill it; its exit
        code. Blocks: the agent's loop uses :meth:`poll` and :attr:`exit_fd` instead."""
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def poll(self) -> int | None:
        """The exit code if the process has exited (reaped now), else None."""
        return self.process.poll()

    def kill(self) -> None:
        """Kill the process and the calls it forked (its children die with it)."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 2.0) -> int:
        """Close the socket (the library kills its children and exits), escalating to SIGKILL."""
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        return self.wait_or_kill(grace)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def release(self) -> None:
        """Close what the handle holds besides the socket (the process has ended)."""
        self.close()
        for fd in (self._journal_fd, self.exit_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._journal_fd = self.exit_fd = -1


def _pidfd(pid: int) -> int:
    """A pidfd for ``pid`` (Linux 5.3+), or -1 where there is none (the agent's tick
    then notices the exit)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1
