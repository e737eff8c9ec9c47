"""The fast path of threading's after-fork hook (worker/fork_hooks.py), on every Python
the project supports that this machine has: taken only for a single-threaded parent, and
a child sees the same threading state as with the stdlib's own hook."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import serverless.worker.fork_hooks as fork_hooks

PROBE = Path(__file__).with_name("fork_hook_probe.py")
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")


def _interpreters() -> dict[str, str]:
    """One interpreter per supported version: this one, then pyenv's or the system's."""
    found = {f"{sys.version_info[0]}.{sys.version_info[1]}": sys.executable}
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for version in SUPPORTED:
        candidates = [p for root in roots if root
                      for p in sorted(glob.glob(f"{root}/versions/{version}.*/bin/python"))]
        candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        for path in candidates:
            if version not in found and os.access(path, os.X_OK):
                found[version] = path
    return found


INTERPRETERS = _interpreters()


@pytest.mark.parametrize("version", SUPPORTED)
def test_the_fast_after_fork_hook_changes_nothing_a_child_can_see(version):
    python = INTERPRETERS.get(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv or /usr/bin)")
    out = subprocess.run([python, str(PROBE), fork_hooks.__file__], capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["python"].startswith(version + ".")
    assert result["applied"] is True
    for case in ("single", "after_a_finished_thread", "multi"):
        stdlib, fast = dict(result["stdlib"][case]), dict(result["fast"][case])
        assert fast["exit_code"] == stdlib["exit_code"] == 0, case
        # the fast path: only when the parent had one thread; the full hook otherwise
        assert fast.pop("full_hook_ran") is (case == "multi"), case
        stdlib.pop("full_hook_ran")
        # the child's own native id, even where the stdlib's hook (before 3.13) leaves the
        # parent's; everything else exactly as the stdlib's hook leaves it
        if case != "multi":
            assert fast.pop("native_id_ok") is True, case
            stdlib.pop("native_id_ok")
        assert fast == stdlib, case
        assert fast["current_is_main"] and fast["threads"] == 1 and fast["pool"] == 6, case
