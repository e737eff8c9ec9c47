"""The crash journal on its own: what the library writes is what the agent reads."""

from __future__ import annotations

import os

import pytest

from serverless.worker.journal import (
    JOURNAL_BYTES,
    MAX_RUNNING,
    Journal,
    create_journal,
    read_journal,
    without_results,
)


@pytest.fixture
def fds():
    fd = create_journal("test")
    reader = os.dup(fd)
    yield fd, reader
    os.close(reader)


def test_results_not_sent_and_running_calls_are_read_back(fds):
    fd, reader = fds
    journal = Journal(fd)
    assert read_journal(reader) == ([], ())  # nothing yet
    journal.started(7)
    journal.started(8)
    assert journal.record((5, 0, b"five", 0.5))
    assert journal.record((6, 1, b"", 0.25))
    assert read_journal(reader) == ([(5, 0, b"five", 0.5), (6, 1, b"", 0.25)], (7, 8))
    journal.ended(7)
    journal.sent()
    assert read_journal(reader) == ([], (8,))
    journal.running_one(9)  # direct mode: one call, one write
    assert read_journal(reader)[1] == (9,)
    journal.running_one(0)
    assert read_journal(reader)[1] == ()
    journal.close()


def test_what_does_not_fit_is_refused_so_the_library_sends_it_at_once(fds):
    fd, reader = fds
    journal = Journal(fd)
    assert not journal.record((1, 0, b"x" * JOURNAL_BYTES, 0.1))  # too large
    assert not journal.record((2, 0, (b"pickle", (bytearray(10),)), 0.1))  # out of band
    assert journal.record((3, 0, b"small", 0.1))
    assert read_journal(reader)[0] == [(3, 0, b"small", 0.1)]
    for call_id in range(MAX_RUNNING + 1):
        journal.started(call_id + 100)
    assert read_journal(reader)[1] is None  # too many to name: the manager falls back
    journal.close()


def test_running_calls_with_a_result_are_not_charged():
    entries = [(5, 0, b"", 0.1)]
    assert without_results((5, 6, 0), entries) == (6,)
    assert without_results(None, entries) is None
