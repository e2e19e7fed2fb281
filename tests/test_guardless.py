"""Scripts without ``if __name__ == "__main__":``: shmpool's processes never run the
caller's main module again, under every start method, while the user's own processes
still do (multiprocessing's behaviour is left as it is for them).

Each script is a real file run by a fresh interpreter, since only a main module with a
``__file__`` is run again in children. Each writes a line to ``main_runs.log`` whenever
its module body runs, and imports ``marker``, which writes to ``imports.log``: counting the
lines tells how often the main module and its imports ran, in any process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from .conftest import SHM, START_METHODS, assert_clean_stderr

COUNTER = """
import os
with open("main_runs.log", "a") as _log:
    _log.write(f"{os.getpid()}\\n")
"""

MARKER = """
import os
with open("imports.log", "a") as _log:
    _log.write(f"{os.getpid()}\\n")
"""

SIBLING = """
def add_one(x):
    x += 1
"""


def run_file(tmp_path: Path, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Write ``code`` to ``tmp_path/script.py`` (with the run counter first) and run it
    there; it must exit 0 with no traceback on stderr."""
    (tmp_path / "marker.py").write_text(MARKER)
    (tmp_path / "sibling.py").write_text(SIBLING)
    script = tmp_path / "script.py"
    script.write_text(COUNTER + textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_clean_stderr(proc.stderr)
    return proc


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def assert_nothing_left(pids: list[int]) -> None:
    """The script's blocks are gone from /dev/shm and its workers and manager have ended
    (it exited, so they are no longer anyone's children here to check)."""
    script_pid, *helpers = pids
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        blocks = [n for n in os.listdir(SHM) if n.startswith(f"shmpool_{script_pid}_")]
        alive = [
            p for p in helpers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not blocks and not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"left behind: blocks {blocks}, processes {alive}")


@pytest.mark.parametrize("method", START_METHODS)
def test_pool_at_module_level(tmp_path: Path, method: str) -> None:
    proc = run_file(
        tmp_path,
        """
        import os, sys
        import numpy as np
        import shmpool
        import marker  # stands for the script's heavy imports
        from sibling import add_one  # a kernel the workers import by reference

        SCALE = 3.0

        class Box:
            def __init__(self, value):
                self.value = value

        def scale(x, out):
            out[:] = x * SCALE

        def boxed(x):
            return Box(float(x.sum()))

        pool = shmpool.SharedPool(2, start_method=sys.argv[1])
        x = pool.asarray(np.arange(8.0))
        y = pool.empty_like(x)
        pool.map(scale, x, y, chunks=4)
        pool.map(add_one, y, chunks=4)
        boxes = pool.map(boxed, x, chunks=2)
        print("result", y.tolist(), all(type(b) is Box for b in boxes), [b.value for b in boxes])
        print("pids", os.getpid(), *pool.worker_pids, pool.manager_pid)
        pool.close()
        """,
        method,
    )
    out = proc.stdout.splitlines()
    assert out[0] == f"result {[3.0 * i + 1 for i in range(8)]} True [1.0, 5.0, 9.0, 13.0]"
    pids = [int(p) for p in out[1].split()[1:]]
    assert len(pids) == 4
    # The main module and its imports ran once, in the script's own process.
    assert lines(tmp_path / "main_runs.log") == [str(pids[0])]
    assert lines(tmp_path / "imports.log") == [str(pids[0])]
    assert_nothing_left(pids)


def test_decorated_kernel_at_module_level(tmp_path: Path) -> None:
    # The first call starts the default pool (a SharedPool, forkserver) from module level.
    proc = run_file(
        tmp_path,
        """
        import os
        import numpy as np
        import shmpool

        @shmpool.kernel(chunks=3)
        def inc(x, *, by):
            x += by

        x = np.zeros(6)
        inc(x, by=4)
        pool = shmpool.default_pool()
        print(x.tolist(), type(pool).__name__)
        print("pids", os.getpid(), *pool.worker_pids, pool.manager_pid)
        """,
    )
    out = proc.stdout.splitlines()
    assert out[0] == f"{[4.0] * 6} SharedPool"
    pids = [int(p) for p in out[1].split()[1:]]
    assert lines(tmp_path / "main_runs.log") == [str(pids[0])]
    assert_nothing_left(pids)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_users_own_processes_still_run_main(tmp_path: Path, method: str) -> None:
    # The user's own child must find __main__.child: multiprocessing runs the script
    # again there, as always, even after a pool started its workers without it.
    proc = run_file(
        tmp_path,
        """
        import multiprocessing, os, sys
        import numpy as np
        import shmpool

        def child(queue):
            queue.put(__name__)

        if __name__ == "__main__":
            with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:
                total = sum(pool.map(np.sum, np.arange(4.0), chunks=2))
                ctx = multiprocessing.get_context(sys.argv[1])
                queue = ctx.Queue()
                process = ctx.Process(target=child, args=(queue,))
                process.start()
                print(total, queue.get(timeout=60))
                process.join()
                print("pids", os.getpid(), *pool.worker_pids, pool.manager_pid)
        """,
        method,
    )
    out = proc.stdout.splitlines()
    assert out[0] == "6.0 __mp_main__"
    pids = [int(p) for p in out[1].split()[1:]]
    runs = lines(tmp_path / "main_runs.log")
    assert runs[0] == str(pids[0]) and len(runs) == 2  # the script, and the user's child
    assert_nothing_left(pids)


def test_dask_pool_at_module_level(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    proc = run_file(
        tmp_path,
        """
        import os
        import numpy as np
        import shmpool

        def total(x):
            return float(x.sum())

        pool = shmpool.DaskPool()
        print(sum(pool.map(total, np.arange(10.0), chunks=2)))
        print("pids", os.getpid(), *pool.client.run(os.getpid).values())
        pool.close()
        """,
    )
    out = proc.stdout.splitlines()
    assert out[0] == "45.0"
    pids = [int(p) for p in out[1].split()[1:]]
    assert len(pids) >= 2  # the script and at least one worker
    assert lines(tmp_path / "main_runs.log") == [str(pids[0])]
    assert "Nanny failed" not in proc.stderr
    assert_nothing_left(pids)


MAIN_ENTRIES = {"init_main_from_path", "init_main_from_name"}


def test_main_is_left_out_only_where_asked() -> None:
    # What multiprocessing sends a new spawn/forkserver child: with this test run's main
    # module (pytest's), outside without_main() and in other threads, as always.
    from multiprocessing import spawn

    from shmpool._without_main import hold_for_name, without_main

    assert MAIN_ENTRIES & set(spawn.get_preparation_data("any"))
    elsewhere: list[dict[str, object]] = []
    with without_main():
        assert not MAIN_ENTRIES & set(spawn.get_preparation_data("any"))
        thread = threading.Thread(target=lambda: elsewhere.append(spawn.get_preparation_data("any")))
        thread.start()
        thread.join()
    assert MAIN_ENTRIES & set(elsewhere[0])
    assert MAIN_ENTRIES & set(spawn.get_preparation_data("any"))
    release = hold_for_name("a held name")
    try:
        assert not MAIN_ENTRIES & set(spawn.get_preparation_data("a held name"))
        assert MAIN_ENTRIES & set(spawn.get_preparation_data("another name"))
    finally:
        release()
        release()  # a second release changes nothing
    assert MAIN_ENTRIES & set(spawn.get_preparation_data("a held name"))
