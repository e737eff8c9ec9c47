"""Run by tests/test_fork_hooks.py under each Python: ``python fork_hook_probe.py FORK_HOOKS_PY``.

Forks children from a single-threaded and from a multi-threaded parent, first with
``threading``'s own after-fork hook, then with the fast path of worker/fork_hooks.py, and
prints (as JSON) what each child saw of its threading state and whether the full hook ran.
Standard library only: the interpreter under test need not have the project installed.
"""

import concurrent.futures
import json
import os
import runpy
import sys
import threading
import time


def observe() -> dict:
    seen = {
        "current_is_main": threading.current_thread() is threading.main_thread(),
        "threads": len(threading.enumerate()),
        "ident_ok": threading.current_thread().ident == threading.get_ident(),
        "native_id_ok": threading.current_thread().native_id == threading.get_native_id(),
    }
    thread = threading.Thread(target=time.sleep, args=(0.001,))
    thread.start()
    thread.join(10)
    seen["new_thread_joined"] = not thread.is_alive()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        seen["pool"] = sum(pool.map(abs, [-1, -2, -3]))
    return seen


def child_view(full_hook_ran: list) -> dict:
    """Fork; the child reports what it sees, then exits the normal way (threading's
    shutdown runs); the parent reads the report and checks the child exited 0 in time."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        report = {"full_hook_ran": bool(full_hook_ran), **observe()}
        os.write(write_fd, json.dumps(report).encode())
        os.close(write_fd)
        sys.exit(0)  # SystemExit: the interpreter's own exit, threading._shutdown included
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise SystemExit("a child did not exit")
        time.sleep(0.01)
    report = json.loads(b"".join(chunks))
    report["exit_code"] = os.waitstatus_to_exitcode(status)
    return report


def views(full_hook_ran: list) -> dict:
    out = {"single": child_view(full_hook_ran)}
    finished = threading.Thread(target=time.sleep, args=(0.001,))
    finished.start()
    finished.join()
    out["after_a_finished_thread"] = child_view(full_hook_ran)
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        out["multi"] = child_view(full_hook_ran)
    finally:
        stop.set()
        busy.join()
    return out


def main() -> None:
    hooks = runpy.run_path(sys.argv[1])
    full_hook_ran: list = []
    result = {"python": sys.version.split()[0], "stdlib": views(full_hook_ran)}
    result["applied"] = hooks["cheap_threading_fork_hook"]()
    original = getattr(threading, hooks["FAST_PATH_MARK"])

    def counted_full_hook() -> None:
        full_hook_ran.append(1)
        original()

    setattr(threading, hooks["FAST_PATH_MARK"], counted_full_hook)
    result["fast"] = views(full_hook_ran)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
