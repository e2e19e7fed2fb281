"""Dask graphs on shmpool's workers: ``pool.executor()`` as Dask's scheduler.

Dask's ``get_scheduler`` accepts any ``concurrent.futures.Executor`` and runs its local
scheduler over the executor's ``submit``, sized by its ``_max_workers``; these tests check
that a real ``dask.array`` graph and ``dask.delayed`` tasks run in the pool's workers, both
with ``scheduler=`` and with ``dask.config.set``, and that shared arrays inside tasks
travel as references.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import dask
import dask.array as da
import numpy as np
import pytest

import shmpool

from . import conftest

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=["SharedPool", "ThreadPool"])
def pool(request: pytest.FixtureRequest) -> Iterator[shmpool.Pool]:
    """A 2-worker SharedPool (forkserver) or ThreadPool shared by the module's tests."""
    made: shmpool.Pool
    if request.param == "SharedPool":
        made = shmpool.SharedPool(2, start_method="forkserver")
        conftest._live_shared_pools.append(made)
    else:
        made = shmpool.ThreadPool(2)
    try:
        yield made
    finally:
        if isinstance(made, shmpool.SharedPool):
            conftest._live_shared_pools.remove(made)
        made.close()


def where_run(i: int) -> int:
    return os.getpid()


def fill(out: np.ndarray, i: int) -> int:  # type: ignore[type-arg]
    out[i] = i * i
    return os.getpid()


def divide(a: float, b: float) -> float:
    return a / b


def _ran_in_workers(pool: shmpool.Pool, pids: set[int]) -> bool:
    if isinstance(pool, shmpool.SharedPool):
        return pids <= set(pool.worker_pids)
    return pids == {os.getpid()}  # a ThreadPool's workers are this process's threads


def test_a_dask_array_graph(pool: shmpool.Pool) -> None:
    x = da.random.default_rng(0).standard_normal((400, 300), chunks=(100, 100))
    y = (x @ x.T + 1).mean(axis=0)
    with pool.executor() as ex:
        (got,) = dask.compute(y, scheduler=ex)
    assert np.allclose(got, y.compute(scheduler="sync"))


def test_delayed_tasks_run_in_the_pools_workers(pool: shmpool.Pool) -> None:
    with pool.executor() as ex:
        pids = dask.compute(*[dask.delayed(where_run)(i) for i in range(8)], scheduler=ex)
    assert _ran_in_workers(pool, set(pids))


def test_dask_config_set_scheduler(pool: shmpool.Pool) -> None:
    out = pool.zeros(6)
    with pool.executor() as ex, dask.config.set(scheduler=ex):
        pids = dask.compute(*[dask.delayed(fill)(out, i) for i in range(6)])
        total = da.from_array(np.arange(100.0), chunks=10).sum().compute()
    # The shared array travelled by reference: the workers' writes are seen here.
    assert np.array_equal(out, np.arange(6.0) ** 2)
    assert _ran_in_workers(pool, set(pids))
    assert total == 4950.0


def test_a_task_error_is_raised_with_its_type(pool: shmpool.Pool) -> None:
    with pool.executor() as ex, pytest.raises(ZeroDivisionError):
        dask.compute(dask.delayed(divide)(1.0, 0.0), scheduler=ex)
    assert not pool.closed


def test_dask_sizes_its_scheduler_from_the_pool() -> None:
    # get_scheduler reads an Executor's _max_workers: it must be the pool's worker count.
    from dask.base import get_scheduler

    with shmpool.ThreadPool(3) as pool, pool.executor() as ex:
        scheduler = get_scheduler(scheduler=ex)
        assert scheduler.args == (ex.submit, 3)  # type: ignore[attr-defined]
