"""The manager loop's own timing rules, without processes."""

from __future__ import annotations

import pytest

from serverless.manager.loop import poll_milliseconds


@pytest.mark.parametrize(("seconds", "expected"), [
    (0.0, 0), (-0.5, 0), (0.0001, 1), (0.0009, 1), (0.001, 1), (0.0011, 2), (0.1, 100),
])
def test_poll_timeout_never_wakes_early(seconds: float, expected: int) -> None:
    # a tick 0.4 ms away must not become poll(0): the loop would spin until it is due
    assert poll_milliseconds(seconds) == expected
