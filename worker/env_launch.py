"""Start a library process in an environment: prepare it on this node, then become its interpreter.

The agent starts ``python -m serverless.worker.env_launch FD AGENT_PID INSTANCE_ID``
(its own interpreter) instead of the library runtime when a Deploy names an environment,
so that a long unpack never blocks the agent's loop::

    SPEC (JSON) --> an archive: prepare_environment() (unpack once per node, under the lock)
                    a directory: used where it is
                --> exec ENV/bin/python env_bootstrap.py serverless.worker.library_runtime FD AGENT_PID
                    (same process, same
                    socket: the Deploy the agent queued is read by the library runtime)
    any failure --> InstanceFailed(INSTANCE_ID, the reason, traceback, fatal) on FD, exit 3

``SPEC`` is the variable ``SERVERLESS_LAUNCH`` (not the command line: it holds the
library's ``env``, which ``ps`` must not show): ``kind`` ("archive" or "directory"),
``path`` (the local archive, or the directory), ``id`` (the archive's content name),
``env_dir``, ``check`` (hash the archive before unpacking it: true when it was not verified
on arrival) and ``user_env`` (the library's ``env``, applied last: the user's explicit
choice, even of ``PYTHONPATH``, wins over the environment's defaults).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from pathlib import Path

from serverless.protocol import InstanceFailed, encode, pack_stream

from .environments import (
    EnvironmentUnpackError,
    PreparedEnvironment,
    environment_root,
    environment_variables,
    prepare_environment,
)
from .processes import die_with_parent

__all__ = ["main", "bootstrap_spec", "launch_command", "launch_variables", "launch_spec",
           "archive_needed"]

EXIT_START_FAILED = 3
BOOTSTRAP_VARIABLE = "SERVERLESS_BOOTSTRAP"
LAUNCH_VARIABLE = "SERVERLESS_LAUNCH"


def archive_needed(environment: dict | None, env_dir: Path) -> tuple | None:
    """The FileSpec of the archive this worker must fetch (through its cache) before the
    instance can start, or None: no environment, a directory, or already unpacked here."""
    if not environment or environment["kind"] != "archive" or not environment.get("file"):
        return None
    if (env_dir / f"{environment['id']}.ready").exists():
        return None  # unpacked on this node already: no transfer at all
    return tuple(environment["file"])


def launch_spec(environment: dict | None, env_dir: Path, local: Path | None = None) -> dict | None:
    """The launch spec of a Deploy's ``options["environment"]`` (None: no environment).

    ``local`` is the archive's verified copy on this worker; without one the archive is read
    where the manager declared it (a path this node sees) and hashed before it is unpacked.
    """
    if environment is None:
        return None
    spec = {"kind": environment["kind"], "path": environment["path"], "id": environment["id"],
            "env_dir": str(env_dir), "check": local is None, "python": environment.get("python")}
    if local is not None:
        spec["path"] = str(local)
    return spec


def launch_command(fd: int, instance_id: int, journal_fd: int) -> list[str]:
    """The command the agent runs for an instance in an environment (``journal_fd``: the
    instance's crash journal, handed on to the library runtime)."""
    return [sys.executable, "-m", "serverless.worker.env_launch", str(fd), str(os.getpid()),
            str(instance_id), str(journal_fd)]


def launch_variables(spec: dict, user_env: dict[str, str]) -> dict[str, str]:
    """The variables that carry ``spec`` and the library's ``env`` to :func:`main`."""
    return {LAUNCH_VARIABLE: json.dumps({**spec, "user_env": dict(user_env)})}


def bootstrap_spec(python: str | None = None, instance_id: int = -1) -> str:
    """Where this interpreter's serverless (and its pure-Python dependencies) live, for
    env_bootstrap.py in another interpreter; with the Python version (``"3.11"``) the
    manager's functions need, and the instance to fail if the environment's differs."""
    import cloudpickle

    import serverless
    import serverless.worker

    fallback = {"cloudpickle": os.path.dirname(cloudpickle.__file__)}
    try:
        import dill  # the fallback pickler; pure Python too
        fallback["dill"] = os.path.dirname(dill.__file__)
    except ImportError:
        pass
    return json.dumps({
        "packages": {"serverless": os.path.dirname(serverless.__file__),
                     "serverless.worker": os.path.dirname(serverless.worker.__file__)},
        "fallback": fallback,
        "python": python,
        "instance": instance_id,
    })


def prepare(spec: dict) -> PreparedEnvironment:
    """The ready environment that ``spec`` names (unpacked on this node if need be)."""
    path = Path(spec["path"])
    if spec["kind"] == "directory":
        return environment_root(path)
    check = _hash_check(spec["id"]) if spec.get("check") else None
    return prepare_environment(path, spec["id"], Path(spec["env_dir"]), verify=check,
                               progress=lambda text: print(f"serverless: {text}", flush=True))


def _hash_check(content_id: str):
    def verify(archive: Path) -> None:
        from serverless.environment import content_name
        try:
            found = content_name(archive)
        except OSError as exc:
            raise EnvironmentUnpackError(f"cannot read the environment archive: {exc}") from exc
        if found != content_id:
            raise EnvironmentUnpackError(
                f"environment archive {archive} changed since it was declared "
                f"(expected {content_id}, found {found})")
    return verify


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd, agent_pid, instance_id = int(argv[0]), int(argv[1]), int(argv[2])
    journal = argv[3:4]  # the crash journal's fd, passed on as is (inherited across exec)
    die_with_parent(agent_pid)
    try:
        spec = json.loads(os.environ.pop(LAUNCH_VARIABLE))
        prepared = prepare(spec)
        bootstrap = os.path.join(os.path.dirname(os.path.abspath(__file__)), "env_bootstrap.py")
        env = environment_variables(os.environ, prepared)
        env.update(spec.get("user_env", {}))
        env[BOOTSTRAP_VARIABLE] = bootstrap_spec(spec.get("python"), instance_id)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(prepared.python, [str(prepared.python), bootstrap,
                                    "serverless.worker.library_runtime", str(fd), str(agent_pid),
                                    *journal], env)
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, EnvironmentUnpackError) else f"{type(exc).__name__}: {exc}"
        with socket.socket(fileno=fd) as sock:
            sock.setblocking(True)
            sock.sendall(b"".join(pack_stream(encode(InstanceFailed(
                instance_id, f"environment: {reason}", traceback.format_exc(), True)))))
        return EXIT_START_FAILED
    return 0  # not reached: execve replaced this process


if __name__ == "__main__":
    sys.exit(main())
