"""End to end: real manager, worker and library processes on loopback."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import wait

import pytest

import serverless

pytestmark = pytest.mark.timeout(120)


def add(x, y):
    return x + y


def load_model():
    import numpy

    return {"weights": numpy.ones(3)}


def predict(x):
    return float((serverless.state()["weights"] * x).sum())


def whoami():
    return os.getpid()


def test_quick_start(manager):
    lib = serverless.Library("math", [add, predict], imports=["numpy"], setup=load_model,
                             mode="fork", slots=2)
    manager.install(lib)
    f = manager.call("math", "add", 1, 2)
    assert isinstance(f, serverless.manager.future.CallFuture)
    assert f.result() == 3
    assert list(manager.map("math", "add", [1, 2], [10, 20])) == [11, 22]
    assert manager.call("math", "predict", 2).result() == 6.0


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_many_calls_both_modes(shared_manager, mode):
    shared_manager.install(serverless.Library(f"many-{mode}", [add], mode=mode))
    futures = [shared_manager.call(f"many-{mode}", "add", i, 1) for i in range(500)]
    assert [f.result() for f in futures] == [i + 1 for i in range(500)]


def test_fork_mode_runs_each_call_in_its_own_child(shared_manager):
    shared_manager.install(serverless.Library("pids-fork", [whoami], mode="fork"))
    pids = {shared_manager.call("pids-fork", "whoami").result() for _ in range(5)}
    assert len(pids) == 5


def test_direct_mode_runs_calls_in_the_instance(shared_manager):
    shared_manager.install(serverless.Library("pids-direct", [whoami], mode="direct",
                                              max_instances=1))
    pids = {shared_manager.call("pids-direct", "whoami").result() for _ in range(5)}
    assert len(pids) == 1


def counter():
    state = serverless.state()
    state["n"] += 1
    return state["n"]


def test_setup_state_is_per_instance_and_fork_isolates_changes(shared_manager):
    shared_manager.install(serverless.Library("count-fork", [counter], setup=lambda: {"n": 0},
                                              max_instances=1))
    assert [shared_manager.call("count-fork", "counter").result() for _ in range(3)] == [1, 1, 1]
    shared_manager.install(serverless.Library("count-direct", [counter], setup=lambda: {"n": 0},
                                              mode="direct", max_instances=1))
    assert [shared_manager.call("count-direct", "counter").result() for _ in range(3)] == [1, 2, 3]


def modules_loaded(names):
    import sys

    return {name: name in sys.modules for name in names}


def imports_inside():
    import json  # noqa: F401  (discovered and imported up front)

    return True


def test_imports_are_loaded_before_calls(shared_manager):
    lib = serverless.Library("imports", [modules_loaded, imports_inside],
                             imports=["decimal", "fractions"])
    assert lib.payload().discovered_imports == ("json", "sys")
    shared_manager.install(lib)
    loaded = shared_manager.call("imports", "modules_loaded",
                                 ["decimal", "fractions", "json", "numpy"]).result()
    assert loaded == {"decimal": True, "fractions": True, "json": True, "numpy": False}


def meet(fifo, role):
    """Two calls that can only both finish if they run at the same time."""
    with open(fifo, "r" if role == "reader" else "w") as pipe:  # open blocks for the peer
        if role == "writer":
            pipe.write("hello")
            return "wrote"
        return pipe.read()


def test_two_slots_run_two_calls_at_once(shared_manager, tmp_path):
    fifo = str(tmp_path / "meeting")
    os.mkfifo(fifo)
    shared_manager.install(serverless.Library("meet", [meet], slots=2, max_instances=1,
                                              timeout=30))
    reader = shared_manager.call("meet", "meet", fifo, "reader")
    writer = shared_manager.call("meet", "meet", fifo, "writer")
    assert reader.result() == "hello"
    assert writer.result() == "wrote"


def test_several_libraries_at_once(shared_manager):
    shared_manager.install(serverless.Library("lib-a", {"f": lambda: "a"}))
    shared_manager.install(serverless.Library("lib-b", {"f": lambda: "b"}, mode="direct"))
    futures = [shared_manager.call(name, "f") for name in ["lib-a", "lib-b"] * 10]
    assert [f.result() for f in futures] == ["a", "b"] * 10
    assert {"lib-a", "lib-b"} <= set(shared_manager.libraries())


def test_closures_and_main_functions_travel_by_value(shared_manager):
    offset = 41
    shared_manager.install(serverless.Library("closure", {"plus": lambda x: x + offset}))
    assert shared_manager.call("closure", "plus", 1).result() == 42


def test_kwargs_and_large_arguments(shared_manager):
    shared_manager.install(serverless.Library("kw", {"f": lambda a, b=0, *, c: (len(a), b, c)}))
    assert shared_manager.call("kw", "f", b"x" * 5_000_000, c=3).result() == (5_000_000, 0, 3)
    big = shared_manager.call("kw", "f", "y", b=b"z" * 3_000_000, c=None).result()
    assert big == (1, b"z" * 3_000_000, None)


def scale_in_place(array, k):
    array *= k  # the argument arrives writable, as any unpickled array
    return float(array.sum())


def shapes(*arrays, **named):
    return [a.shape for a in arrays], {k: float(v.sum()) for k, v in named.items()}


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_large_arrays_travel_out_of_band_and_arrive_writable(shared_manager, mode):
    import numpy

    shared_manager.install(serverless.Library(f"arrays-{mode}", [scale_in_place, shapes],
                                              imports=["numpy"], mode=mode))
    array = numpy.ones(500_000)  # 4 MB: out of band
    futures = [shared_manager.call(f"arrays-{mode}", "scale_in_place", array, k) for k in range(8)]
    array[:] = 7  # after call(): the calls got a copy taken when they were made
    assert [f.result(timeout=60) for f in futures] == [500_000.0 * k for k in range(8)]
    big, small = numpy.arange(300_000).reshape(600, 500), numpy.ones(3)
    assert shared_manager.call(f"arrays-{mode}", "shapes", big, small, other=numpy.ones(100_000)
                               ).result(timeout=60) == ([(600, 500), (3,)], {"other": 100_000.0})


def make_array(n, value):
    import numpy

    return {"big": numpy.full(n, float(value)), "small": numpy.ones(2), "n": n}


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_large_results_travel_out_of_band_and_arrive_writable(shared_manager, mode):
    shared_manager.install(serverless.Library(f"results-{mode}", [make_array],
                                              imports=["numpy"], mode=mode))
    futures = [shared_manager.call(f"results-{mode}", "make_array", 300_000, i) for i in range(6)]
    for i, future in enumerate(futures):
        result = future.result(timeout=60)
        assert result["n"] == 300_000 and float(result["big"].sum()) == 300_000.0 * i
        result["big"] += 1  # writable, as any unpickled array
        assert float(result["small"].sum()) == 2.0


def test_reinstall_replaces_code(shared_manager):
    shared_manager.install(serverless.Library("version", {"v": lambda: 1}))
    assert shared_manager.call("version", "v").result() == 1
    shared_manager.install(serverless.Library("version", {"v": lambda: 2}))
    assert shared_manager.call("version", "v").result() == 2


def test_remove(shared_manager):
    shared_manager.install(serverless.Library("gone", [add]))
    assert shared_manager.call("gone", "add", 1, 1).result() == 2
    shared_manager.remove("gone")
    with pytest.raises(serverless.UnknownLibrary):
        shared_manager.call("gone", "add", 1, 1)
    with pytest.raises(serverless.UnknownLibrary):
        shared_manager.remove("gone")


def shout(text):
    print(f"stdout says {text}", flush=True)
    import sys

    print(f"stderr says {text}", file=sys.stderr, flush=True)
    return text


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_what_calls_print_lands_in_the_instance_log(manager, mode):
    manager.install(serverless.Library("shout", [shout], mode=mode))
    assert manager.call("shout", "shout", f"hi-{mode}").result() == f"hi-{mode}"
    logs = list(manager.log_dir.glob("worker-*/shout-*.log"))
    text = "".join(p.read_text() for p in logs)
    assert f"stdout says hi-{mode}" in text and f"stderr says hi-{mode}" in text


def test_idle_instances_give_way_to_another_library(tmp_path):
    with serverless.Manager(local_cores=1, log_dir=tmp_path, heartbeat_interval=0.2,
                            heartbeat_timeout=3.0) as m:
        m.install(serverless.Library("first", [whoami]))
        m.install(serverless.Library("second", [whoami]))
        first = m.call("first", "whoami").result()
        second = m.call("second", "whoami").result()  # needs the only core
        assert first != second
        assert m.call("first", "whoami").result() not in (first, second)


def test_futures_work_with_concurrent_futures_tools(shared_manager):
    shared_manager.install(serverless.Library("cf", [add], mode="direct"))
    futures = [shared_manager.call("cf", "add", i, i) for i in range(50)]
    done, not_done = wait(futures, timeout=60)
    assert not not_done and sorted(f.result() for f in done) == [2 * i for i in range(50)]


def test_a_remote_worker_started_with_the_cli(tmp_path):
    from conftest import start_worker

    with serverless.Manager(local_workers=0, heartbeat_interval=0.2, heartbeat_timeout=3.0) as m:
        m.install(serverless.Library("remote", [whoami, add]))
        future = m.call("remote", "add", 2, 3)  # queued until a worker joins
        worker = start_worker(m.address, "--cores", "1", "--memory", "512",
                              "--workdir", str(tmp_path), secret_file=m.secret_file)
        assert future.result(timeout=60) == 5
        assert [w.cores for w in m.workers()] == [1.0]
        assert m.call("remote", "whoami").result() != os.getpid()
    assert worker.wait(timeout=30) == 0  # the manager's shutdown stops it


def test_no_process_is_left_after_shutdown(tmp_path):
    from conftest import assert_all_exited, tree_of

    m = serverless.Manager(local_cores=3, log_dir=tmp_path)  # room for both at once
    m.install(serverless.Library("f", [whoami], slots=2))
    m.install(serverless.Library("d", [whoami], mode="direct"))
    assert m.call("f", "whoami").result() and m.call("d", "whoami").result()
    procs = tree_of(m)
    titles = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "serverless worker" in titles and "serverless library f#" in titles
    assert "serverless library d#" in titles
    m.shutdown()
    assert_all_exited(procs)


def test_calls_after_shutdown_are_refused(tmp_path):
    m = serverless.Manager(local_cores=1, log_dir=tmp_path)
    m.shutdown()
    with pytest.raises(serverless.ManagerClosed):
        m.install(serverless.Library("late", [add]))


def test_log_dir_defaults_to_a_temporary_directory():
    with serverless.Manager(local_workers=0) as m:
        assert m.log_dir.is_dir() and m.log_dir.is_relative_to(tempfile.gettempdir())
