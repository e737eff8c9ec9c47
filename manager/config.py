"""The manager's settings, in one dataclass (``Manager(**options)`` fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from serverless.protocol import MAX_MESSAGE_BYTES
from serverless.security import check_secret_options, require_secret

from .policy import SchedulingPolicy

__all__ = ["ManagerConfig"]


@dataclass
class ManagerConfig:
    """Settings of a :class:`~serverless.Manager`.

    host, port: where workers connect (port 0: a free port, see ``Manager.address``).
    local_workers: worker processes the manager starts on this machine (None: one, with
        all of this machine's cores; 0: none, serve remote workers only).
    local_cores, local_memory_mb: what the local workers offer in all (None: the machine's).
    log_dir: where local workers write library logs (None: a new temporary directory).
    heartbeat_interval, heartbeat_timeout: seconds; a worker silent for the timeout is lost.
    max_retries: how often a call lost with its worker or instance is retried elsewhere.
    call_grace: seconds past its running calls' timeout that an instance may return nothing
        before the manager writes it off as hung (stops it, retries its calls); calls with
        no timeout are never written off this way.
    max_start_failures, start_backoff: a library that fails to start this many times in a row
        is marked failed; between attempts wait start_backoff * 2**(n-1) seconds.
    max_message_bytes: the largest message accepted from a peer (zmq drops a connection
        that sends more); a call whose result is larger fails with ResultTooLarge, one whose
        arguments are larger is refused by ``call()`` (ArgumentsTooLarge). Calls to a worker
        go in batches under the worker's own limit (``--max-message-bytes``).
    secret: authenticates workers and encrypts traffic (CURVE keys derived from it), on
        loopback too: None or True (the default: generate one for this run; local workers
        get it by themselves), or the secret itself (str or bytes, 16+ characters). Workers
        read it from ``Manager.secret_file``.
    secret_file: read the secret from this file (mode 0600, yours); if the file does not
        exist, a new secret is generated and written there. See docs/security.md.
    worker_keys: an allow-list file of per-worker public keys (``serverless.worker_keys``):
        workers started with ``--key-file`` are admitted while their key is listed; delete a
        line to refuse that node from then on, without rotating the secret.
    insecure: run with no secret at all (loopback only). Every local user of the machine
        can then connect, receive code and arguments and run code in your program; a
        warning says so when the manager starts.
    policy: which instance gets calls and where new instances go, and how many calls (and
        bytes of arguments) an instance and a worker may hold.
    max_queued: the most calls that may be unfinished at once (queued in the manager or
        running); None: no cap. Each holds its pickled arguments in the manager's memory
        until it ends, so this bounds the manager's memory under a burst.
    queue_full: what ``call()``, ``submit()`` and ``map()`` do at ``max_queued``: "block"
        (wait for calls to finish; ``map()`` hands the loop what it made so far first) or
        "raise" (:class:`~serverless.QueueFull` at once, nothing queued; ``map()`` queues
        all of its calls or none). A done-callback running on the manager's own thread
        never blocks: it is let through.
    upload_cap: transfers of input files one source (the manager, a worker) serves at once.
    forward_output: also print what calls write to stdout and stderr on this program's
        stdout, each line prefixed ``(library#instance)`` (off by default: every chunk of
        output is then a message to the manager). The instance logs keep it either way.
    """

    host: str = "127.0.0.1"
    port: int = 0
    local_workers: int | None = None
    local_cores: float | None = None
    local_memory_mb: int | None = None
    log_dir: Path | None = None
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 15.0
    max_retries: int = 3
    call_grace: float = 30.0
    max_start_failures: int = 3
    start_backoff: float = 0.5
    max_message_bytes: int = MAX_MESSAGE_BYTES
    policy: SchedulingPolicy = field(default_factory=SchedulingPolicy)
    secret: str | bytes | bool | None = field(default=None, repr=False)
    secret_file: Path | None = None
    max_queued: int | None = None
    queue_full: str = "block"
    upload_cap: int = 4
    worker_keys: Path | None = None
    insecure: bool = False
    forward_output: bool = False

    def __post_init__(self) -> None:
        if self.max_queued is not None and self.max_queued < 1:
            raise ValueError("max_queued must be >= 1 (or None: no cap)")
        if self.queue_full not in ("block", "raise"):
            raise ValueError('queue_full must be "block" or "raise"')
        if self.local_workers is not None and self.local_workers < 0:
            raise ValueError("local_workers must be >= 0")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        if not self.call_grace > 0:  # also refuses NaN
            raise ValueError("call_grace must be positive seconds")
        if self.max_retries < 0 or self.max_start_failures < 1:
            raise ValueError("max_retries must be >= 0 and max_start_failures >= 1")
        if self.upload_cap < 1:
            raise ValueError("upload_cap must be >= 1")
        if self.log_dir is not None:
            self.log_dir = Path(self.log_dir).expanduser()
        if not 65536 <= self.max_message_bytes <= 2**62:
            raise ValueError("max_message_bytes must be between 64 KiB and 2**62")
        if self.secret_file is not None:
            self.secret_file = Path(self.secret_file).expanduser()
        check_secret_options(self.secret, self.secret_file, self.insecure)
        if self.worker_keys is not None:
            self.worker_keys = Path(self.worker_keys).expanduser()
            if self.insecure:
                raise ValueError("worker_keys needs a secret: do not pass insecure=True")
        require_secret(self.host, not self.insecure)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
