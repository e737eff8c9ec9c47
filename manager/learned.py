"""What fork-mode instances learned to import, per library (see worker/import_learning.py).

The loop thread records each ImportsLearned report, logs a learned or refused name once
per library, and hands the learned names to new instances of the library with their
Deploy (so they start with them); the user's threads read a copy through
``Manager.learned_imports``.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["LearnedImports"]

log = logging.getLogger("serverless.manager")


class LearnedImports:
    """Per library: the modules its instances learned, and those they refused (why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._learned: dict[str, dict[str, None]] = {}  # library -> names, in learned order
        self._rejected: dict[str, dict[str, str]] = {}  # library -> name -> reason

    def report(self, library: str, instance_id: int, learned: tuple, rejected: tuple) -> None:
        """An instance's report (loop thread); logs what is new for the library."""
        with self._lock:
            known = self._learned.setdefault(library, {})
            refused = self._rejected.setdefault(library, {})
            new = [name for name in learned if name not in known]
            known.update(dict.fromkeys(new))
            fresh = [(name, why) for name, why in rejected if name not in refused]
            refused.update(fresh)
        if new:
            log.info("library %s: instance %d learned imports %s (calls imported them; its "
                     "forks now start with them)", library, instance_id, ", ".join(new))
        for name, why in fresh:
            log.warning("library %s: instance %d did not learn import %r: %s",
                        library, instance_id, name, why)

    def names(self, library: str) -> list[str]:
        with self._lock:
            return list(self._learned.get(library, ()))

    def forget(self, library: str) -> None:
        """The library was removed or replaced: new code, nothing learned yet."""
        with self._lock:
            self._learned.pop(library, None)
            self._rejected.pop(library, None)

    def snapshot(self, library: str) -> dict[str, object]:
        with self._lock:
            return {"learned": list(self._learned.get(library, ())),
                    "rejected": dict(self._rejected.get(library, {}))}
