"""pool.executor(): a concurrent.futures.Executor on the pool's workers, on every pool type.

Each test checks a behaviour concurrent.futures documents for Executor, Executor.map,
Executor.shutdown and Future (the ones the standard library's own executor tests check),
against SharedPool, ThreadPool and DaskPool alike; shutting the executor down never closes
the pool.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmpool

from .any_pools import (  # noqa: F401 - fixtures used by name
    DaskPool,
    any_pool,
    dask_client,
    dask_cluster_processes_are_not_leaks,
    local_cluster,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def executor(any_pool: shmpool.Pool) -> Iterator[shmpool.PoolExecutor]:
    """A fresh executor on the module's pool; shut down (not the pool) afterwards."""
    ex = any_pool.executor()
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)
    assert not any_pool.closed


def add(a: int, b: int = 0) -> int:
    return a + b


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * 10


def hold_until(path: str, value: Any) -> Any:
    """Return ``value`` once ``path`` exists (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def fill_row(out: np.ndarray, row: int) -> int:  # type: ignore[type-arg]
    out[row] = row
    return os.getpid()


# ---- submit ---------------------------------------------------------------------------------


def test_is_an_executor_and_submit_returns_a_future(executor: shmpool.PoolExecutor) -> None:
    assert isinstance(executor, futures.Executor)
    future = executor.submit(add, 2, b=3)
    assert isinstance(future, futures.Future)
    assert future.result(timeout=30) == 5
    assert future.done() and not future.cancelled() and not future.running()
    assert future.exception() is None


def test_submit_runs_in_the_pools_workers(any_pool: shmpool.Pool, executor: shmpool.PoolExecutor) -> None:
    seen = {executor.submit(pid_after, 0.2).result(timeout=30) for _ in range(4)}
    if isinstance(any_pool, shmpool.SharedPool):
        assert seen <= set(any_pool.worker_pids)
    elif isinstance(any_pool, shmpool.ThreadPool):
        assert seen == {os.getpid()}
    else:
        assert os.getpid() not in seen  # the cluster's worker processes


def test_exception_is_set_on_the_future(executor: shmpool.PoolExecutor) -> None:
    future = executor.submit(fail_on, 1, 1)
    with pytest.raises(ValueError, match="bad item 1"):
        future.result(timeout=30)
    assert isinstance(future.exception(), ValueError)


def test_a_non_callable_fails_through_its_future(executor: shmpool.PoolExecutor) -> None:
    # As with the standard executors: submit() accepts it, the future carries the TypeError.
    future = executor.submit(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        future.result(timeout=30)


def test_done_callbacks_run_once_each(executor: shmpool.PoolExecutor) -> None:
    called: list[tuple[str, int]] = []
    done = threading.Event()
    future = executor.submit(sleep_then, 0.2, 7)
    future.add_done_callback(lambda f: called.append(("first", f.result())))
    future.add_done_callback(lambda f: (called.append(("second", f.result())), done.set()))
    assert done.wait(30)
    future.add_done_callback(lambda f: called.append(("late", f.result())))  # runs at once
    assert called == [("first", 7), ("second", 7), ("late", 7)]


def test_wait_and_as_completed(executor: shmpool.PoolExecutor, tmp_path: Path) -> None:
    release = tmp_path / "release"
    # The slow call ends when the test says so, not after a time a busy machine may outrun.
    slow = executor.submit(hold_until, str(release), "slow")
    fast = executor.submit(sleep_then, 0.0, "fast")
    try:
        done, not_done = futures.wait([slow, fast], timeout=30, return_when=futures.FIRST_COMPLETED)
        assert fast in done and slow in not_done
    finally:
        release.touch()
    assert [f.result() for f in futures.as_completed([slow, fast], timeout=30)] == ["fast", "slow"]


def test_a_queued_future_can_be_cancelled_a_running_one_cannot(
    any_pool: shmpool.Pool, executor: shmpool.PoolExecutor
) -> None:
    # workers + 1 calls go to the pool (RUNNING); the next ones wait here (PENDING).
    running = [executor.submit(sleep_then, 1.0, i) for i in range(any_pool.workers + 1)]
    queued = executor.submit(sleep_then, 0.0, "never")
    deadline = time.monotonic() + 10
    while not all(f.running() or f.done() for f in running) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not queued.running()
    assert queued.cancel() and queued.cancelled() and queued.done()
    with pytest.raises(futures.CancelledError):
        queued.result()
    assert not running[0].cancel() and not running[0].cancelled()
    assert [f.result(timeout=30) for f in running] == list(range(any_pool.workers + 1))


def test_shared_arrays_travel_by_reference() -> None:
    with shmpool.SharedPool(2, start_method="fork") as pool, pool.executor() as ex:
        out = pool.zeros(6)
        pids = set(ex.map(fill_row, [out] * 6, range(6)))
        assert np.array_equal(out, np.arange(6.0))
        assert pids <= set(pool.worker_pids)


# ---- map ------------------------------------------------------------------------------------


def test_map_results_in_order_over_several_iterables(executor: shmpool.PoolExecutor) -> None:
    assert list(executor.map(add, range(10), range(100, 120))) == [i + 100 + i for i in range(10)]
    assert list(executor.map(add, [])) == []
    # The shortest iterable ends it, as with the builtin map.
    assert list(executor.map(add, [1, 2, 3], [10])) == [11]


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_chunksize_gives_the_same_results(executor: shmpool.PoolExecutor, chunksize: int) -> None:
    assert list(executor.map(add, range(20), range(20), chunksize=chunksize)) == [2 * i for i in range(20)]


def test_map_rejects_chunksize_below_one(executor: shmpool.PoolExecutor) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(add, [1], chunksize=0)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_raises_at_the_failing_item(executor: shmpool.PoolExecutor, chunksize: int) -> None:
    results = executor.map(fail_on, range(10), [5] * 10, chunksize=chunksize)
    got = []
    with pytest.raises(ValueError, match="bad item 5"):
        for value in results:
            got.append(value)
    assert got == [0, 10, 20, 30, 40]  # every result before the failing item, then its error


def test_map_is_lazy_in_its_results(executor: shmpool.PoolExecutor) -> None:
    results = executor.map(sleep_then, [0.0, 3.0], ["first", "last"])
    start = time.monotonic()
    assert next(results) == "first"
    assert time.monotonic() - start < 2.5  # did not wait for the slow item
    assert next(results) == "last"


def test_map_timeout_is_counted_from_the_call(executor: shmpool.PoolExecutor) -> None:
    start = time.monotonic()
    results = executor.map(sleep_then, [0.0, 5.0], [1, 2], timeout=1.5)
    time.sleep(1.0)  # time spent before iterating counts against the timeout
    assert next(results) == 1
    with pytest.raises(futures.TimeoutError):
        next(results)
    assert 1.4 < time.monotonic() - start < 4.0


def test_map_submits_at_the_call_and_closing_it_cancels_the_rest(
    any_pool: shmpool.Pool, executor: shmpool.PoolExecutor
) -> None:
    started = time.monotonic()
    n = any_pool.workers + 1
    results = executor.map(sleep_then, [0.5] * n + [0.5] * 20, range(n + 20))
    assert next(results) == 0
    results.close()  # the calls still queued here are cancelled, not run
    executor.shutdown(wait=True)
    # 25 calls of 0.5 s on 2 workers would take over 6 s.
    assert time.monotonic() - started < 5.0


# ---- shutdown ------------------------------------------------------------------------------


def test_submit_and_map_after_shutdown_raise(executor: shmpool.PoolExecutor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(add, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(add, [1])
    executor.shutdown()  # idempotent


def test_context_manager_shuts_down_and_waits(any_pool: shmpool.Pool) -> None:
    with any_pool.executor() as ex:
        future = ex.submit(sleep_then, 0.5, "done")
    assert future.done() and future.result() == "done"
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)
    assert not any_pool.closed
    assert any_pool.submit(add, 1, 2).result(timeout=30) == 3  # the pool still works


def test_shutdown_without_wait_returns_at_once_and_the_calls_still_finish(
    executor: shmpool.PoolExecutor,
) -> None:
    calls = [executor.submit(sleep_then, 0.5, i) for i in range(5)]
    start = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - start < 0.3
    assert [f.result(timeout=30) for f in calls] == list(range(5))


def test_shutdown_cancel_futures_cancels_only_the_queued(
    any_pool: shmpool.Pool, executor: shmpool.PoolExecutor
) -> None:
    n = any_pool.workers + 1
    calls = [executor.submit(sleep_then, 0.5, i) for i in range(n + 5)]
    deadline = time.monotonic() + 10
    while not all(f.running() for f in calls[:n]) and time.monotonic() < deadline:
        time.sleep(0.01)
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in calls)
    assert [f.result() for f in calls[:n]] == list(range(n))
    assert all(f.cancelled() for f in calls[n:])


def test_an_executor_left_idle_holds_no_thread(any_pool: shmpool.Pool) -> None:
    ex = any_pool.executor()
    assert ex.submit(add, 1).result(timeout=30) == 1
    deadline = time.monotonic() + 5
    while any(t.name == "shmpool-executor" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "shmpool-executor" for t in threading.enumerate())
    assert ex.submit(add, 2).result(timeout=30) == 2  # and starts one again when needed
    ex.shutdown()


def test_a_closed_pool_refuses_and_fails_queued_calls() -> None:
    pool = shmpool.ThreadPool(1)
    ex = pool.executor()
    calls = [ex.submit(sleep_then, 0.3, i) for i in range(4)]
    deadline = time.monotonic() + 10
    while not calls[1].running() and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.close()  # waits for the calls in the pool; the queued ones cannot start
    outcomes = []
    for f in calls:
        try:
            outcomes.append(f.result(timeout=30))
        except shmpool.PoolClosedError:
            outcomes.append("closed")
    assert outcomes[:2] == [0, 1] and "closed" in outcomes
    with pytest.raises(shmpool.PoolClosedError):
        ex.submit(add, 1)
    ex.shutdown()
