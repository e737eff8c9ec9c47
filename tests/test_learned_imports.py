"""Learned imports: a fork-mode library imports what its calls imported, between forks.

Real manager, worker and library processes. A call reports whether the module it needs
was already in ``sys.modules`` when it began: False before the library learned it, True
after. Module names are built at run time so that bytecode discovery cannot see them.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import serverless
from faultkit import libraries_of

pytestmark = pytest.mark.timeout(120)


def had_module(name: str) -> bool:
    """Whether ``name`` was imported before this call; imports it."""
    had = name in sys.modules
    importlib.import_module(name)
    return had


def from_own_path(folder: str, name: str) -> bool:
    """Imports ``name`` from ``folder``, which only this call puts on sys.path: the
    library cannot import it."""
    had = name in sys.modules
    sys.path.insert(0, folder)
    importlib.import_module(name)
    return had


def fake_module(name: str) -> bool:
    """Puts a module with no spec in sys.modules (as extension modules do at run time)."""
    import types

    had = name in sys.modules
    sys.modules[name] = types.ModuleType(name)
    return had


def _calls(m: serverless.Manager, library: str, function: str, arg: str, n: int) -> list:
    return [m.call(library, function, arg).result(timeout=60) for _ in range(n)]


def test_a_lazily_imported_module_is_learned(manager):
    manager.install(serverless.Library("lazy", [had_module], mode="fork"))
    seen = _calls(manager, "lazy", "had_module", "col" + "orsys", 3)
    # the first call imported it; the library learned it before the next fork
    assert seen == [False, True, True]
    report = manager.learned_imports("lazy")
    assert "colorsys" in report["learned"]
    assert report["rejected"] == {}
    log = "".join(p.read_text() for p in manager.log_dir.rglob("lazy-*.log"))
    assert "learned imports colorsys" in log


def test_learning_can_be_switched_off(manager):
    manager.install(serverless.Library("plain", [had_module], mode="fork", learn_imports=False))
    assert _calls(manager, "plain", "had_module", "col" + "orsys", 3) == [False, False, False]
    assert manager.learned_imports("plain") == {"learned": [], "rejected": {}}


def test_modules_that_fail_or_start_threads_are_not_learned(manager, tmp_path):
    (tmp_path / "starts_a_thread.py").write_text(textwrap.dedent("""
        import threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    """))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "only_on_my_path.py").write_text("VALUE = 1\n")
    lib = serverless.Library("careful", [had_module, from_own_path, fake_module], mode="fork",
                             env={"PYTHONPATH": str(tmp_path)})
    manager.install(lib)
    assert _calls(manager, "careful", "had_module", "starts_a_thread", 3) == [False] * 3
    for _ in range(3):
        assert manager.call("careful", "from_own_path", str(hidden), "only_on_my_path").result(60) is False
    assert _calls(manager, "careful", "fake_module", "no_spec_module", 3) == [False] * 3
    report = manager.learned_imports("careful")
    assert "threads" in report["rejected"]["starts_a_thread"]
    assert "ModuleNotFoundError" in report["rejected"]["only_on_my_path"]
    assert "no_spec_module" not in report["rejected"]  # not a module any import could find
    assert report["learned"] == []
    # reported once: the instance log names each refusal a single time
    log = "".join(p.read_text() for p in manager.log_dir.rglob("careful-*.log"))
    assert log.count("not learning import 'starts_a_thread'") == 1
    assert log.count("not learning import 'only_on_my_path'") == 1


def test_new_instances_start_with_what_others_learned(manager):
    lib = serverless.Library("again", [had_module], mode="fork")
    manager.install(lib)
    assert _calls(manager, "again", "had_module", "col" + "orsys", 2) == [False, True]
    (instance,) = [p for pid in manager.local_worker_pids() for p in libraries_of(pid)]
    instance.kill()
    instance.wait(30)
    # its replacement is deployed with what the manager was told: no call pays again
    assert _calls(manager, "again", "had_module", "col" + "orsys", 1) == [True]
    manager.remove("again")  # forgets what was learned: new code, nothing learned yet
    manager.install(lib)
    assert _calls(manager, "again", "had_module", "col" + "orsys", 1) == [False]
