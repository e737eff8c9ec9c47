"""Wait for a log record instead of sleeping: the manager logs in the test's own process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LogWatch(logging.Handler):
    """Collects the records of a logger tree; :meth:`wait_for` blocks until one matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def texts(self) -> list[str]:
        with self._changed:
            return [record.getMessage() for record in self.records]

    def count(self, fragment: str) -> int:
        return sum(fragment in text for text in self.texts())

    def wait_for(self, fragment: str, timeout: float = 30.0, count: int = 1) -> None:
        """Until ``count`` messages contain ``fragment``; AssertionError after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.count_locked(fragment) >= count, timeout):
                raise AssertionError(f"no log message with {fragment!r} in {timeout} s; "
                                     f"got: {[r.getMessage() for r in self.records]}")

    def count_locked(self, fragment: str) -> int:
        return sum(fragment in record.getMessage() for record in self.records)


@contextmanager
def watch_logs(name: str = "serverless") -> Iterator[LogWatch]:
    """Collect every record of logger ``name`` (and its children) at DEBUG and above."""
    logger = logging.getLogger(name)
    watch = LogWatch()
    previous = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(previous)
