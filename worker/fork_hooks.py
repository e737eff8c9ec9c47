"""A fast path for ``threading``'s after-fork hook in children of a single-threaded process.

``os.fork()`` runs ``threading._after_fork`` in every child: it builds new locks and walks
every thread object the parent knew, writing to each. In a forked call child those writes
are copy-on-write faults; for a library with many imports the hook was a large part of a
child's own CPU (docs/performance.md). When the parent had exactly one Python thread (the
forking one) there is nothing to rebuild: no other thread's lock can be held, no thread
object to mark stopped. :func:`cheap_threading_fork_hook` gives the hook a fast path for
exactly that case, checked in each child; any other child runs the full hook.

It rewrites a private stdlib function, so it is kept only because
``tests/test_fork_hooks.py`` proves it, child by child, on each Python the project
supports (3.10 to 3.13): the fast path is taken when and only when the parent had one
thread, and a child sees the same threading state (current and main thread, ``enumerate``,
new threads, pools, a normal interpreter exit) as with the full hook. This module imports
only the standard library, so that test can load it into any interpreter by path.
"""

from __future__ import annotations

import threading
import types
from typing import Any

__all__ = ["cheap_threading_fork_hook", "FAST_PATH_MARK"]

FAST_PATH_MARK = "_serverless_full_after_fork"  # the original hook, kept in threading

_FAST_AFTER_FORK = """
def _after_fork():
    if not _limbo and len(_active) == 1:
        current = _active.get(get_ident())
        if current is not None:
            # forked from a process with one Python thread, this one: nothing to rebuild;
            # the thread's native id is the child's own (3.13's full hook sets it too)
            set_native_id = getattr(current, "_set_native_id", None)
            if set_native_id is not None:
                set_native_id()
            return
    _serverless_full_after_fork()
"""


def cheap_threading_fork_hook() -> bool:
    """Give ``threading``'s after-fork hook a fast path for single-threaded parents.

    The hook registered with ``os.register_at_fork`` is the function object
    ``threading._after_fork``; its code is swapped for one that returns at once when the
    forking process had one Python thread (the current one), and otherwise calls the
    original. Returns False (and changes nothing) if this Python's threading module does
    not look as expected.
    """
    module = vars(threading)
    hook = module.get("_after_fork")
    if FAST_PATH_MARK in module:
        return True
    if (not isinstance(hook, types.FunctionType) or hook.__code__.co_argcount
            or hook.__closure__ or not {"_limbo", "_active", "get_ident"} <= module.keys()):
        return False
    module[FAST_PATH_MARK] = types.FunctionType(
        hook.__code__, module, "_after_fork", hook.__defaults__)
    scratch: dict[str, Any] = {}
    exec(_FAST_AFTER_FORK, scratch)
    hook.__code__ = scratch["_after_fork"].__code__
    return True
