"""Blocks come back when their last view goes, are cached and reused, and give way."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import shmpool
from shmpool import _arrays, _copying

from . import kernels, kernels_reuse
from .conftest import shm_entries
from .test_teardown import tiny_tmpfs  # noqa: F401


def _path(a: np.ndarray) -> str:  # type: ignore[type-arg]
    found = _arrays.locate(a)
    assert found is not None
    return found[0].path


def test_a_loop_that_allocates_and_drops_stays_flat(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.random.default_rng(0).random(100_000))
    counts = []
    for _ in range(200):
        y = shared_pool.empty_like(x)
        shared_pool.map(kernels_reuse.double_into, x, y)
        assert np.array_equal(y, x * 2)
        del y
        counts.append(len(shm_entries()))
    assert counts[-1] == counts[5] and max(counts[5:]) == counts[5]


def test_a_dropped_arrays_block_is_reused_and_zeros_are_zero(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.full(5000, 7.0)
    path = _path(a)
    del a
    b = shared_pool.zeros(5000)
    assert _path(b) == path and not b.any()
    b[:] = 3.0
    del b
    c = shared_pool.zeros_like(np.empty((50, 100)))
    assert _path(c) == path and not c.any()
    del c
    d = shared_pool.empty(4500)  # within the fit: a tenth smaller takes the same block
    assert _path(d) == path and shared_pool.is_shared(d)


def test_a_view_keeps_its_block_and_data(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.full(1000, 5.0)
    path = _path(a)
    view = a[10:20]
    del a
    gc.collect()
    b = shared_pool.full(1000, 1.0)  # must not take the block the view still holds
    assert _path(b) != path and view.sum() == 50.0 and shared_pool.is_shared(view)


def test_a_view_in_another_thread_keeps_its_data(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.full(1000, 4.0)
    path = _path(a)
    holding, release, sums = threading.Event(), threading.Event(), []

    def hold(view: np.ndarray) -> None:  # type: ignore[type-arg]
        holding.set()
        release.wait(10)
        sums.append(float(view.sum()))

    thread = threading.Thread(target=hold, args=(a[::2],))
    thread.start()
    holding.wait(10)
    del a
    gc.collect()
    others = [shared_pool.full(1000, 9.0) for _ in range(3)]
    assert path not in {_path(o) for o in others}
    release.set()
    thread.join()
    assert sums == [2000.0]


def test_a_result_view_from_a_map_keeps_its_data(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.full(1000, 2.0)
    path = _path(x)
    results = shared_pool.map(kernels_reuse.first_two, x, chunks=500)
    del x
    gc.collect()
    others = [shared_pool.full(1000, 9.0) for _ in range(3)]
    assert path not in {_path(o) for o in others}
    assert [r.tolist() for r in results] == [[2.0, 2.0], [2.0, 2.0]]
    # A staged copy is kept the same way by a result that views it.
    staged = shared_pool.map(kernels_reuse.first_two, np.full(1000, 6.0), chunks=500)
    others += [shared_pool.full(1000, 9.0) for _ in range(3)]
    assert [r.tolist() for r in staged] == [[6.0, 6.0], [6.0, 6.0]]
    del results, staged
    gc.collect()
    assert shared_pool.empty(1000) is not None  # and it is returned when they go


def test_trim_empties_the_cache(shared_pool: shmpool.SharedPool) -> None:
    shared_pool.trim()
    paths = set(shared_pool.block_paths)
    a = shared_pool.zeros(200_000)
    path = _path(a)
    del a
    assert shared_pool.cached_bytes == 1_600_000 and path in shared_pool.block_paths
    assert shared_pool.trim() == 1_600_000
    assert shared_pool.cached_bytes == 0 and set(shared_pool.block_paths) == paths
    assert not os.path.exists(path)


def test_free_gives_the_space_back_at_once_and_views_keep_their_data(
    shared_pool: shmpool.SharedPool,
) -> None:
    shared_pool.trim()
    a = shared_pool.full(2_000_000, 1.5)  # 16 MB, a fresh block
    shared_pool.map(kernels.double_in_place, a)  # mapped and faulted in the workers too
    view = a[:10]
    path = _path(a)
    # The folder is shared with other programs: watch this block's own pages, through a
    # descriptor that outlives the unlink.
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_blocks * 512 >= 16_000_000
        shared_pool.free(a)
        assert os.fstat(fd).st_blocks == 0  # no waiting for the workers to unmap it
    finally:
        os.close(fd)
    assert not os.path.exists(path) and not shared_pool.is_shared(a)
    assert view.tolist() == [3.0] * 10 and a.sum() == 6_000_000.0
    a[:] = 1.0  # private memory now: still writable, no crash


def test_the_cache_is_bounded(start_method: str) -> None:
    with shmpool.SharedPool(1, start_method=start_method, cache_bytes=1_000_000) as pool:
        arrays = [pool.zeros(50_000) for _ in range(4)]  # 400 kB each
        del arrays
        assert pool.cached_bytes == 800_000 and len(pool.block_paths) == 3
        x = pool.zeros(10)
        pool.map(kernels.double_in_place, x)
        del x
        assert pool.trim() == 800_000 + 80
    with shmpool.SharedPool(1, start_method="fork", cache_bytes=0) as pool:
        a = pool.zeros(1000)
        path = _path(a)
        del a
        assert pool.cached_bytes == 0 and not os.path.exists(path)
    with pytest.raises(ValueError, match="cache_bytes"):
        shmpool.SharedPool(1, cache_bytes=-1)


def test_the_cache_gives_way_on_a_small_tmpfs(tiny_tmpfs: Path) -> None:
    with shmpool.SharedPool(
        2, start_method="forkserver", temp_folder=tiny_tmpfs, cache_bytes=4 * 2**20
    ) as pool:
        blocks = [pool.zeros(100_000) for _ in range(3)]  # 2.4 MB of the 4 MiB
        pool.map(kernels.double_in_place, blocks[0])  # mapped in the workers too
        del blocks
        assert pool.cached_bytes == 2_400_000
        big = pool.empty(437_500)  # 3.5 MB: fits only once the cache gives way
        assert big.nbytes == 3_500_000 and pool.cached_bytes == 0
        assert sorted(os.listdir(tiny_tmpfs)) == sorted(os.path.basename(p) for p in pool.block_paths)
        with pytest.raises(shmpool.SharedMemoryFullError):
            pool.empty(437_500)  # nothing left to give way: the folder is really full
        del big
        assert pool.zeros(437_500).nbytes == 3_500_000  # the returned block, reused
    assert os.listdir(tiny_tmpfs) == []


def test_dropping_and_allocating_in_threads(shared_pool: shmpool.SharedPool) -> None:
    errors: list[BaseException] = []

    def work(value: float) -> None:
        try:
            for _ in range(30):
                a = shared_pool.full(3000, value)
                shared_pool.map(kernels.double_in_place, a, chunks=1000)
                assert (a == 2 * value).all()
                del a
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(float(v),)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_large_staging_copies_split_over_threads(
    shared_pool: shmpool.SharedPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces: list[int] = []
    real = np.copyto

    def counting(dst: np.ndarray, src: np.ndarray) -> None:  # type: ignore[type-arg]
        pieces.append(dst.shape[0])
        real(dst, src)

    monkeypatch.setattr(_copying, "_copyto", counting)
    monkeypatch.setattr(_copying, "_threads", lambda: 2)
    x = np.arange(2_000_000, dtype=float).reshape(1000, 2000)  # 16 MB
    shared_pool.map(kernels.double_in_place, x)
    assert x[999, 1999] == 2 * 1_999_999 and x[1, 0] == 4000.0
    assert sorted(pieces) == [500, 500, 500, 500]  # two pieces in, two pieces back
    pieces.clear()
    shared_pool.map(kernels.double_in_place, np.zeros(1000))  # small: one copy each way
    assert pieces == [1000, 1000]


def test_free_of_a_reused_block_returns_it_to_the_cache_and_views_keep_their_data(
    shared_pool: shmpool.SharedPool,
) -> None:
    a = shared_pool.empty(3000)
    path = _path(a)
    del a
    b = shared_pool.full(3000, 8.0)  # the cached block again
    assert _path(b) == path
    view = b[:5]
    shared_pool.free(b)
    c = shared_pool.full(3000, 1.0)  # takes it once more: the view was moved off it
    assert _path(c) == path and view.tolist() == [8.0] * 5 and c.sum() == 3000.0
