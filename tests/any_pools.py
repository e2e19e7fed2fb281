"""One pool of each type for the suites that hold for every pool (the contract, halo maps,
the executor): import ``any_pool`` and ``fresh_pool`` (and the Dask fixtures they use) into
a test module to run its tests on SharedPool, ThreadPool and, where Dask is installed,
DaskPool on a 2-worker LocalCluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import shmpool

from . import conftest

try:
    from .test_dask_pool import (
        DaskPool,
        dask_client,
        dask_cluster_processes_are_not_leaks,
        local_cluster,
    )
except pytest.skip.Exception:  # Dask is optional: these suites still hold for the others
    POOL_TYPES = ["SharedPool", "ThreadPool"]
else:
    POOL_TYPES = ["SharedPool", "ThreadPool", "DaskPool"]

__all__ = [
    "POOL_TYPES",
    "any_pool",
    "dask_client",
    "dask_cluster_processes_are_not_leaks",
    "fresh_pool",
    "local_cluster",
    "new_pool",
]


def new_pool(request: pytest.FixtureRequest) -> shmpool.Pool:
    """A new 2-worker pool of the type ``request.param`` names (not entered)."""
    if request.param == "SharedPool":
        return shmpool.SharedPool(2, start_method="forkserver")
    if request.param == "ThreadPool":
        return shmpool.ThreadPool(2)
    return DaskPool(request.getfixturevalue("dask_client"))


@pytest.fixture(scope="module", params=POOL_TYPES)
def any_pool(request: pytest.FixtureRequest) -> Iterator[shmpool.Pool]:
    """A pool of each type, shared by a module's tests."""
    pool = new_pool(request)
    if isinstance(pool, shmpool.SharedPool):
        conftest._live_shared_pools.append(pool)  # its blocks and workers are not leaks
    try:
        yield pool
    finally:
        if isinstance(pool, shmpool.SharedPool):
            conftest._live_shared_pools.remove(pool)
        pool.close()


@pytest.fixture(params=POOL_TYPES)
def fresh_pool(request: pytest.FixtureRequest) -> Iterator[shmpool.Pool]:
    """A new pool of each type, not entered: for a test that enters or closes it."""
    pool = new_pool(request)
    try:
        yield pool
    finally:
        pool.close()
