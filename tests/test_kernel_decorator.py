"""The @shmpool.kernel decorator, the active pool and the default pool."""

from __future__ import annotations

import functools
import pickle
import threading

import cloudpickle
import numpy as np
import pytest

import shmpool

from .conftest import run_script
from .kernels_decorated import column_sums, saxpy, twice_saxpy


def test_decorated_call_is_a_map_on_the_active_pool(pool: shmpool.SharedPool) -> None:
    # The fixture entered the pool with "with": it is the active pool.
    assert shmpool.active_pool() is pool
    x = pool.asarray(np.arange(100.0))
    y = pool.full(100, 1.0)
    out = pool.empty_like(x)
    before = pool.stats.maps
    result = saxpy(x, y, out, a=3.0)
    assert result == [None] * len(result) and len(result) > 1
    assert np.array_equal(out, 3.0 * x + 1.0)
    assert pool.stats.maps == before + 1


def test_options_and_overrides(pool: shmpool.SharedPool) -> None:
    data = pool.asarray(np.arange(12.0).reshape(3, 4))
    sums = column_sums(data)
    assert len(sums) == 2 and np.array_equal(np.concatenate(sums), data.sum(axis=0))
    assert len(column_sums(data, chunks=4)) == 1
    assert len(column_sums(data, axis=0, chunks=1)) == 3


def test_metadata_and_unwrapped_function() -> None:
    assert saxpy.__name__ == "saxpy" and saxpy.__module__ == "tests.kernels_decorated"
    assert saxpy.func is saxpy.__wrapped__
    assert column_sums.options == {"axis": 1, "chunks": 2}
    assert "column_sums" in repr(column_sums)
    out = np.zeros(3)
    saxpy.func(np.ones(3), np.ones(3), out, a=2.0)
    assert out.tolist() == [3.0, 3.0, 3.0]
    assert twice_saxpy.__doc__ is not None and "another kernel" in twice_saxpy.__doc__


def test_decorated_kernel_pickles_by_name() -> None:
    assert pickle.loads(pickle.dumps(saxpy)) is saxpy
    assert cloudpickle.loads(cloudpickle.dumps(saxpy)) is saxpy

    @shmpool.kernel(chunks=3)
    def local(x: np.ndarray) -> None:
        x += 1

    clone = cloudpickle.loads(cloudpickle.dumps(local))
    assert isinstance(clone, shmpool.Kernel) and clone.options == {"chunks": 3}
    arr = np.zeros(2)
    clone.func(arr)
    assert arr.tolist() == [1.0, 1.0]


def test_kernel_calling_a_kernel_runs_in_the_worker(pool: shmpool.SharedPool) -> None:
    x = pool.asarray(np.arange(10.0))
    y = pool.zeros(10)
    out = pool.zeros(10)
    assert sum(twice_saxpy(x, y, out, chunks=5)) == 10
    assert np.array_equal(out, 2.0 * x)


def test_map_async_of_a_kernel(pool: shmpool.SharedPool) -> None:
    x = pool.asarray(np.ones(10))
    out = pool.zeros(10)
    future = saxpy.map_async(x, x, out, a=5.0)
    assert isinstance(future.result(timeout=30), list)
    assert (out == 6.0).all()


def test_bad_decorator_use() -> None:
    with pytest.raises(TypeError, match="unknown kernel option"):
        shmpool.kernel(axes=1)
    with pytest.raises(TypeError, match="decorates a function"):
        shmpool.Kernel(3)  # type: ignore[arg-type]


def test_nested_pools_and_threads_have_their_own_active_pool() -> None:
    seen: dict[str, shmpool.SharedPool] = {}
    with shmpool.SharedPool(1, start_method="fork") as outer:
        with shmpool.SharedPool(1, start_method="fork") as inner:
            assert shmpool.active_pool() is inner

            def other_thread() -> None:
                seen["thread"] = shmpool.active_pool()

            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert shmpool.active_pool() is outer
    # A thread starts with an empty context (no with pool): it gets the newest pool still
    # open, which was inner at the time.
    assert seen["thread"] is inner


def test_default_pool_is_used_and_cleaned_up_at_exit() -> None:
    proc = run_script(
        """
        import numpy as np, shmpool

        @shmpool.kernel
        def double(x):
            x *= 2

        x = np.arange(10.0)
        double(x)
        pool = shmpool.default_pool()
        assert pool is shmpool.active_pool() and pool.workers == shmpool.usable_cpus()
        print(x.tolist(), pool.block_paths[-1])
        """
    )
    values, path = proc.stdout.rsplit(" ", 1)
    assert values == str([2.0 * i for i in range(10)])
    import os

    assert not os.path.exists(path.strip())


def test_main_module_kernel(start_method: str, tmp_path: object) -> None:
    proc = run_script(
        """
        import sys, numpy as np, shmpool

        @shmpool.kernel(chunks=2)
        def inc(x, *, by):
            x += by

        if __name__ == "__main__":
            with shmpool.SharedPool(2, start_method=sys.argv[1]):
                x = np.zeros(6)
                inc(x, by=4)
                print(x.tolist())
        """,
        start_method,
    )
    assert proc.stdout.strip() == str([4.0] * 6)


def test_partial_is_accepted() -> None:
    k = shmpool.kernel(functools.partial(np.multiply, 2))
    assert isinstance(k, shmpool.Kernel)
