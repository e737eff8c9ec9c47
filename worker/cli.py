"""``serverless-worker HOST:PORT``: start a worker agent that serves a manager.

Run one per node (a cluster job, a Parsl block, or by hand); it connects to the manager over
TCP, offers ``--cores`` and ``--memory``, runs library instances as the manager deploys them
and exits when the manager shuts down or is lost. Library logs (what calls print) are
written under ``--workdir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import psutil

from .agent import WorkerAgent, WorkerConfig
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
    parser.add_argument("--connect-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up if the manager does not answer within this time")
    parser.add_argument("--die-with-parent", type=int, default=None, metavar="PID",
                        help=argparse.SUPPRESS)  # set by a manager for its local workers
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.cores <= 0 or args.memory < 0:
        print("serverless-worker: --cores must be > 0 and --memory >= 0", file=sys.stderr)
        return 2
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent, signal.SIGTERM)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"serverless-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("serverless.worker").info("library logs in %s", workdir)
    config = WorkerConfig(
        manager=args.manager,
        cores=args.cores,
        memory_mb=args.memory,
        name=name,
        workdir=workdir,
        connect_timeout=args.connect_timeout,
    )
    return WorkerAgent(config).run()


if __name__ == "__main__":
    sys.exit(main())
