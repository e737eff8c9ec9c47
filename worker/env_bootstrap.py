"""Start a library process under another environment's interpreter, with serverless from the worker.

Run as ``ENV/bin/python .../env_bootstrap.py MODULE ARGS...`` (by :mod:`.env_launch`:
``serverless.worker.library_runtime FD AGENT_PID``; by Parsl's regular mode for its fresh
interpreters). The environment need not have serverless installed: this script makes the
worker's own copy of serverless's pure-Python packages importable (variable
``SERVERLESS_BOOTSTRAP``, a JSON object ``{"packages": {name: folder}, "fallback": {name:
folder}}``, left in the environment for the processes the library starts), then runs
``MODULE.main()`` with ``sys.argv`` = ``[MODULE, *ARGS]``.

``packages`` (serverless itself) are found first, ahead of anything in the environment, so
the library process always speaks the worker's protocol. ``fallback`` (cloudpickle, pure
Python) is found last: the environment's own copy wins when it has one. setproctitle is
optional in library processes. So an environment needs only a CPython of the manager's
minor version (functions travel as its code objects) and what the functions import.
It uses only the standard library until the runtime is imported.
"""

import importlib
import importlib.abc
import importlib.util
import json
import os
import sys

MINIMUM = (3, 10)
VARIABLE = "SERVERLESS_BOOTSTRAP"


class _Folders(importlib.abc.MetaPathFinder):
    """Finds the named top-level packages (and subpackages named explicitly) in given folders."""

    def __init__(self, folders):
        self.folders = folders

    def find_spec(self, name, path=None, target=None):
        folder = self.folders.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])


def main():
    del sys.path[0]  # this script's folder: the worker package is not a top-level one
    if sys.version_info < MINIMUM:
        print(f"serverless: the environment's Python {sys.version.split()[0]} is older than "
              f"{'.'.join(map(str, MINIMUM))}, which the library runtime needs", file=sys.stderr)
        return 3
    spec = install()
    wanted = spec.get("python")
    found = "%d.%d" % sys.version_info[:2]
    if wanted and wanted != found and spec.get("instance", -1) >= 0:
        _fail(spec["instance"], int(sys.argv[2]),
              f"the environment's Python is {found} but the manager runs {wanted}: functions "
              f"travel as {wanted} code objects, so the environment needs Python {wanted}")
        return 3
    module = sys.argv[1]
    sys.argv = sys.argv[1:]
    return importlib.import_module(module).main()


def install():
    """Make the worker's serverless (first) and cloudpickle and dill (last) importable."""
    spec = json.loads(os.environ[VARIABLE])
    sys.meta_path.insert(0, _Folders(spec["packages"]))
    sys.meta_path.append(_Folders(spec["fallback"]))
    return spec


def _fail(instance_id, fd, reason):
    """Tell the agent (as the library runtime would) that this instance cannot start."""
    import socket

    from serverless.protocol import InstanceFailed, encode, pack_stream
    with socket.socket(fileno=fd) as sock:
        sock.setblocking(True)
        sock.sendall(b"".join(pack_stream(encode(InstanceFailed(
            instance_id, f"environment: {reason}", "", True)))))


if __name__ == "__main__":
    sys.exit(main())
