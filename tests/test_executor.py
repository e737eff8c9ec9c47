"""serverless.Executor beyond CPython's tests: which function gets which library, chunking
that really batches, __main__ functions, and an executor over a manager serving a worker
started by hand. Real processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import serverless
from conftest import FAST, start_worker

pytestmark = pytest.mark.timeout(180)


def pid_of(_x):
    return os.getpid()


def square(x):
    return x * x


def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def make_adder(k):
    def add(x):
        return x + k
    return add


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    with serverless.Executor(local_cores=2, log_dir=tmp_path_factory.mktemp("logs"), **FAST) as e:
        yield e


def test_same_function_same_library_and_closures_by_value(ex):
    assert ex.submit(square, 3).result() == 9
    assert ex.submit(square, 4).result() == 16
    made = ex.libraries()
    assert len([n for n in made if n.startswith("square-")]) == 1
    add1, add1_again, add2 = make_adder(1), make_adder(1), make_adder(2)
    assert ex.submit(add1, 1).result() == 2
    assert ex.submit(add2, 1).result() == 3
    assert ex.submit(add1_again, 1).result() == 2  # equal by value: add1's library
    assert len([n for n in ex.libraries() if "add" in n]) == 2
    # lambdas made anew each time, with the same code and values, share one library
    for n in range(3):
        assert ex.submit(lambda x: x * 10, n).result() == n * 10
    assert len([n for n in ex.libraries() if "lambda" in n]) == 1


def test_chunks_really_batch(ex):
    # fork mode: a chunk is one call, run in one forked child
    pids = list(ex.map(pid_of, range(20), chunksize=10))
    assert len(set(pids)) <= 2
    one_by_one = list(ex.map(pid_of, range(6)))
    assert len(set(one_by_one)) == 6  # a child per call
    assert list(ex.map(square, range(25), chunksize=7)) == [x * x for x in range(25)]


def test_a_failing_item_fails_its_chunk(ex):
    results = ex.map(fails_on_three, range(8), chunksize=4)
    with pytest.raises(ValueError, match="three"):
        list(results)


def test_manager_map_chunksize(tmp_path):
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("m", [pid_of, square]))
        assert list(m.map("m", "square", range(10), chunksize=3)) == [x * x for x in range(10)]
        assert len(set(m.map("m", "pid_of", range(12), chunksize=6))) <= 2
        with pytest.raises(ValueError):
            m.map("m", "square", range(3), chunksize=0)
        with pytest.raises(serverless.UnknownFunction):
            m.map("m", "nope", range(3), chunksize=2)


def test_functions_from_main_work(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(f"""
        import serverless

        def cube(x):
            return x ** 3

        if __name__ == "__main__":
            with serverless.Executor(local_cores=2, log_dir={str(tmp_path / 'logs')!r}) as ex:
                print(sum(ex.map(cube, range(10), chunksize=4)), ex.submit(lambda: "lam").result())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=150, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(x ** 3 for x in range(10))), "lam"]


def test_executor_over_a_manager_with_a_remote_worker(tmp_path):
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        args = ["--cores", "2", "--workdir", str(tmp_path / "w")]
        if m.secret_file is not None:
            args += ["--secret-file", str(m.secret_file)]
        worker = start_worker(m.address, *args)
        try:
            with serverless.Executor(m, mode="direct") as ex:
                assert list(ex.map(square, range(10), chunksize=5)) == [x * x for x in range(10)]
                assert ex.submit(pid_of, 0).result() != os.getpid()
        finally:
            worker.terminate()
            worker.wait(30)
        assert not m.libraries()  # the executor removed what it installed
