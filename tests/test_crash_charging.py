"""Only the calls running when an instance dies are charged; no result is thrown away.

A batch of four calls goes to a fresh instance (slots=1), with a poison call first, second
or last. In direct mode the poison segfaults its instance: it fails alone as CallCrashed
naming the signal, after one crash, and is not retried. In fork mode the poison's child
kills the library process: it is charged for each of those crashes (max_retries=1: two,
then WorkerLost) and nothing else is. In both modes every other call runs exactly once
(its result was produced once and delivered, even when it was still waiting in the
library to be sent) and succeeds.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import time

import pytest

import serverless

from conftest import FAST


def run_or_crash(tag, runs_path, poison, mode):
    fd = os.open(runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{tag}\n".encode())  # one small O_APPEND write: whole lines, any process
    os.close(fd)
    if tag == poison:
        if mode == "direct":
            ctypes.string_at(0)  # a segfault in the instance itself
        else:
            os.kill(os.getppid(), signal.SIGKILL)  # the forked child kills its library
            time.sleep(60)  # dies with it (PR_SET_PDEATHSIG)
    return tag


@pytest.mark.parametrize("mode", ["direct", "fork"])
@pytest.mark.parametrize("position", [0, 1, 3], ids=["first", "second", "last"])
def test_only_the_running_call_is_charged_for_its_instance_s_crash(tmp_path, mode, position):
    tags = [f"call-{i}" for i in range(4)]
    poison = tags[position]
    runs = tmp_path / "runs"
    lib = serverless.Library("poison", [run_or_crash], mode=mode, slots=1, discover=False)
    with serverless.Manager(local_cores=1, log_dir=tmp_path / "logs", max_retries=1, **FAST) as m:
        m.install(lib)
        # made at once, before the first instance is up: they reach it as one batch
        futures = [m.call("poison", "run_or_crash", tag, str(runs), poison, mode) for tag in tags]
        for tag, future in zip(tags, futures):
            if tag != poison:
                assert future.result(timeout=90) == tag
        if mode == "direct":
            with pytest.raises(serverless.CallCrashed, match="SIGSEGV") as info:
                futures[position].result(timeout=90)
            assert info.value.signal == signal.SIGSEGV
        else:
            with pytest.raises(serverless.WorkerLost, match="max_retries=1"):
                futures[position].result(timeout=90)
        # the library serves on
        assert m.call("poison", "run_or_crash", "after", str(runs), poison, mode).result(timeout=90) == "after"
    counts = collections.Counter(runs.read_text().split())
    crashes = 1 if mode == "direct" else 2  # direct: the call's own crash, not retried
    assert counts == {**{tag: 1 for tag in tags}, poison: crashes, "after": 1}
    instances = list((tmp_path / "logs" / "worker-0").glob("poison-*.log"))
    assert len(instances) == crashes + 1  # each crash took one instance; one served the rest
