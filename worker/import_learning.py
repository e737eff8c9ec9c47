"""Learned imports: a fork-mode library imports what its children keep importing.

    child, after its call:  len(sys.modules) changed? -> the names its library lacks
                            travel back with the result (ForkExecutor strips them)
    library, between forks: offer(names) -> pending
                            learn(): a probe child (forked) imports the pending names one
                            by one, reporting per name "ok", "failed: ..." or "started
                            threads"; the library imports only the clean ones, so every
                            later child starts with them; the spare is re-forked
    manager <--ImportsLearned(learned, rejected)-- library (once per instance and name)

Why: a function that triggers an import its library never made (``np.random`` in numpy 2
loads ``numpy.random`` lazily on attribute access, which no reading of bytecode can see)
pays that import in every forked child. The check in the child is one ``len()`` when
nothing was imported, a pass over ``sys.modules`` keys when something was.

A name whose import fails, crashes, hangs or starts threads in the probe is never learned
(a library must stay single-threaded to fork safely) and is reported once. The probe runs
the imports in a throw-away fork, so the library itself never runs an import that might
misbehave. Off per library with ``Library(..., learn_imports=False)``.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable

__all__ = ["ImportLearner", "thread_count", "PROBE_TIMEOUT"]

PROBE_TIMEOUT = 60.0  # seconds a probe may take to import what a call imported


def thread_count() -> int:
    """Threads of this process, native ones included (Linux: /proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class ImportLearner:
    """What the library knows it has imported, what children reported, what was refused."""

    def __init__(self) -> None:
        self.rejected: dict[str, str] = {}  # name -> why it is not learned
        self.learned: list[str] = []
        self._pending: set[str] = set()
        self._snapshot()

    def _snapshot(self) -> None:
        modules = sys.modules
        self._known = frozenset(modules) | frozenset(self.rejected)
        self._count = len(modules)

    # --- in the forked child ----------------------------------------------------------

    def new_in_child(self) -> tuple[str, ...] | None:
        """The modules this child imported that its library had not (None: none)."""
        modules = sys.modules
        if len(modules) == self._count:
            return None
        known = self._known
        new = tuple(name for name, module in list(modules.items())
                    if name not in known and getattr(module, "__spec__", None) is not None)
        return new or None

    # --- in the library ---------------------------------------------------------------

    def offer(self, names: Iterable[str]) -> None:
        known = self._known
        for name in names:
            if type(name) is str and name not in known:
                self._pending.add(name)

    def pending(self) -> bool:
        return bool(self._pending)

    def learn(self) -> tuple[list[str], dict[str, str]]:
        """Import the pending names that behave in a probe; (learned now, rejected now)."""
        names = sorted(self._pending)  # a package sorts before its submodules
        self._pending.clear()
        verdicts = _probe(names)
        learned: list[str] = []
        rejected: dict[str, str] = {}
        threads = thread_count()
        for name in names:
            reason = verdicts.get(name)
            if reason is None:
                try:
                    importlib.import_module(name)
                except BaseException as exc:  # the probe said it works; refuse it anyway
                    reason = f"failed: {type(exc).__name__}: {exc}"
            if reason is None:
                learned.append(name)
            else:
                rejected[name] = reason
        if thread_count() > threads:  # a clean module pulled in one that starts threads
            print("serverless: learned imports started threads in the library; forks "
                  "from a threaded process may deadlock", file=sys.stderr, flush=True)
        self.learned += learned
        self.rejected.update(rejected)
        if learned:  # as at start-up: children then leave the new objects' pages shared
            gc.collect()
            gc.freeze()
        self._snapshot()
        return learned, rejected


def _probe(names: list[str]) -> dict[str, str]:
    """Import ``names`` in a forked child; name -> why not (absent: it imported cleanly)."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # else the probe writes the library's buffered output again
        except (OSError, ValueError, AttributeError):
            pass
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            verdicts = {}
            for name in names:
                before = thread_count()
                try:
                    importlib.import_module(name)
                except BaseException as exc:
                    verdicts[name] = f"failed: {type(exc).__name__}: {exc}"
                    continue
                if thread_count() > before:
                    verdicts[name] = "its import started threads"
            data = pickle.dumps(verdicts)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    data = bytearray()
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                reason = f"its import did not finish within {PROBE_TIMEOUT:.0f} s"
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                reason = "its import crashed the process"
                break
            data += chunk
    finally:
        os.close(read_fd)
    try:
        return pickle.loads(data)
    except Exception:
        return {name: reason for name in names}
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
