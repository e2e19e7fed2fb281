"""submit, map_async and imap: futures, cancellation, streaming, and arrays by reference."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import CancelledError, Future, wait

import numpy as np
import psutil
import pytest

import shmpool
from shmpool import _pickling
from shmpool.errors import RemoteTraceback

from . import kernels


def test_submit(shared_pool: shmpool.SharedPool) -> None:
    future = shared_pool.submit(kernels.add, 2, 3, scale=10)
    assert isinstance(future, Future)
    assert future.result(timeout=30) == 50
    assert shared_pool.submit(lambda: 42).result(timeout=30) == 42
    with pytest.raises(ValueError, match="five") as info:
        shared_pool.submit(kernels.fail_at_five, 5).result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    with pytest.raises(TypeError, match="callable"):
        shared_pool.submit(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be pickled"):
        shared_pool.submit(kernels.add, threading.Lock(), 1)


def test_submit_cancel_drops_result(shared_pool: shmpool.SharedPool) -> None:
    future = shared_pool.submit(kernels.sleep_chunk, None, seconds=0.3)
    assert future.cancel() and future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=5)
    assert shared_pool.submit(kernels.square, 4).result(timeout=30) == 16


def test_shared_arrays_travel_by_reference(shared_pool: shmpool.SharedPool) -> None:
    big = shared_pool.zeros(100 * 2**20 // 8)  # 100 MiB
    assert len(_pickling.dumps(big)) < 1000
    assert len(_pickling.dumps({"nested": [big[10:20]]})) < 1000
    assert len(_pickling.dumps(lambda: big.sum())) < 5000  # noqa: PLW0108 - a closure capturing it

    def write(arr: np.ndarray, where: int) -> int:
        arr[where] = 7.0
        return arr.size

    assert shared_pool.submit(write, big, 5).result(timeout=30) == big.size
    assert big[5] == 7.0
    assert shared_pool.submit(lambda: big.__setitem__(6, 8.0)).result(timeout=30) is None
    assert big[6] == 8.0
    got = list(shared_pool.imap(lambda i: write(big, i), [1, 2, 3]))
    assert got == [big.size] * 3 and big[1:4].tolist() == [7.0, 7.0, 7.0]
    view = shared_pool.submit(lambda: big[100:110]).result(timeout=30)
    assert shared_pool.is_shared(view)  # a view of the same block came back
    view[:] = 1
    assert big[100:110].sum() == 10


def test_map_async(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(1000.0))
    futures = [shared_pool.map_async(kernels.first_index, x, chunks=c) for c in (10, 100, 250)]
    assert [f.result(timeout=30) for f in futures] == [
        list(range(0, 1000, 10)),
        list(range(0, 1000, 100)),
        [0, 250, 500, 750],
    ]
    with pytest.raises(ValueError, match="same length"):
        shared_pool.map_async(kernels.saxpy, x, x[:5], x, a=1.0)
    failing = shared_pool.map_async(kernels.fail_on, x, chunks=10, bad=3)
    with pytest.raises(KeyError):
        failing.result(timeout=30)


def test_map_async_cancel_stops_unstarted_chunks(shared_pool: shmpool.SharedPool) -> None:
    counter = shared_pool.zeros(200, dtype=np.int64)

    def tick(x: np.ndarray, seconds: float) -> None:
        counter[x] = 1
        time.sleep(seconds)

    idx = shared_pool.asarray(np.arange(200))
    maps_before = shared_pool.stats.maps
    future = shared_pool.map_async(tick, idx, chunks=1, seconds=0.02)
    time.sleep(0.2)
    start = time.monotonic()
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=5)
    # Wait for the run to wind down (it is counted when it ends), then check it stopped early.
    deadline = time.monotonic() + 5
    while shared_pool.stats.maps == maps_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() - start < 2.0
    assert 0 < counter.sum() < 100
    assert shared_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


def test_map_async_cancel_before_start(shared_pool: shmpool.SharedPool) -> None:
    marker = shared_pool.zeros(1)

    def mark(x: np.ndarray) -> None:
        marker[0] += 1

    # Keep every worker busy so that the next map cannot start any chunk yet.
    blocker = shared_pool.map_async(kernels.sleep_chunk, np.zeros(shared_pool.workers), chunks=1, seconds=0.5)
    time.sleep(0.1)
    maps_before = shared_pool.stats.maps
    futures = [shared_pool.map_async(mark, np.zeros(4), chunks=1) for _ in range(3)]
    assert all(f.cancel() for f in futures)
    assert all(f.cancelled() for f in futures)
    blocker.result(timeout=30)
    wait(futures, timeout=10)
    deadline = time.monotonic() + 5
    while shared_pool.stats.maps < maps_before + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker[0] == 0  # not one chunk of a cancelled map ran


def test_imap_ordered_and_unordered(shared_pool: shmpool.SharedPool) -> None:
    assert list(shared_pool.imap(kernels.square, range(50))) == [i * i for i in range(50)]
    assert list(shared_pool.imap(kernels.square, range(50), chunksize=7)) == [i * i for i in range(50)]
    unordered = list(shared_pool.imap(kernels.slow_square, range(40), ordered=False, chunksize=3))
    assert sorted(unordered) == [i * i for i in range(40)]
    assert list(shared_pool.imap(kernels.square, [])) == []
    assert list(shared_pool.imap(lambda s: s.upper(), iter(["a", "b"]))) == ["A", "B"]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True, "2"])
def test_imap_bad_chunksize(shared_pool: shmpool.SharedPool, chunksize: object) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        shared_pool.imap(kernels.square, range(3), chunksize=chunksize)  # type: ignore[arg-type]


def test_imap_is_lazy_with_an_endless_generator(shared_pool: shmpool.SharedPool) -> None:
    pulled = itertools.count()

    def source() -> itertools.count[int]:
        for i in itertools.count():
            next(pulled)
            yield i  # type: ignore[misc]

    results = shared_pool.imap(kernels.square, source(), chunksize=10)
    assert next(pulled) == 0  # nothing consumed before iteration starts
    first = list(itertools.islice(results, 25))
    assert first == [i * i for i in range(25)]
    results.close()  # type: ignore[attr-defined]
    # Bounded look-ahead: batches in flight per worker times chunksize, not the whole source.
    assert next(pulled) < 25 + 4 * shared_pool.workers * 10 + 10


def test_imap_error_at_its_position_and_rest_cancelled(shared_pool: shmpool.SharedPool) -> None:
    seen = []
    with pytest.raises(ValueError, match="five") as info:
        for value in shared_pool.imap(kernels.fail_at_five, range(1000)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert "item 5" in str(info.value.__cause__)
    assert list(shared_pool.imap(kernels.square, range(3))) == [0, 1, 4]


def test_imap_progress(shared_pool: shmpool.SharedPool, capsys: pytest.CaptureFixture[str]) -> None:
    list(shared_pool.imap(kernels.square, range(30), progress=True))
    err = capsys.readouterr().err
    assert "30/30" in err and "item" in err
    list(shared_pool.imap(kernels.square, (i for i in range(12)), progress={"desc": "streaming"}))
    err = capsys.readouterr().err
    assert "streaming" in err and "12" in err


def test_imap_million_items_memory_stays_flat(shared_pool: shmpool.SharedPool) -> None:
    process = psutil.Process()
    stream = shared_pool.imap(kernels.square, range(1_000_000), chunksize=2000)
    total = 0
    rss_after_warmup = 0
    for i, value in enumerate(stream):
        total += value
        if i == 100_000:
            rss_after_warmup = process.memory_info().rss
    assert total == sum(i * i for i in range(1_000_000))
    growth = process.memory_info().rss - rss_after_warmup
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_several_threads_at_once(shared_pool: shmpool.SharedPool) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            assert list(shared_pool.imap(kernels.add, range(100), chunksize=5)) is not None
        except TypeError:
            pass  # add needs two arguments: each item fails; the error must reach us
        except BaseException as exc:
            errors.append(exc)
        try:
            got = list(shared_pool.imap(kernels.square, range(seed, seed + 200), chunksize=9))
            assert got == [i * i for i in range(seed, seed + 200)]
            assert shared_pool.submit(kernels.add, seed, 1).result(timeout=30) == seed + 1
            x = shared_pool.asarray(np.full(100, float(seed)))
            assert sum(shared_pool.map(np.sum, x)) == 100 * seed
            shared_pool.free(x)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_imap_auto_chunksize(shared_pool: shmpool.SharedPool) -> None:
    items = range(200_000)
    start = time.perf_counter()
    got = list(shared_pool.imap(kernels.square, items, chunksize="auto"))
    elapsed = time.perf_counter() - start
    assert got == [i * i for i in items]
    # One item per message would take over 10 s here; auto batching grows the batches.
    assert elapsed < 10.0
    slow = list(shared_pool.imap(kernels.slow_square, range(20), chunksize="auto", ordered=False))
    assert sorted(slow) == [i * i for i in range(20)]


def test_imap_cut_short_raises_rather_than_yielding_fewer(pool: shmpool.SharedPool) -> None:
    # Batches cut short (here by close()) must raise, never yield fewer results silently.
    stream = pool.imap(kernels.slow_square, range(400), chunksize=50)
    assert next(stream) == 0
    pool.close()
    with pytest.raises(shmpool.PoolClosedError):
        list(stream)
