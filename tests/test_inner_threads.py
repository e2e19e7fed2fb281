"""Workers limit their BLAS/OpenMP thread pools (inner_threads), under every start method,
checked from inside the workers with threadpoolctl; ThreadPool limits them while it maps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import threadpoolctl

import shmpool
from shmpool import _inner


def _limits(_: object = None) -> dict[str, Any]:
    """What a worker sees: its thread pools, its environment now and at its start."""
    with open("/proc/self/environ", "rb") as f:
        at_exec = dict(entry.decode().split("=", 1) for entry in f.read().split(b"\0") if b"=" in entry)
    return {
        "pools": {lib["internal_api"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()},
        "env": os.environ.get("OPENBLAS_NUM_THREADS"),
        "at_exec": at_exec.get("OMP_NUM_THREADS"),
    }


def _mark(value: str) -> None:
    os.environ["X_INIT"] = value


@pytest.fixture(autouse=True)
def no_thread_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _inner.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("inner", ["auto", 3])
def test_workers_limit_their_thread_pools(start_method: str, inner: str | int) -> None:
    expected = max(1, shmpool.usable_cpus() // 2) if inner == "auto" else 3
    with shmpool.SharedPool(2, start_method=start_method, inner_threads=inner) as pool:
        assert pool.inner_threads == expected
        seen = list(pool.imap(_limits, range(8)))
        # A replacement worker is limited too.
        os.kill(pool.worker_pids[0], 9)
        with pytest.raises(shmpool.WorkerCrashedError):
            pool.submit(os._exit, 1).result()
        seen += list(pool.imap(_limits, range(8)))
    for worker in seen:
        assert worker["pools"], "NumPy's BLAS is loaded in every worker"
        assert set(worker["pools"].values()) == {expected}, worker
        assert worker["env"] == str(expected)  # for libraries loaded later
        # Under spawn the variables are in the environment the worker started with, so a
        # BLAS loaded before any code of ours ran there read them.
        assert worker["at_exec"] == (str(expected) if start_method == "spawn" else None)
    assert "OMP_NUM_THREADS" not in os.environ  # the parent's environment is as it was


def test_none_leaves_the_thread_pools_alone(start_method: str) -> None:
    fresh = max(threadpoolctl.threadpool_info()[0]["num_threads"], 1)
    # The parent's own setting, which fork and forkserver children start with.
    with (
        threadpoolctl.threadpool_limits(limits=fresh),
        shmpool.SharedPool(2, start_method=start_method, inner_threads=None) as pool,
    ):
        assert pool.inner_threads is None
        seen = list(pool.imap(_limits, range(4)))
    for worker in seen:
        assert worker["env"] is None and worker["at_exec"] is None
        assert set(worker["pools"].values()) == {fresh}


def test_the_limit_comes_before_the_users_initializer(start_method: str) -> None:
    with shmpool.SharedPool(
        1,
        start_method=start_method,
        inner_threads=2,
        initializer=_mark,
        initargs=("1",),
    ) as pool:
        assert pool.submit(lambda: (os.environ["X_INIT"], _limits()["env"])).result() == ("1", "2")
    with (
        pytest.raises(shmpool.WorkerCrashedError, match=r"initializer raised builtins\.ZeroDivisionError"),
        shmpool.SharedPool(1, start_method=start_method, initializer=divmod, initargs=(1, 0)) as pool,
    ):
        pool.submit(int).result()


@pytest.mark.parametrize(
    ("value", "workers", "cpus", "expected"),
    [
        ("auto", 2, 2, 1),
        ("auto", 8, 64, 8),
        ("auto", 3, 2, 1),
        ("auto", 1, 16, 16),
        (None, 4, 4, None),
        (5, 2, 2, 5),
    ],
)
def test_inner_threads_values(value: Any, workers: int, cpus: int, expected: int | None) -> None:
    assert _inner.check_inner_threads(value, workers, cpus) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), ("4", TypeError), (True, TypeError), (2.0, TypeError)],
)
def test_bad_inner_threads(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="inner_threads"):
        shmpool.SharedPool(1, start_method="fork", inner_threads=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="inner_threads"):
        shmpool.ThreadPool(1, inner_threads=value)  # type: ignore[arg-type]


def _blas_threads() -> int:
    return int(threadpoolctl.threadpool_info()[0]["num_threads"])


def test_thread_pool_limits_blas_while_a_map_runs() -> None:
    before = _blas_threads()
    with shmpool.ThreadPool(2) as pool:
        expected = max(1, shmpool.usable_cpus() // 2)
        assert pool.inner_threads == expected
        inside = pool.map(lambda x: _blas_threads(), np.zeros(8))
        assert set(inside) == {expected}
        assert _blas_threads() == before  # restored when the map ended
        with shmpool.ThreadPool(2, inner_threads=None) as free:
            assert set(free.map(lambda x: _blas_threads(), np.zeros(4))) == {before}
        # Two maps at once: the limit holds until the last one ends.
        first = pool.map_async(lambda x: _blas_threads(), np.zeros(4))
        assert set(pool.map(lambda x: _blas_threads(), np.zeros(4))) == {expected}
        assert set(first.result()) == {expected}
    assert _blas_threads() == before


def test_the_benchmark_runs_and_reports_the_threads_each_worker_had() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "inner_threads.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    limited = max(1, shmpool.usable_cpus() // 2)
    assert (
        "shmpool limited" in done.stdout
        and f"inner_threads={limited}: [{limited}] BLAS threads" in done.stdout
    )
    assert "inner_threads=None" in done.stdout
