"""From Parsl apps to serverless libraries.

Parsl hands the executor a function object per app call: for a ``python_app`` the same
``wrap_error`` wrapper every time, for a ``bash_app`` the same ``partial`` of Parsl's bash
runner, and for an app called with ``walltime=`` a new ``timeout`` wrapper per call around
the same app. :func:`function_key` sees through that: two functions with the same code,
globals, defaults and closure contents (compared by value for plain constants, by identity
otherwise) have the same key.

Serverless mode: the first call of a key with a given request (mode, cores, memory)
installs a library ``parsl-<app>-<n>`` with that function as its only function, ``app``.
The library carries the function by value once, with the user's own modules (found by
unwrapping Parsl's wrappers, :func:`unwrap`) pickled by value too, and imports up front the
modules the function's globals refer to and the ones its body (and the bodies of the
functions it wraps) import. Each call then sends only its arguments.

Regular mode: the function is pickled by value once per key; every call sends that blob
and its arguments to the ``parsl-regular-…`` library for its request (see :mod:`.regular`).

Both modes first take a plain python app's own function out of Parsl's ``wrap_error``
(:func:`strip_wrap_error`): the wrapper imports Parsl on every call, which would make each
app's library import all of Parsl and fork more slowly; the engine returns the app's
exception itself, which the DataFlowKernel handles as it handles the wrapper's.

A function's globals are captured when its library is installed: an app that reads a
module-level variable the program changes later sees the value it had at its first call.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from serverless.library import Library, LibraryPayload, discover_imports
from serverless.serialization import dumps_by_value

from .regular import run_fresh
from .resources import Request

__all__ = ["function_key", "unwrap", "strip_wrap_error", "AppLibrary", "AppLibraries", "APP_FUNCTION",
           "REGULAR_FUNCTION"]

APP_FUNCTION = "app"
REGULAR_FUNCTION = "run_fresh"
_CONSTANTS = (int, float, complex, str, bytes, bool, type(None))


def strip_wrap_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The python app's own function if ``fn`` is Parsl's ``wrap_error`` wrapper around a
    plain function; otherwise ``fn`` itself.

    ``wrap_error`` (parsl/app/errors.py) turns an app's exception into a returned
    ``RemoteExceptionWrapper`` and imports ``parsl.app.errors`` to do it, so a library
    running it would import all of Parsl. The engine already hands back the app's own
    exception (its remote traceback as ``__cause__``), which the DataFlowKernel treats as
    the app's failure just as it treats a returned wrapper (it calls ``reraise()`` on one).
    ``functools.wraps`` copies ``__module__`` and ``__qualname__`` from the app, so the
    wrapper is recognised by its code and globals instead. A ``bash_app``'s wrapper (around a
    ``partial`` of Parsl's bash runner) and a ``walltime`` ``timeout`` wrapper (which needs
    Parsl's ``AppTimeout``) are left as they are.
    """
    code = getattr(fn, "__code__", None)
    inner = getattr(fn, "__wrapped__", None)
    if not (isinstance(fn, types.FunctionType) and isinstance(inner, types.FunctionType)):
        return fn
    if (fn.__globals__.get("__name__") != "parsl.app.errors" or code.co_name != "wrapper"
            or getattr(code, "co_qualname", "wrap_error.<locals>.wrapper")
            != "wrap_error.<locals>.wrapper"
            or code.co_freevars != ("func",) or fn.__closure__[0].cell_contents is not inner):
        return fn
    return inner


def _value_key(value: Any, depth: int) -> Any:
    if isinstance(value, _CONSTANTS):
        return (type(value).__name__, value)
    if depth > 0 and isinstance(value, (types.FunctionType, functools.partial)):
        return function_key(value, depth - 1)
    if isinstance(value, tuple) and depth > 0:
        return ("tuple",) + tuple(_value_key(v, depth - 1) for v in value)
    return ("id", id(value))  # safe: the registered function keeps the object alive


def function_key(fn: Callable[..., Any], depth: int = 4) -> Any:
    """A hashable key equal for functions that behave the same (see the module docstring)."""
    if isinstance(fn, functools.partial):
        return ("partial", _value_key(fn.func, depth),
                tuple(_value_key(a, depth) for a in fn.args),
                tuple(sorted((k, _value_key(v, depth)) for k, v in fn.keywords.items())))
    if isinstance(fn, types.FunctionType):
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(_value_key(cell.cell_contents, depth))
            except ValueError:  # an empty cell
                cells.append(("empty",))
        kwdefaults = tuple(sorted((k, _value_key(v, depth))
                                  for k, v in (fn.__kwdefaults__ or {}).items()))
        return ("function", fn.__code__, id(fn.__globals__),
                _value_key(fn.__defaults__, depth), kwdefaults, tuple(cells))
    return ("id", id(fn))


def unwrap(fn: Any, depth: int = 5) -> Iterator[types.FunctionType]:
    """The plain functions in ``fn``: itself, what it wraps (``__wrapped__``, a partial's
    function and arguments, closure cells), recursively."""
    seen: set[int] = set()
    frontier = [fn]
    for _ in range(depth + 1):
        following = []
        for item in frontier:
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, functools.partial):
                following += [item.func, *item.args, *item.keywords.values()]
                continue
            if not isinstance(item, types.FunctionType):
                continue
            yield item
            wrapped = getattr(item, "__wrapped__", None)
            if wrapped is not None:
                following.append(wrapped)
            for cell in item.__closure__ or ():
                try:
                    following.append(cell.cell_contents)
                except ValueError:
                    pass
        frontier = following


@dataclasses.dataclass
class AppLibrary(Library):
    """A library for one app: also carries the user functions Parsl's wrappers hide."""

    carried: tuple = ()

    def payload(self) -> LibraryPayload:
        base = super().payload()
        if not self.discover:
            return base
        found = set(base.discovered_imports) | set(discover_imports(self.carried))
        return dataclasses.replace(
            base, discovered_imports=tuple(sorted(found - set(self.imports))))

    def serialize(self) -> bytes:
        return dumps_by_value(self.payload(), [*self.functions.values(), *self.carried])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "app"


class AppLibraries:
    """Which library serves each call; installs libraries on the manager on first use."""

    def __init__(self, manager: Any, library_mode: str, imports: tuple[str, ...],
                 library_options: dict[str, Any]) -> None:
        self._manager = manager
        self._library_mode = library_mode
        self._imports = imports
        self._options = library_options
        self._lock = threading.Lock()
        self._libraries: dict[tuple[Any, Request], str] = {}
        self._keep: dict[Any, Callable[..., Any]] = {}  # keeps keyed objects alive
        self._blobs: dict[Any, bytes] = {}
        self._regular: dict[Request, str] = {}
        self._count = 0

    def _key(self, fn: Callable[..., Any]) -> Any:
        key = function_key(fn)
        self._keep.setdefault(key, fn)
        return key

    def serverless_library(self, fn: Callable[..., Any], request: Request) -> str:
        """The library for ``fn`` with ``request``, installed now if it is new."""
        with self._lock:
            key = (self._key(fn), request)
            name = self._libraries.get(key)
            if name is not None:
                return name
            self._count += 1
            name = f"parsl-{_slug(getattr(fn, '__name__', 'app'))}-{self._count}"
            self._manager.install(AppLibrary(
                name, {APP_FUNCTION: fn}, imports=self._imports, mode=self._library_mode,
                slots=1, cores=request.cores, memory_mb=request.memory_mb,
                carried=tuple(unwrap(fn)), **self._options,
            ))
            self._libraries[key] = name
            return name

    def function_blob(self, fn: Callable[..., Any]) -> bytes:
        """``fn`` pickled by value (once per key), for the regular mode."""
        with self._lock:
            key = self._key(fn)
            blob = self._blobs.get(key)
            if blob is None:
                blob = self._blobs[key] = dumps_by_value(fn, list(unwrap(fn)))
            return blob

    def regular_library(self, request: Request) -> str:
        """The regular-mode library for ``request``, installed now if it is new."""
        with self._lock:
            name = self._regular.get(request)
            if name is None:
                name = f"parsl-regular-{len(self._regular) + 1}"
                self._manager.install(Library(
                    name, {REGULAR_FUNCTION: run_fresh}, mode="fork", slots=1,
                    cores=request.cores, memory_mb=request.memory_mb, discover=False,
                    **self._options,
                ))
                self._regular[request] = name
            return name

    def libraries(self) -> list[str]:
        with self._lock:
            return sorted([*self._libraries.values(), *self._regular.values()])
