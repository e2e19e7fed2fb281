"""imap's trains: with a fixed chunksize over items already in memory (an iterable with a
length), cheap chunks share one message, at most TRAIN_MAX_CHUNKS of them and about
TRAIN_TARGET_S of work; slow chunks, and items pulled from a generator, travel one chunk per
message. Order, errors, retries and cancellation still hold item by item."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest

import shmpool
from shmpool._streams import AUTO_BATCH_MAX, IMAP_BATCHES_PER_WORKER, TRAIN_MAX_CHUNKS, BatchSizer

from . import kernels, kernels_retry
from .any_pools import any_pool, dask_client, dask_cluster_processes_are_not_leaks, local_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def sizes_over(
    chunksize: int | None, seconds_per_item: float, batches: int, *, trains: bool = True, workers: int = 2
) -> list[int]:
    """The batch sizes a sizer picks when every item costs ``seconds_per_item`` on one of
    ``workers`` workers, batch after batch, on a clock the test moves."""
    now = [100.0]
    sizer = BatchSizer(chunksize, workers, 0.01, trains=trains, clock=lambda: now[0])
    sizes = []
    for _ in range(batches):
        size = sizer.next_size()
        sizes.append(size)
        now[0] += size * seconds_per_item / workers
        sizer.landed(size)
    return sizes


def test_cheap_chunks_grow_into_trains_up_to_the_cap() -> None:
    sizes = sizes_over(1, 10e-6, 10)
    assert sizes[:2] == [1, 1]  # one landing is no measure yet
    assert sizes == sorted(sizes) and sizes[-1] == TRAIN_MAX_CHUNKS  # at most doubling, then the cap
    assert all(b <= 2 * a + 1 for a, b in itertools.pairwise(sizes))
    by_three = sizes_over(3, 10e-6, 10)
    assert all(size % 3 == 0 for size in by_three)  # whole chunks only
    assert by_three[-1] == 3 * TRAIN_MAX_CHUNKS


def test_a_train_holds_about_a_millisecond_of_work() -> None:
    # 100 µs an item: about 10 items a millisecond.
    sizes = sizes_over(1, 100e-6, 12)
    assert 5 <= sizes[-1] <= 12


def test_slow_chunks_and_generators_travel_one_chunk_per_message() -> None:
    assert set(sizes_over(1, 2e-3, 12)) == {1}
    assert set(sizes_over(4, 1e-3, 12)) == {4}
    assert set(sizes_over(1, 1e-6, 12, trains=False)) == {1}


def test_auto_batches_are_not_capped_by_the_trains() -> None:
    sizes = sizes_over(None, 1e-6, 20)
    assert TRAIN_MAX_CHUNKS < sizes[-1] <= AUTO_BATCH_MAX


def local(pool: shmpool.Pool) -> bool:
    """A pool on this machine: on a Dask cluster a message costs milliseconds, so chunks stay
    one per message there, and the tests run fewer of them."""
    return isinstance(pool, (shmpool.SharedPool, shmpool.ThreadPool))


def test_many_cheap_items_in_order_and_as_they_land(any_pool: shmpool.Pool) -> None:
    count = 20_000 if local(any_pool) else 1_000
    assert list(any_pool.imap(kernels.square, range(count))) == [i * i for i in range(count)]
    unordered = list(any_pool.imap(kernels.square, list(range(count)), ordered=False, chunksize=3))
    assert sorted(unordered) == [i * i for i in range(count)]
    assert list(any_pool.imap(kernels.square, np.arange(count // 4))) == [i * i for i in range(count // 4)]


def test_an_error_deep_in_a_train_raises_at_its_position(any_pool: shmpool.Pool) -> None:
    bad = 15_000 if local(any_pool) else 700
    seen = []
    with pytest.raises(ValueError, match=f"item {bad} is bad") as info:
        for value in any_pool.imap(functools.partial(kernels.fail_at, bad=bad), range(bad + 5000)):
            seen.append(value)
    assert seen == list(range(bad))
    assert f"item {bad}" in str(info.value.__cause__)
    assert list(any_pool.imap(kernels.square, range(3))) == [0, 1, 4]


@pytest.mark.parametrize("kind", ["SharedPool", "ThreadPool"])
def test_closing_early_runs_each_item_once_and_a_bounded_few_more(
    kind: str, shared_pool: shmpool.SharedPool
) -> None:
    with shmpool.ThreadPool(2) as threads:
        pool: shmpool.Pool = shared_pool if kind == "SharedPool" else threads
        count, taken = 100_000, 5_000
        marks = pool.zeros(count, dtype=np.int64)
        results = pool.imap(functools.partial(kernels.mark_item, marks=marks), range(count))
        got = [next(results) for _ in range(taken)]
        results.close()  # type: ignore[attr-defined]
        assert got == list(range(taken))
        assert marks.max() == 1 and marks[:taken].min() == 1  # each ran once, all taken ran
        in_flight = IMAP_BATCHES_PER_WORKER * pool.workers * TRAIN_MAX_CHUNKS
        assert taken <= int(marks.sum()) <= taken + in_flight
        pool.free(marks)


def test_a_dead_worker_train_runs_again_with_retries(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    fn = functools.partial(kernels_retry.crash_item_then_work, folder=str(tmp_path), bad=3000, times=1)
    assert list(pool.imap(fn, range(4000), retries=1)) == [v * 10 for v in range(4000)]
    assert len(list(tmp_path.iterdir())) == 1  # it crashed once, on item 3000
    with pytest.raises(shmpool.WorkerCrashedError) as info:
        fn = functools.partial(kernels_retry.crash_item_then_work, folder=str(tmp_path), bad=3500, times=9)
        list(pool.imap(fn, range(4000), retries=1))
    assert info.value.attempts == ((3500, 3500, 3501, "exited with code 3"),) * 2
