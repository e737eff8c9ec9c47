"""Environments: libraries that run with a packed environment's interpreter, unpacked once per node.

Real managers, workers and library processes on 127.0.0.1. The environments are bare venvs
(``python -m venv --without-pip``: an interpreter and nothing else), which is also the
proof that an environment needs no serverless and no cloudpickle of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

import serverless
from serverless.worker.environments import (
    EnvironmentUnpackError,
    prepare_environment,
)

from conftest import FAST, assert_no_descendants, start_worker


def _bare_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    return where


def _tar(source: Path, archive: Path, extra: dict[str, tuple[str, int]] | None = None) -> Path:
    """``source``'s contents at the top level of ``archive`` (as conda-pack and venv-pack do),
    plus ``extra`` files {name: (text, mode)}."""
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
        for name, (text, mode) in (extra or {}).items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            import io
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture(scope="module")
def bare_archive(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("env")
    return _tar(_bare_venv(base / "bare"), base / "bare.tar.gz")


def _unpacks(env_dir: Path) -> list[dict]:
    log = env_dir / "unpack.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def where_am_i():
    import os
    import sys

    import cloudpickle
    return {"executable": sys.executable, "prefix": sys.prefix,
            "pythonpath": os.environ.get("PYTHONPATH"), "cloudpickle": cloudpickle.__file__,
            "pid": os.getppid()}


def test_library_runs_with_the_environments_interpreter(tmp_path, bare_archive, monkeypatch):
    env_dir = tmp_path / "envs"
    monkeypatch.setenv("SERVERLESS_ENV_DIR", str(env_dir))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "worker-only"))  # must not reach the env
    env = serverless.Environment(bare_archive)
    lib = serverless.Library("envlib", [where_am_i], environment=env)
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        seen = m.call("envlib", "where_am_i").result(timeout=60)
    root = env_dir / env.id
    assert seen["prefix"] == str(root)
    assert seen["executable"] == str(root / "bin" / "python")
    assert seen["pythonpath"] is None
    # the bare venv has no cloudpickle: the worker's own copy was lent by the bootstrap
    assert not seen["cloudpickle"].startswith(str(root))
    assert len(_unpacks(env_dir)) == 1


def test_environment_directory_is_used_where_it_is(tmp_path):
    venv = _bare_venv(tmp_path / "shared-venv")
    lib = serverless.Library("dirlib", [where_am_i], environment=serverless.Environment(venv))
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        seen = m.call("dirlib", "where_am_i").result(timeout=60)
    assert seen["prefix"] == str(venv)


def who_runs_me(work: float) -> tuple[str, int, int]:
    """The environment, the library instance and the worker agent running this call."""
    import os
    import sys
    import time
    time.sleep(work)  # the call's work: keeps instances busy so that more are deployed
    library = os.getppid()  # fork mode: the library process is the parent
    with open(f"/proc/{library}/stat") as f:
        agent = int(f.read().rsplit(")", 1)[1].split()[1])
    return sys.prefix, library, agent


def test_two_workers_and_their_instances_share_one_unpack(tmp_path, bare_archive):
    """Two workers with one node-level env dir, instances started at once: one unpack."""
    env_dir = tmp_path / "node-envs"
    env = serverless.Environment(bare_archive)
    lib = serverless.Library("conc", [who_runs_me], environment=env, slots=1, cores=1)
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        workers = [start_worker(m.address, "--cores", "2", "--name", f"w{i}",
                                "--env-dir", str(env_dir), "--workdir", str(tmp_path / f"w{i}"),
                                secret_file=m.secret_file)
                   for i in range(2)]
        try:
            m.install(lib)
            futures = [m.call("conc", "who_runs_me", 0.3) for _ in range(16)]
            results = [f.result(timeout=90) for f in futures]
        finally:
            m.shutdown()
            for w in workers:
                w.wait(30)
    assert {prefix for prefix, _, _ in results} == {str(env_dir / env.id)}
    assert {agent for _, _, agent in results} == {w.pid for w in workers}
    assert len({library for _, library, _ in results}) >= 3
    assert len(_unpacks(env_dir)) == 1
    assert not list(env_dir.glob(".tmp-*"))


PREPARE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from serverless.worker.environments import prepare_environment
    print(prepare_environment(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])).root)
""")


def test_concurrent_prepares_unpack_once(tmp_path, bare_archive):
    env_dir = tmp_path / "envs"
    content_id = "b3-" + "a" * 64
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(bare_archive), content_id,
                               str(env_dir)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    roots = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert [p.returncode for p in procs] == [0] * 6
    assert roots == {str(env_dir / content_id)}
    assert len(_unpacks(env_dir)) == 1


CRASHER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from serverless.worker.environments import prepare_environment
    archive, content_id, env_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    def hang(text):
        # holding the lock: leave what an unpack killed half-way leaves, then hang
        partial = env_dir / f".tmp-{content_id}-{os.getpid()}" / "lib"
        partial.mkdir(parents=True)
        (partial / "half-written").write_bytes(b"x" * 1000)
        (env_dir / content_id).mkdir()  # renamed into place, .ready never written
        print("locked", flush=True)
        time.sleep(600)
    prepare_environment(archive, content_id, env_dir, progress=hang)
""")


def test_a_crashed_unpack_leaves_no_stale_lock(tmp_path, bare_archive):
    env_dir = tmp_path / "envs"
    content_id = "b3-" + "b" * 64
    crasher = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(bare_archive), content_id, str(env_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert crasher.stdout.readline().strip() == "locked"
        crasher.send_signal(signal.SIGKILL)
        crasher.wait(30)
    finally:
        crasher.kill()
    assert (env_dir / f"{content_id}.lock").exists()  # the file stays; the lock does not
    started = time.monotonic()
    prepared = prepare_environment(bare_archive, content_id, env_dir)
    assert prepared.unpacked and time.monotonic() - started < 30
    assert prepared.python.exists()
    assert not list(env_dir.glob(".tmp-*"))
    assert not (prepared.root / "lib" / "half-written").exists()
    assert len(_unpacks(env_dir)) == 1


def test_conda_unpack_runs_where_the_environment_lands(tmp_path):
    venv = _bare_venv(tmp_path / "condaish")
    (venv / "conda-meta").mkdir()
    script = ("import os, sys\n"
              "root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
              "open(os.path.join(root, 'unpacked-at'), 'w').write(root)\n")
    archive = _tar(venv, tmp_path / "condaish.tar.gz", {"bin/conda-unpack": (script, 0o755)})
    prepared = prepare_environment(archive, "b3-" + "c" * 64, tmp_path / "envs")
    assert prepared.kind == "conda"
    assert (prepared.root / "unpacked-at").read_text() == str(prepared.root)


@pytest.mark.parametrize("damage", ["truncated", "not-an-archive", "no-interpreter"])
def test_a_bad_archive_fails_the_library_with_its_error(tmp_path, bare_archive, damage, monkeypatch):
    monkeypatch.setenv("SERVERLESS_ENV_DIR", str(tmp_path / "envs"))
    bad = tmp_path / "bad.tar.gz"
    if damage == "truncated":
        data = bare_archive.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "could not be unpacked"
    elif damage == "not-an-archive":
        bad.write_bytes(os.urandom(5000))
        expected = "could not be unpacked"
    else:
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "README").write_text("no environment here")
        _tar(tmp_path / "empty", bad)
        expected = "no bin/"
    lib = serverless.Library("badenv", [where_am_i], environment=serverless.Environment(bad))
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        with pytest.raises(serverless.LibraryFailed) as info:
            m.call("badenv", "where_am_i").result(timeout=60)
    assert expected in str(info.value)
    assert not list((tmp_path / "envs").glob(".tmp-*"))
    assert not list((tmp_path / "envs").glob("*.ready"))
    assert_no_descendants()


def test_prepare_refuses_a_truncated_archive_with_the_readers_message(tmp_path, bare_archive):
    data = bare_archive.read_bytes()
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(EnvironmentUnpackError, match="could not be unpacked: .*(EOF|end|truncated)"):
        prepare_environment(bad, "b3-" + "d" * 64, tmp_path / "envs")


def test_missing_environment_and_python_with_environment_are_refused(tmp_path, bare_archive):
    with pytest.raises(FileNotFoundError):
        serverless.Environment(tmp_path / "nothing.tar.gz")
    with pytest.raises(ValueError, match="not both"):
        serverless.Library("x", [where_am_i], environment=bare_archive, python=sys.executable)


def test_serverless_pack_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("venv_pack", reason="venv-pack is not installed (pip install 'serverless[pack]')")
    venv = _bare_venv(tmp_path / "topack")
    archive = tmp_path / "packed.tar.gz"
    done = subprocess.run([sys.executable, "-m", "serverless.pack", str(venv), "-o", str(archive)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(archive)
    monkeypatch.setenv("SERVERLESS_ENV_DIR", str(tmp_path / "envs"))
    env = serverless.Environment(archive)
    lib = serverless.Library("packed", [where_am_i], environment=env)
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        seen = m.call("packed", "where_am_i").result(timeout=60)
    assert seen["prefix"] == str(tmp_path / "envs" / env.id)


def test_serverless_pack_says_what_is_wrong(tmp_path):
    done = subprocess.run([sys.executable, "-m", "serverless.pack", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "neither a conda environment" in done.stderr


def _other_minor_python() -> str | None:
    """An interpreter of another minor version than this one, if the machine has one."""
    import glob
    import shutil
    for minor in (12, 13, 11, 10):
        if minor == sys.version_info[1]:
            continue
        candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3")))
        candidates += [shutil.which(f"python3.{minor}") or ""]
        for found in filter(None, candidates):
            if subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
                return found
    return None


def test_an_environment_of_another_python_version_fails_with_the_reason(tmp_path, monkeypatch):
    other = _other_minor_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    subprocess.run([other, "-m", "venv", "--without-pip", str(tmp_path / "other")], check=True)
    archive = _tar(tmp_path / "other", tmp_path / "other.tar.gz")
    monkeypatch.setenv("SERVERLESS_ENV_DIR", str(tmp_path / "envs"))
    lib = serverless.Library("otherpy", [where_am_i], environment=archive)
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(lib)
        with pytest.raises(serverless.LibraryFailed) as info:
            m.call("otherpy", "where_am_i").result(timeout=60)
    assert "the manager runs %d.%d" % sys.version_info[:2] in str(info.value)


def _cluster_run(tmp_path: Path, archive: Path, names: list[str], calls: int):
    """Workers ``names`` (each a node of its own: cache and env dir), ``calls`` calls of
    who_runs_me; (results, bytes the manager's chunk server sent)."""
    env = serverless.Environment(archive)
    lib = serverless.Library("spread", [who_runs_me], environment=env, slots=1, cores=1)
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        workers = [start_worker(m.address, "--cores", "1", "--name", name,
                                "--env-dir", str(tmp_path / name / "envs"),
                                "--cache-dir", str(tmp_path / name / f"cache-{len(names)}"),
                                "--workdir", str(tmp_path / name / "work"),
                                secret_file=m.secret_file)
                   for name in names]
        try:
            m.install(lib)
            results = [f.result(timeout=90) for f in
                       [m.call("spread", "who_runs_me", 0.3) for _ in range(calls)]]
            sent = m._loop.data.bytes_sent
            cached = {name: (tmp_path / name / f"cache-{len(names)}" / env.id).exists()
                      for name in names}
        finally:
            m.shutdown()
            for w in workers:
                w.wait(30)
    return env, results, sent, {w.pid for w in workers}, cached


def test_the_archive_travels_through_the_cache_once_and_a_warm_node_fetches_nothing(tmp_path):
    venv = _bare_venv(tmp_path / "padded")
    (venv / "payload.bin").write_bytes(os.urandom(6 * 2**20))  # something worth sending
    archive = _tar(venv, tmp_path / "padded.tar.gz")
    size = archive.stat().st_size
    env, results, sent, pids, cached = _cluster_run(tmp_path, archive, ["n0", "n1", "n2"], 24)
    assert {agent for _, _, agent in results} == pids  # every node ran calls
    assert cached == {"n0": True, "n1": True, "n2": True}  # it came through each one's cache
    for name in ("n0", "n1", "n2"):
        assert len(_unpacks(tmp_path / name / "envs")) == 1
    assert size <= sent <= 2 * size  # the manager sent it about once; peers carried the rest
    # a node that kept its environment directory starts with no transfer at all
    env, results, sent, _, cached = _cluster_run(tmp_path, archive, ["n0"], 2)
    assert sent == 0 and cached == {"n0": False}
    assert len(_unpacks(tmp_path / "n0" / "envs")) == 1


def test_an_archive_that_can_never_fit_the_cache_fails_the_library_with_cache_full(tmp_path):
    venv = _bare_venv(tmp_path / "big")
    (venv / "payload.bin").write_bytes(os.urandom(3 * 2**20))
    archive = _tar(venv, tmp_path / "big.tar.gz")
    lib = serverless.Library("toobig", [where_am_i], environment=archive)
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", **FAST) as m:
        worker = start_worker(m.address, "--cores", "1", "--disk", "1",
                              "--env-dir", str(tmp_path / "envs"),
                              "--cache-dir", str(tmp_path / "cache"),
                              "--workdir", str(tmp_path / "work"), secret_file=m.secret_file)
        try:
            m.install(lib)
            with pytest.raises(serverless.LibraryFailed) as info:
                m.call("toobig", "where_am_i").result(timeout=60)
        finally:
            m.shutdown()
            worker.wait(30)
    assert "CacheFull" in str(info.value) or "cache" in str(info.value).lower()
    assert not (tmp_path / "envs").exists() or not list((tmp_path / "envs").glob("*.ready"))
