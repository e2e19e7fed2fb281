"""Pool construction, lifecycle, initializer, and teardown from outside the process."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

import shmpool

from . import kernels
from .conftest import child_pids, run_script, shm_entries


def test_defaults() -> None:
    with shmpool.SharedPool() as pool:
        assert pool.workers == shmpool.usable_cpus() == len(os.sched_getaffinity(0))
        assert pool.start_method == shmpool.default_start_method() == "forkserver"
        assert len(pool.worker_pids) == pool.workers
        assert "running" in repr(pool)
    assert "closed" in repr(pool)


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_must_be_positive(workers: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shmpool.SharedPool(workers)


@pytest.mark.parametrize("workers", [1.5, "2", True])
def test_workers_must_be_int(workers: object) -> None:
    with pytest.raises(TypeError, match="workers"):
        shmpool.SharedPool(workers)  # type: ignore[arg-type]


def test_bad_start_method_and_initializer() -> None:
    with pytest.raises(ValueError, match="start_method"):
        shmpool.SharedPool(1, start_method="thread")
    with pytest.raises(TypeError, match="initializer"):
        shmpool.SharedPool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress"):
        shmpool.SharedPool(1, progress="bar")  # type: ignore[arg-type]


def test_attributes_and_start_method(start_method: str) -> None:
    with shmpool.SharedPool(3, start_method=start_method) as pool:
        assert pool.workers == 3 and pool.start_method == start_method
        pids = pool.map(kernels.worker_pid, np.zeros(300), chunks=1)
        assert set(pids) <= set(pool.worker_pids)
        assert os.getpid() not in pids


def test_workers_are_persistent(pool: shmpool.SharedPool) -> None:
    first = set(pool.worker_pids)
    for _ in range(5):
        pool.map(kernels.worker_pid, np.zeros(10), chunks=1)
    assert set(pool.worker_pids) == first


def test_close_and_terminate_are_idempotent(start_method: str) -> None:
    pool = shmpool.SharedPool(2, start_method=start_method)
    x = pool.zeros(10)
    pool.close()
    pool.close()
    pool.terminate()
    assert pool.closed
    for call in (lambda: pool.map(np.sum, x), lambda: pool.empty(1), lambda: pool.free(x), pool.__enter__):
        with pytest.raises(shmpool.PoolClosedError):
            call()
    pool2 = shmpool.SharedPool(1, start_method=start_method)
    pool2.terminate()
    pool2.terminate()
    pool2.close()
    with pytest.raises(shmpool.PoolClosedError):
        pool2.map(np.sum, np.zeros(3))


def test_context_manager_terminates_on_error(start_method: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), shmpool.SharedPool(2, start_method=start_method) as pool:
        pool.zeros(10)
        raise RuntimeError("boom")
    assert pool.closed


def test_initializer_runs_once_per_worker(start_method: str, tmp_path: Path) -> None:
    with shmpool.SharedPool(
        2, start_method=start_method, initializer=kernels.record_init, initargs=(str(tmp_path), "ready")
    ) as pool:
        results = pool.map(kernels.init_tag, np.zeros(40), chunks=1)
        for _ in range(3):
            pool.map(kernels.init_tag, np.zeros(4), chunks=1)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2
    assert {tag for tag, _ in results} == {"ready"}
    assert {pid for _, pid in results} <= {int(f.name.split("-")[1]) for f in files}


def test_initializer_lambda(start_method: str) -> None:
    box = {"value": 5}
    with shmpool.SharedPool(1, start_method=start_method, initializer=lambda: box.update(value=6)) as pool:
        assert pool.map(kernels.chunk_length, np.zeros(3)) == [1, 1, 1]


def test_failing_initializer_is_reported(start_method: str) -> None:
    with shmpool.SharedPool(1, start_method=start_method, initializer=kernels.failing_init) as pool:
        with pytest.raises(shmpool.WorkerCrashedError, match="initializer") as info:
            pool.map(np.sum, np.zeros(3))
        cause = info.value.__cause__
        assert isinstance(cause, RuntimeError) and "initializer exploded" in str(cause)


def test_unclosed_pool_is_cleaned_up_by_gc(start_method: str) -> None:
    before_shm, before_children = shm_entries(), child_pids()
    pool = shmpool.SharedPool(2, start_method=start_method)
    a = pool.full(100, 2.0)
    del pool
    gc.collect()
    assert a.sum() == 200  # still valid
    assert shm_entries() <= before_shm
    assert child_pids() <= before_children


def test_interpreter_exit_cleans_up(start_method: str) -> None:
    proc = run_script(
        """
        import sys, numpy as np, shmpool
        pool = shmpool.SharedPool(2, start_method=sys.argv[1])
        x = pool.asarray(np.arange(1000.0))
        pool.map(lambda v: v.__imul__(2), x)
        print(pool.temp_folder, *pool.block_paths)
        # no close(): interpreter exit must clean up
        """,
        start_method,
    )
    _, *paths = proc.stdout.split()
    assert paths and not any(os.path.exists(p) for p in paths)


def test_main_module_kernels(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "main_kernel.py"
    script.write_text(
        "import sys, numpy as np, shmpool\n"
        "def triple(v):\n"
        "    v *= 3\n"
        "if __name__ == '__main__':\n"
        "    with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:\n"
        "        x = pool.asarray(np.arange(10))\n"
        "        pool.map(triple, x)\n"
        "        pool.map(lambda v: v.__iadd__(1), x)\n"
        "        print(x.tolist())\n"
    )
    proc = run_script(
        f"import runpy, sys; sys.argv = [{str(script)!r}, sys.argv[1]]; runpy.run_path(sys.argv[0], run_name='__main__')",
        start_method,
    )
    assert proc.stdout.strip() == str([3 * i + 1 for i in range(10)])
