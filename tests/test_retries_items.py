"""imap(retries=) and submit(retries=): an item whose worker died runs again, per item."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import shmpool

from . import kernels_retry

pytestmark = pytest.mark.timeout(120)


def test_imap_and_submit_retry_an_item_whose_worker_died(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    folder = str(tmp_path)
    fn = functools.partial(kernels_retry.crash_item_then_work, folder=folder, bad=7, times=1)
    assert list(pool.imap(fn, range(20), chunksize=3, retries=1)) == [v * 10 for v in range(20)]
    (tmp_path / "submit").mkdir()
    future = pool.submit(kernels_retry.crash_item_then_work, 3, str(tmp_path / "submit"), 3, 2, retries=2)
    assert future.result(timeout=60) == 30
    assert len(list(tmp_path.iterdir())) == 2  # one crash in the imap
    assert len(list((tmp_path / "submit").iterdir())) == 2  # two in the submit


def test_imap_and_submit_list_every_attempt_when_retries_run_out(
    pool: shmpool.SharedPool, tmp_path: Path
) -> None:
    folder = str(tmp_path)
    fn = functools.partial(kernels_retry.crash_item_then_work, folder=folder, bad=4, times=9)
    with pytest.raises(shmpool.WorkerCrashedError) as info:
        list(pool.imap(fn, range(8), retries=1))
    assert info.value.attempts == ((4, 4, 5, "exited with code 3"),) * 2
    with pytest.raises(shmpool.WorkerCrashedError, match="exited with code 3"):
        pool.submit(kernels_retry.crash_item_then_work, 5, folder, 5, 9).result(timeout=60)
    with pytest.raises(shmpool.WorkerCrashedError, match="retries=1") as info:
        pool.submit(kernels_retry.crash_item_then_work, 5, folder, 5, 9, retries=1).result(timeout=60)
    assert [a[0] for a in info.value.attempts] == [0, 0]  # a submit is item 0
    assert pool.submit(kernels_retry.item_with_advance, 4).result(timeout=30) == 8  # recovered


@pytest.mark.parametrize("kind", ["SharedPool", "ThreadPool"])
def test_bad_item_retries_are_refused(shared_pool: shmpool.SharedPool, kind: str) -> None:
    with shmpool.ThreadPool(2) as threads:
        pool: shmpool.Pool = shared_pool if kind == "SharedPool" else threads
        with pytest.raises(ValueError, match="retries must be a non-negative int"):
            pool.submit(kernels_retry.item_with_advance, 5, retries=-2)
        with pytest.raises(TypeError, match="retries must be a non-negative int"):
            pool.imap(kernels_retry.item_with_advance, range(3), retries=None)  # type: ignore[arg-type]
        assert list(pool.imap(kernels_retry.item_with_advance, range(3), retries=2)) == [0, 2, 4]


def test_executor_passes_a_retries_keyword_to_the_function(shared_pool: shmpool.SharedPool) -> None:
    with shared_pool.executor() as ex:
        assert ex.submit(dict, retries=3).result(timeout=30) == {"retries": 3}
