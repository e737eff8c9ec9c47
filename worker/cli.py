"""``serverless-worker HOST:PORT``: start a worker agent that serves a manager.

Run one per node (a cluster job, a Parsl block, or by hand); it connects to the manager over
TCP, offers ``--cores`` and ``--memory``, runs library instances as the manager deploys them
and exits when the manager shuts down or is lost. Library logs (what calls print) are
written under ``--workdir``.

A worker needs the manager's secret: ``--secret-file FILE`` (or ``SERVERLESS_SECRET_FILE=FILE``
in the environment), FILE holding the same secret with mode 0600; the secret itself is never
accepted on the command line, where ``ps`` would show it. Without one it refuses to start
unless given ``--insecure`` (for a manager started with ``insecure=True``): a worker runs
whatever its manager sends, so it must know it talks to the real one, which CURVE proves
(also after a reconnect, when someone else may have bound the freed port). Before serving,
the worker checks that the manager accepts its key and says so in words if not (exit
code 4).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil

from serverless.errors import SecurityError
from serverless.protocol import MAX_MESSAGE_BYTES
from serverless.safe_files import private_dir
from serverless.security import (
    SECRET_FILE_ENV,
    CurveKeys,
    derive_keys,
    read_secret_file,
    require_secret,
)
from serverless.tempdirs import run_directory
from serverless.transport import parse_address, probe_handshake, raise_descriptor_limit
from serverless.worker_keys import KEY_FILE_ENV, read_worker_key

from .agent import EXIT_REJECTED, WorkerAgent, WorkerConfig
from .processes import die_with_parent

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serverless-worker",
        description="Serve a serverless manager: run its library instances on this node.",
    )
    parser.add_argument("manager", help="the manager's address, HOST:PORT (Manager.address)")
    parser.add_argument("--cores", type=float, default=float(os.cpu_count() or 1),
                        help="cores to offer (default: all of this node's)")
    parser.add_argument("--memory", type=int, default=psutil.virtual_memory().total // 2**20,
                        metavar="MB", help="memory to offer in MB (default: all)")
    parser.add_argument("--name", default=None,
                        help="a name for this worker (default: hostname-pid)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where library logs go (default: a new temporary directory)")
    parser.add_argument("--env-dir", type=Path, default=None, metavar="DIR",
                        help="where environments are unpacked, once per node: give every "
                             "worker of a node the same one (default: $SERVERLESS_ENV_DIR, "
                             "else ~/.cache/serverless/environments)")
    parser.add_argument("--connect-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up if the manager does not answer within this time")
    parser.add_argument("--secret-file", type=Path, default=None, metavar="FILE",
                        help="the manager's secret, in a file only you can read (default: "
                             f"${SECRET_FILE_ENV}; none: connect without a secret)")
    parser.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                        help="this worker's own key (python -m serverless.worker_keys new), "
                             f"instead of the secret (default: ${KEY_FILE_ENV})")
    parser.add_argument("--insecure", action="store_true",
                        help="connect without a secret, to a manager started with "
                             "insecure=True: anyone who can take the manager's port could "
                             "then run code here (loopback only)")
    parser.add_argument("--secret", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)
    parser.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES, metavar="N",
                        help="the largest message accepted from the manager")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="where input files are cached (default: WORKDIR/cache; "
                             "cache='forever' files go to a per-user directory, see --forever-dir)")
    parser.add_argument("--forever-dir", type=Path, default=None, metavar="DIR",
                        help="the node's cache of cache='forever' files, shared by its workers "
                             "(default: $XDG_CACHE_HOME/serverless/files)")
    parser.add_argument("--disk", type=int, default=None, metavar="MB",
                        help="the cache's size limit; least recently used files not in use are "
                             "evicted to make room (default: no limit)")
    parser.add_argument("--transfer-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a file source silent this long is abandoned for another")
    parser.add_argument("--die-with-parent", type=int, default=None, metavar="PID",
                        help=argparse.SUPPRESS)  # set by a manager for its local workers
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


class _RefuseSecret(argparse.Action):
    """``--secret VALUE`` would put the secret in ``ps`` output: refuse, without echoing it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.exit(2, "serverless-worker: the secret is never given on the command line "
                       "(ps shows it to every user); use --secret-file FILE or "
                       f"{SECRET_FILE_ENV}=FILE\n")


def _curve_keys(secret_file: Path | None, key_file: Path | None,
                insecure: bool) -> CurveKeys | None:
    """The keys from ``--secret-file``/``--key-file`` or the environment (None:
    ``--insecure``); the variables are removed so that library processes and what they
    start do not inherit them."""
    from_env = os.environ.pop(SECRET_FILE_ENV, None)
    key_from_env = os.environ.pop(KEY_FILE_ENV, None)
    key_path = key_file or (Path(key_from_env) if key_from_env else None)
    path = secret_file or (Path(from_env) if from_env else None)
    if key_path is not None:
        if path is not None or insecure:
            raise SecurityError("give one of --key-file, --secret-file and --insecure")
        return read_worker_key(key_path)
    if path is None:
        if insecure:
            return None
        raise SecurityError(
            "no secret: give --secret-file FILE (or SERVERLESS_SECRET_FILE=FILE), FILE "
            "holding the manager's secret (Manager.secret_file); a worker without one would "
            "run code from anyone who takes the manager's port. --insecure connects without "
            "one, to a manager started with insecure=True (loopback only)")
    if insecure:
        raise SecurityError("give a secret file or --insecure, not both")
    return derive_keys(read_secret_file(path.expanduser()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.disk is not None and args.disk < 0:
        print("serverless-worker: --disk must be >= 0 MB", file=sys.stderr)
        return 2
    if args.cores <= 0 or args.memory < 0:
        print("serverless-worker: --cores must be > 0 and --memory >= 0", file=sys.stderr)
        return 2
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent, signal.SIGTERM)
    raise_descriptor_limit()
    try:
        keys = _curve_keys(args.secret_file, args.key_file, args.insecure)
        if args.insecure:
            require_secret(parse_address(args.manager)[0], False)
        workdir = (private_dir(args.workdir, "--workdir") if args.workdir is not None
                   else None)
    except (SecurityError, ValueError) as exc:
        print(f"serverless-worker: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    refused = probe_handshake(args.manager, keys, args.connect_timeout)
    connect_timeout = max(1.0, args.connect_timeout - (time.monotonic() - started))
    if refused:
        print(f"serverless-worker: {refused}", file=sys.stderr)
        return EXIT_REJECTED
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    workdir = workdir or run_directory("worker")
    logging.getLogger("serverless.worker").info("library logs in %s", workdir)
    if args.die_with_parent is None:  # started by hand: say where it writes, at any log level
        print(f"serverless-worker: library logs in {workdir}; connecting to {args.manager} "
              f"(gives up after {args.connect_timeout:.0f} s)", file=sys.stderr, flush=True)
    config = WorkerConfig(
        manager=args.manager,
        cores=args.cores,
        memory_mb=args.memory,
        name=name,
        workdir=workdir,
        connect_timeout=connect_timeout,
        max_message_bytes=args.max_message_bytes,
        curve_keys=keys,
        announce=args.die_with_parent is None,
        cache_dir=args.cache_dir,
        forever_dir=args.forever_dir,
        disk_mb=args.disk,
        transfer_timeout=args.transfer_timeout,
    )
    if args.env_dir is not None:
        config.env_dir = args.env_dir.expanduser().absolute()
    return WorkerAgent(config).run()


if __name__ == "__main__":
    sys.exit(main())
