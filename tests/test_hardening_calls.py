"""Hardening of the calls themselves (the front end and staging), by defect class:

1. nothing may fail after dispatch that could have failed before it;
4. a forked child cannot use or tear down its parent's pool;
6. an allocation that fails leaves nothing, and no input is silently reinterpreted;
9. the smaller promises (imap over a failing iterable, is_shared on a closed pool).

Worker deaths, exceptions and concurrency are in test_hardening_workers.py; the shared
folder and signals in test_hardening_platform.py.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmpool

from . import kernels
from .conftest import run_script
from .test_teardown import tiny_tmpfs  # noqa: F401 - a fixture, used by name

pytestmark = pytest.mark.timeout(60)


def _fill(x: np.ndarray, *, value: float) -> None:
    x[:] = value


# ---- 1. nothing fails after dispatch ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"progress": {"no_such_option": 1}}, TypeError),
        ({"progress": {"total": "many"}}, TypeError),
        ({"timeout": math.inf}, ValueError),
        ({"timeout": math.nan}, ValueError),
        ({"timeout": "soon"}, TypeError),
    ],
)
def test_bad_options_fail_before_anything_is_staged(
    shared_pool: shmpool.SharedPool, options: dict[str, Any], error: type
) -> None:
    victim = np.arange(1000.0)
    blocks, stats = set(shared_pool.block_paths), shared_pool.stats
    with pytest.raises(error):
        shared_pool.map(_fill, victim, value=-1.0, **options)
    with pytest.raises(error):
        shared_pool.map_async(_fill, victim, value=-1.0, **options)
    assert shared_pool.stats == stats and set(shared_pool.block_paths) <= blocks | set(
        shared_pool.block_paths
    )
    # A map of the same size right after gets a staging block nobody else writes to.
    other = np.zeros(1000)
    shared_pool.map(_fill, other, value=2.0)
    time.sleep(0.1)
    assert (other == 2.0).all() and (victim == np.arange(1000.0)).all()


def test_failing_imaps_hold_no_resource(shared_pool: shmpool.SharedPool) -> None:
    # Each of these fails at its first next(), before any batch is sent: none may keep
    # anything that later calls wait for.
    for _ in range(40):
        stream = shared_pool.imap(kernels.square, range(3), progress={"no_such_option": 1})
        with pytest.raises(TypeError):
            next(stream)
    assert list(shared_pool.imap(kernels.square, range(3))) == [0, 1, 4]
    assert shared_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


def test_interrupt_while_waiting_keeps_the_staging_block_out_of_reuse(start_method: str) -> None:
    # Ctrl-C while a map runs: the map stops (its running chunks get a grace, then their
    # workers are replaced), and no later map gets a block a stopped worker may write to.
    with shmpool.SharedPool(2, start_method=start_method) as pool:
        main = threading.get_ident()
        timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
        timer.start()
        slow = np.zeros(64)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pool.map(kernels.sleep_chunk, slow, chunks=1, seconds=0.2)
        timer.join()
        assert time.monotonic() - start < 5.0
        for value in (1.0, 2.0, 3.0):
            fresh = np.zeros(64)
            pool.map(_fill, fresh, value=value)
            time.sleep(0.05)
            assert (fresh == value).all()


# ---- 4. forked children -------------------------------------------------------------------


def test_a_forked_child_neither_uses_nor_tears_down_the_pool(start_method: str) -> None:
    # The child calls a method (a clear error at once) and then exits normally, running
    # the interpreter's exit handlers; the parent's pool must not notice.
    proc = run_script(
        """
        import os, sys, numpy as np, shmpool
        if __name__ == "__main__":
            with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:
                x = pool.asarray(np.arange(10.0))
                pid = os.fork()
                if pid == 0:
                    try:
                        pool.map(np.sum, x)
                        sys.exit(3)
                    except shmpool.PoolClosedError as exc:
                        sys.exit(0 if "cannot be used in process" in str(exc) else 4)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
                assert all(os.path.exists(p) for p in pool.block_paths)
                assert sum(pool.map(np.sum, x)) == 45.0
            print("ok")
        """,
        start_method,
    )
    assert proc.stdout.strip() == "ok"


# ---- 6. memory and arrays ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("allocate", "error"),
    [
        (lambda p: p.empty((0, 2**63)), ValueError),
        (lambda p: p.empty((2**40, 2**40)), ValueError),
        (lambda p: p.full(4, np.nan, dtype=np.int64), ValueError),
        (lambda p: p.full((2, 2), np.ones(3)), ValueError),
        (lambda p: p.asarray(np.array([1, None], dtype=object)), TypeError),
        (lambda p: p.empty(3, dtype=[("a", "f8"), ("b", "O")]), TypeError),
    ],
)
def test_failed_allocations_leave_nothing(
    shared_pool: shmpool.SharedPool, allocate: Any, error: type
) -> None:
    before = set(shared_pool.block_paths)
    with pytest.raises(error):
        allocate(shared_pool)
    assert set(shared_pool.block_paths) == before


def test_map_async_refuses_what_cannot_travel_at_once(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        shared_pool.map_async(_fill, np.zeros(4), shmpool.whole(threading.Lock()), value=1.0)
    with pytest.raises(TypeError, match="Python objects"):
        shared_pool.map_async(_fill, np.zeros(4), shmpool.whole(np.zeros(2, dtype=[("o", "O")])), value=1.0)


@pytest.mark.parametrize(
    "second",
    [lambda x: x[::-1], lambda x: x.view(), lambda x: x[2:], lambda x: x.reshape(2, -1)[0]],
)
def test_overlapping_plain_arrays_are_refused(shared_pool: shmpool.SharedPool, second: Any) -> None:
    x = np.arange(8.0)
    other = second(x)
    if other.ndim != 1 or other.shape != x.shape:
        with pytest.raises(ValueError, match="share memory"):
            shared_pool.map(kernels.double_in_place, x, shmpool.whole(other))
    else:
        with pytest.raises(ValueError, match="share memory"):
            shared_pool.map(kernels.double_in_place, x, other)
    assert x.tolist() == list(np.arange(8.0))  # refused before anything ran


def test_interleaved_and_pool_views_are_not_overlaps(shared_pool: shmpool.SharedPool) -> None:
    x = np.arange(8.0)
    shared_pool.map(lambda a, b: (a.__imul__(2), b.__iadd__(100)), x[::2], x[1::2])
    assert x.tolist() == [0.0, 101.0, 4.0, 103.0, 8.0, 105.0, 12.0, 107.0]
    shared = shared_pool.asarray(np.arange(8.0))  # views of a pool array alias for real
    shared_pool.map(lambda a, b: None, shared, shared[::-1])
    ro = np.arange(8.0)
    ro.flags.writeable = False
    shared_pool.map(lambda a, b: None, ro, ro[::-1])  # read-only aliases cannot be undone


def test_staging_cache_gives_way_on_a_small_tmpfs(tiny_tmpfs: Path) -> None:
    with shmpool.SharedPool(2, start_method="forkserver", temp_folder=tiny_tmpfs) as pool:
        plain = np.zeros(125_000)  # 1 MB of the 4 MiB, staged and then kept for reuse
        pool.map(kernels.double_in_place, plain)
        assert len(pool.block_paths) == 2  # the control block and the cached staging block
        big = pool.empty(437_500)  # 3.5 MB: fits only once the cache gives way
        assert big.nbytes == 3_500_000 and len(pool.block_paths) == 2
        with pytest.raises(shmpool.SharedMemoryFullError):
            pool.empty(437_500)  # nothing left to give way: the folder is really full


# ---- 9. smaller promises ----------------------------------------------------------------


def _items_then_failure(count: int) -> Iterator[int]:
    yield from range(count)
    raise LookupError("the source ran dry")


@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
def test_imap_over_a_failing_iterable_yields_what_came_before(
    shared_pool: shmpool.SharedPool, chunksize: Any
) -> None:
    got = []
    with pytest.raises(LookupError, match="ran dry"):
        for value in shared_pool.imap(kernels.square, _items_then_failure(7), chunksize=chunksize):
            got.append(value)
    assert got == [i * i for i in range(7)]


def test_is_shared_on_a_closed_pool_raises(start_method: str) -> None:
    pool = shmpool.SharedPool(1, start_method=start_method)
    a = pool.zeros(3)
    pool.close()
    with pytest.raises(shmpool.PoolClosedError):
        pool.is_shared(a)
    with shmpool.ThreadPool(1) as threads:
        b = threads.zeros(3)
    with pytest.raises(shmpool.PoolClosedError):
        threads.is_shared(b)
    assert os.path.exists(os.path.dirname(pool.temp_folder))
