"""Input files for calls: declared on the manager, cached by content on workers (issue 13).

Modules (each with its own docstring):

* :mod:`.file`: :class:`File` (the user's declaration), :class:`FileSpec` (what travels),
  :func:`worker_path` (what a File becomes inside the function);
* :mod:`.hashing`: content names (BLAKE3, ``b3-<hex>``; ``sha256-<hex>`` for URLs given
  a sha256), hashed once per ``(device, inode, size, mtime)``;
* :mod:`.local`: the manager's declared files and directory tars;
* :mod:`.transfer`: the chunk server and the chunk fetch (the one transfer path, over
  the same authenticated zmq transport as the manager link);
* :mod:`.archive`: unpacking .tar/.tar.gz/.tar.zst/.zip safely.

The worker's cache lives in :mod:`serverless.worker.data`; the manager's directory of who
holds what in :mod:`serverless.manager.data`. Only :mod:`.file` is imported here, so a
library process that unpickles a File's reference loads neither zmq nor the hash library.
"""

from .file import LEVELS, File, FileSpec, worker_path

__all__ = ["File", "FileSpec", "LEVELS", "worker_path"]
