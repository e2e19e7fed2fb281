"""The active pool rule: the innermost ``with`` pool of this context, else the most recently
created pool still open, else the default pool; ``shmpool.active_pool()`` reports it."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np

import shmpool

from .conftest import run_script
from .kernels_decorated import saxpy


def test_a_pool_not_entered_is_active_until_closed() -> None:
    first = shmpool.ThreadPool(1)
    second = shmpool.ThreadPool(1)
    try:
        assert shmpool.active_pool() is second  # the newest open pool
        second.close()
        assert shmpool.active_pool() is first  # the next newest still open
    finally:
        first.close()
        second.close()


def test_a_with_pool_wins_over_newer_pools() -> None:
    with shmpool.ThreadPool(1) as entered:
        newer = shmpool.ThreadPool(1)
        try:
            assert shmpool.active_pool() is entered
            # In another thread the `with` block does not apply: the newest open pool does.
            seen: list[shmpool.Pool] = []
            thread = threading.Thread(target=lambda: seen.append(shmpool.active_pool()))
            thread.start()
            thread.join()
            assert seen == [newer]
        finally:
            newer.close()
        assert shmpool.active_pool() is entered


def test_a_kernel_runs_on_the_pool_made_in_an_earlier_cell() -> None:
    # The notebook case: `pool = SharedPool()` in one cell, a decorated kernel in the next.
    pool = shmpool.ThreadPool(2)
    try:
        x, y, out = np.arange(8.0), np.ones(8), np.zeros(8)
        saxpy(x, y, out, a=2.0)
        assert np.array_equal(out, 2 * np.arange(8.0) + 1)
        assert pool.stats.maps == 1
    finally:
        pool.close()


def test_recording_a_pool_does_not_keep_it_alive() -> None:
    pool = shmpool.ThreadPool(1)
    ref = weakref.ref(pool)
    pool.close()
    del pool
    gc.collect()
    assert ref() is None


def test_with_no_pool_open_the_default_pool_is_used() -> None:
    # In a fresh interpreter, so that no pool of this test session is open.
    proc = run_script(
        """
        import numpy as np, shmpool
        from tests.kernels_decorated import saxpy

        if __name__ == "__main__":
            with shmpool.ThreadPool(1):
                pass
            closed = shmpool.ThreadPool(1)
            closed.close()
            out = np.zeros(4)
            saxpy(np.ones(4), np.ones(4), out, a=1.0)
            pool = shmpool.active_pool()
            print(pool is shmpool.default_pool(), pool is not closed, out.tolist())
        """
    )
    assert proc.stdout.split() == ["True", "True", "[2.0,", "2.0,", "2.0,", "2.0]"]
