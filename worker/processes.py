"""Small process helpers shared by the worker agent and the library runtime."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping

try:
    import setproctitle
except ImportError:  # a library process in an environment without it: titles are cosmetic
    setproctitle = None

__all__ = ["die_with_parent", "parent_death_signal", "set_title", "thread_limit_env",
           "library_environment", "THREAD_VARIABLES"]

_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(expected_parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    If the parent is already gone (``expected_parent`` given and no longer our parent), exit.
    Elsewhere than Linux this does nothing; the pipe-EOF rule still ends the process.
    """
    if not sys.platform.startswith("linux"):
        return
    _load_libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def parent_death_signal(sig: int = signal.SIGKILL) -> Callable[[], object]:
    """A function that does ``prctl(PR_SET_PDEATHSIG, sig)`` for the process calling it.

    Everything is looked up now, so a forked child calling it runs one foreign call and
    touches no shared Python objects beyond that. A no-op elsewhere than Linux.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    return functools.partial(_load_libc().prctl, _PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _load_libc() -> ctypes.CDLL:
    # the running program's own symbols include libc's; ctypes.util.find_library would
    # import subprocess, tempfile and random into every library process, and random's
    # after-fork hook then reseeds in each forked call, at a cost to every child
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def set_title(title: str) -> None:
    """Name this process in ``ps`` (prefixed with ``serverless``)."""
    if setproctitle is not None:
        setproctitle.setproctitle(f"serverless {title}")


THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_limit_env(cores: float, slots: int) -> dict[str, str]:
    """Thread-count variables so that ``slots`` concurrent calls share ``cores`` without
    oversubscription (each call's BLAS/OpenMP pool gets its share, at least one thread)."""
    share = max(1, int(cores // max(1, slots)))
    return {name: str(share) for name in THREAD_VARIABLES}


def library_environment(inherited: Mapping[str, str], cores: float, slots: int,
                        library_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a library process: the worker's, then the thread limits of its
    slots (over any node-wide setting, which knows nothing of slots), then the library's
    own ``env`` (the user's explicit choice wins)."""
    environment = dict(inherited)
    environment.update(thread_limit_env(cores, slots))
    environment.update(library_env)
    return environment
