"""Manager(forward_output=True): what calls print reaches the caller's stdout, prefixed by
library and instance, before the call's result; off by default. Real processes."""

from __future__ import annotations

import sys

import pytest

import serverless
from conftest import FAST

pytestmark = pytest.mark.timeout(120)


def shout(n: int) -> int:
    print(f"hello {n}")
    print(f"oops {n}", file=sys.stderr)
    return n


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_output_is_forwarded_with_its_origin(tmp_path, capsys, mode):
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", forward_output=True,
                            **FAST) as m:
        m.install(serverless.Library("echo", [shout], mode=mode))
        assert m.call("echo", "shout", 1).result() == 1
        out = capsys.readouterr().out  # the output travelled before the result
        assert "(echo#1) hello 1\n" in out
        assert "(echo#1) oops 1\n" in out
        assert list(m.map("echo", "shout", range(2, 5))) == [2, 3, 4]
        out = capsys.readouterr().out
        assert all(f"(echo#1) hello {n}\n" in out for n in range(2, 5))
    log = (tmp_path / "logs" / "worker-0" / "echo-1.log").read_text()
    assert "hello 1" in log and "oops 1" in log  # the instance log keeps it too


def test_output_stays_in_the_logs_by_default(tmp_path, capsys):
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("quiet", [shout]))
        assert m.call("quiet", "shout", 7).result() == 7
    assert "hello 7" not in capsys.readouterr().out
    assert "hello 7" in (tmp_path / "logs" / "worker-0" / "quiet-1.log").read_text()
