"""Turning functions, arguments, results and exceptions into bytes and back.

* Libraries (functions, setup) travel **by value**: cloudpickle, with the functions' own
  modules pickled by value too when they are user code rather than installed packages, so a
  function defined in a script, a notebook, a test file or a closure runs on a worker that
  does not have that file. dill is the fallback for what cloudpickle cannot pickle. This
  happens once per library, never per call.
  cloudpickle blanks the file names of the code it carries; ours keeps them and carries the
  source lines of those files too, so a remote traceback names the user's file and shows
  the failing line even on a machine that does not have the file.
* Arguments and results use the standard pickle (protocol 5, fast C code) and fall back to
  cloudpickle for lambdas and other local objects. A large contiguous buffer among the
  arguments (a numpy array of :data:`OUT_OF_BAND_MIN` bytes or more, anything that
  pickles through ``pickle.PickleBuffer``) is taken **out of band**: the arguments become
  ``(pickle, buffers)`` and each buffer travels as a message frame of its own, so it is
  never copied into and out of the call batch; the function gets an array over that
  frame's memory, writable like any unpickled array.
* A raised exception travels as itself when it pickles and unpickles, with its traceback
  text; otherwise the manager raises :class:`FunctionError` with the type name and text.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import pickle
import struct
import sys
import sysconfig
import traceback
import types
from collections.abc import Iterator
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle_impl

from .errors import (
    ArgumentNotSerializable,
    FunctionError,
    RemoteTraceback,
    ResultNotSerializable,
    SerializationError,
)
from .protocol import MAX_CALL_BUFFERS, Arguments, safe_dumps, safe_loads

__all__ = [
    "OUT_OF_BAND_MIN",
    "dumps_by_value",
    "loads_by_value",
    "dumps_args",
    "loads_args",
    "dumps_result",
    "loads_result",
    "encode_exception",
    "decode_exception",
]

_PICKLE = 5
_CLOUDPICKLE = b"c"
OUT_OF_BAND_MIN = 1 << 16  # bytes: smaller buffers stay inside the arguments' pickle
_DILL = b"d"


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def _is_user_module(module: types.ModuleType | None) -> bool:
    """True for a module that is the user's own code (not stdlib, not an installed package)."""
    if module is None or module.__name__ == "__main__":
        return False  # __main__ is pickled by value by cloudpickle already
    if module.__name__.split(".")[0] in ("serverless", "cloudpickle", "dill"):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return not os.path.realpath(path).startswith(_installed_roots())


@contextlib.contextmanager
def _user_modules_by_value(objects: list[Any]) -> Iterator[None]:
    """While pickling ``objects``, pickle their user-code modules by value."""
    registered = []
    for obj in objects:
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        if _is_user_module(module) and module not in registered:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:  # already registered by the user
                pass
    try:
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


_SOURCE_LIMIT = 1 << 20  # bytes of source carried per file, at most
_DYNAMIC_FILENAME = "<dynamic-code>"


class _SourceKeepingPickler(cloudpickle.Pickler):
    """cloudpickle, but code objects keep their file name and the files' lines are noted."""

    def __init__(self, file: io.BytesIO) -> None:
        self.filenames: set[str] = set()
        table = dict(cloudpickle.Pickler.dispatch_table)
        table[types.CodeType] = self._reduce_code
        self.dispatch_table = table  # before __init__: the C pickler reads it there
        super().__init__(file, protocol=_PICKLE)

    def _reduce_code(self, code: types.CodeType) -> tuple:
        rebuild, args = _cloudpickle_impl._code_reduce(code)
        self.filenames.add(code.co_filename)
        position = args.index(_DYNAMIC_FILENAME)  # the first str field equal to it: co_filename
        return rebuild, args[:position] + (code.co_filename,) + args[position + 1 :]


def _source_lines(filenames: set[str]) -> dict[str, list[str]]:
    """The lines of each file (or notebook cell) code came from, for remote tracebacks."""
    sources = {}
    for filename in sorted(filenames):
        lines = linecache.getlines(filename)
        if lines and sum(map(len, lines)) <= _SOURCE_LIMIT:
            sources[filename] = lines
    return sources


def _frame(kind: bytes, sources: dict[str, list[str]], body: bytes) -> bytes:
    header = pickle.dumps(sources, _PICKLE)
    return kind + struct.pack("!I", len(header)) + header + body


def dumps_by_value(obj: Any, functions: list[Any] | None = None) -> bytes:
    """Pickle ``obj`` by value (cloudpickle, then dill); ``functions`` name whose modules to carry.

    The blob also carries the source lines of the files the pickled code came from.
    """
    errors = []
    with _user_modules_by_value(functions or []):
        try:
            buffer = io.BytesIO()
            pickler = _SourceKeepingPickler(buffer)
            try:
                pickler.dump(obj)
            finally:
                # the pickler is in a reference cycle (its dispatch table holds a bound
                # method): its memo would keep obj alive until the next gc pass
                pickler.clear_memo()
            return _frame(_CLOUDPICKLE, _source_lines(pickler.filenames), buffer.getvalue())
        except Exception as exc:
            errors.append(f"cloudpickle: {type(exc).__name__}: {exc}")
    try:
        import dill

        body = dill.dumps(obj, protocol=_PICKLE, recurse=True)
        filenames = {f.__code__.co_filename for f in functions or [] if hasattr(f, "__code__")}
        return _frame(_DILL, _source_lines(filenames), body)
    except Exception as exc:
        errors.append(f"dill: {type(exc).__name__}: {exc}")
    raise SerializationError("cannot pickle by value: " + "; ".join(errors))


def loads_by_value(blob: bytes) -> Any:
    """Inverse of :func:`dumps_by_value`; makes the carried source lines known to linecache."""
    view = memoryview(blob)
    kind = bytes(view[:1])
    (header_size,) = struct.unpack_from("!I", view, 1)
    sources = pickle.loads(view[5 : 5 + header_size])
    for filename, lines in sources.items():
        if not os.path.exists(filename):  # a file here wins; else mtime None keeps the entry
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    body = view[5 + header_size :]
    if kind == _DILL:
        import dill

        return dill.loads(body)
    return pickle.loads(body)


def _dumps_fallback(value: Any) -> bytes:
    try:
        return pickle.dumps(value, _PICKLE)
    except Exception:
        return cloudpickle.dumps(value, protocol=_PICKLE)


class _LargeBuffer(Exception):
    """Raised while pickling to say: start again, taking large buffers out of band."""


def _small_buffers_only(buffer: pickle.PickleBuffer) -> bool:
    try:
        if buffer.raw().nbytes < OUT_OF_BAND_MIN:
            return True
    except BufferError:  # not contiguous: in band
        return True
    raise _LargeBuffer()


def _dumps_out_of_band(value: Any) -> Arguments:
    """``value`` pickled, large buffers out of band (see the module docstring); the pickling
    error if neither pickle nor cloudpickle can do it."""
    try:  # the common case: no large buffer, the C pickler alone
        return pickle.dumps(value, _PICKLE, buffer_callback=_small_buffers_only)
    except _LargeBuffer:  # pickle got that far: try it again, buffers out of band
        picklable = True
    except Exception:  # pickle cannot: straight to cloudpickle, not a second failure
        picklable = False
    taken: list[bytes] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN or len(taken) >= MAX_CALL_BUFFERS:
            return True
        taken.append(raw.tobytes())  # a copy: the caller may change the array later
        return False

    blob = None
    if picklable:
        try:
            blob = pickle.dumps(value, _PICKLE, buffer_callback=out_of_band)
        except Exception:  # something after the first large buffer that pickle cannot do
            taken.clear()
    if blob is None:
        blob = cloudpickle.dumps(value, protocol=_PICKLE, buffer_callback=out_of_band)
    if len(taken) >= MAX_CALL_BUFFERS:  # so many that the frames would cost more: in band
        return _dumps_fallback(value)
    return (blob, tuple(taken)) if taken else blob


def _loads_out_of_band(data: Arguments) -> Any:
    if type(data) is tuple:  # writable buffers, so that arrays over them are writable
        return pickle.loads(data[0], buffers=[b if type(b) is bytearray else bytearray(b)
                                              for b in data[1]])
    return pickle.loads(data)


def dumps_args(args: tuple, kwargs: dict) -> Arguments:
    """The pickled arguments of one call, large buffers out of band (see the module
    docstring); ArgumentNotSerializable if they cannot be pickled."""
    try:
        return _dumps_out_of_band((args, kwargs))
    except Exception as exc:
        raise ArgumentNotSerializable(
            f"the call's arguments cannot be pickled: {type(exc).__name__}: {exc}"
        ) from exc


def loads_args(args: Arguments) -> tuple[tuple, dict]:
    return _loads_out_of_band(args)


def dumps_result(value: Any) -> Arguments:
    """The pickled return value, large buffers out of band as for arguments;
    ResultNotSerializable if it cannot be pickled."""
    try:
        return _dumps_out_of_band(value)
    except Exception as exc:
        raise ResultNotSerializable(
            f"the function's return value ({type(value).__qualname__}) cannot be pickled: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def loads_result(blob: Arguments | memoryview) -> Any:
    try:
        return _loads_out_of_band(blob)
    except Exception as exc:
        raise ResultNotSerializable(
            f"the function's return value cannot be unpickled here: {type(exc).__name__}: {exc}"
        ) from exc


def encode_exception(exc: BaseException) -> bytes:
    """Payload for a RAISED result: the exception (if it pickles), its type name, text, traceback."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    exc.__traceback__ = None  # tracebacks do not pickle; the text carries them
    try:
        pickled = _dumps_fallback(exc)
    except Exception:
        pickled = b""
    return safe_dumps((pickled, type_name, message, tb_text))


def decode_exception(payload: bytes | memoryview) -> BaseException:
    """The exception to raise for a RAISED result, with the remote traceback as ``__cause__``."""
    pickled, type_name, message, tb_text = safe_loads(payload)
    exc: BaseException | None = None
    if pickled:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = FunctionError(type_name, message, tb_text)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb_text}"""')
    return exc
