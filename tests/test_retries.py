"""map(retries=, chunk_timeout=): a chunk whose worker died runs again on a replacement;
a chunk over its time limit has its worker killed. Each case checks the results, the
error's attempts, that the pool recovered and (via conftest) that nothing leaked."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmpool

from . import kernels_retry

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how", ["exit", "kill", "segv"])
def test_a_crashed_chunk_runs_again_and_the_map_succeeds(
    pool: shmpool.SharedPool, tmp_path: Path, how: str
) -> None:
    x = pool.asarray(np.arange(400))
    out = pool.zeros_like(x)
    before = set(pool.worker_pids)
    sums = pool.map(
        kernels_retry.crash_then_work,
        x,
        out,
        chunks=10,
        retries=1,
        folder=str(tmp_path),
        bad=137,
        times=1,
        how=how,
    )
    # Every chunk's value is there (those of the dead worker's earlier chunks were re-run),
    # and every chunk wrote its output: the crash cancelled nothing.
    assert sums == [int(x[i : i + 10].sum()) for i in range(0, 400, 10)]
    assert np.array_equal(out, x * 2)
    assert len(set(pool.worker_pids) - before) == 1  # one worker died and was replaced
    assert pool.map(
        kernels_retry.crash_then_work, x, out, chunks=50, folder=str(tmp_path), bad=-1, times=0, how=how
    )


def test_retries_run_out_and_every_attempt_is_listed(pool: shmpool.SharedPool) -> None:
    x = pool.asarray(np.arange(100))
    with pytest.raises(shmpool.WorkerCrashedError) as info:
        pool.map(kernels_retry.always_crash_on, x, chunks=10, retries=2, bad=42)
    err = info.value
    assert err.chunk == 4 and err.exitcode == 5
    assert err.attempts == ((4, 40, 50, "exited with code 5"),) * 3
    text = str(err)
    assert "retries=2" in text and text.count("chunk 4 (indices 40:50): the worker exited with code 5") == 3
    assert pool.map(np.sum, x, chunks=50) == [x[:50].sum(), x[50:].sum()]  # the pool still works


def test_a_crash_within_its_retries_does_not_cancel_the_map(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    # Two crashes of the same chunk with retries=2: the third run succeeds, and the other
    # chunks, running on the other worker meanwhile, all ran exactly as without a crash.
    x = pool.asarray(np.arange(600))
    out = pool.zeros_like(x)
    sums = pool.map(
        kernels_retry.crash_then_work,
        x,
        out,
        chunks=20,
        retries=2,
        folder=str(tmp_path),
        bad=590,
        times=2,
        how="exit",
    )
    assert sum(sums) == int(x.sum()) and np.array_equal(out, x * 2)
    assert len(list(tmp_path.iterdir())) == 2


def test_without_retries_a_crash_fails_the_map_as_before(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    x = pool.asarray(np.arange(100))
    with pytest.raises(shmpool.WorkerCrashedError, match="chunk 3") as info:
        pool.map(
            kernels_retry.crash_then_work,
            x,
            pool.empty_like(x),
            chunks=10,
            folder=str(tmp_path),
            bad=35,
            times=1,
            how="exit",
        )
    assert info.value.attempts == ()


def test_retries_with_a_bar_end_at_the_total(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    import io

    x = pool.asarray(np.arange(100))
    bar = io.StringIO()
    pool.map(
        kernels_retry.crash_then_work, x, pool.empty_like(x), chunks=5, retries=1, progress={"file": bar},
        folder=str(tmp_path), bad=50, times=1, how="kill",
    )  # fmt: skip
    assert "100/100" in bar.getvalue().split("\r")[-1]


def test_chunk_timeout_kills_only_the_slow_chunk_and_retries_it(
    pool: shmpool.SharedPool, tmp_path: Path
) -> None:
    x = pool.asarray(np.arange(40))
    before = set(pool.worker_pids)
    start = time.monotonic()
    lengths = pool.map(
        kernels_retry.hang_then_work,
        x,
        chunks=4,
        retries=1,
        chunk_timeout=0.5,
        folder=str(tmp_path),
        bad=9,
        times=1,
    )
    took = time.monotonic() - start
    assert lengths == [4] * 10
    assert 0.5 <= took < 10  # stopped after its limit, not after the 60 s it would sleep
    after = set(pool.worker_pids)
    assert len(after) == 2 and len(after - before) == 1  # only the slow chunk's worker went


def test_chunk_timeout_without_retries_fails_with_the_reason(
    pool: shmpool.SharedPool, tmp_path: Path
) -> None:
    x = pool.asarray(np.arange(40))
    with pytest.raises(
        shmpool.WorkerCrashedError, match=r"longer than chunk_timeout=0.3 s while running chunk 2"
    ):
        pool.map(
            kernels_retry.hang_then_work, x, chunks=4, chunk_timeout=0.3, folder=str(tmp_path), bad=9, times=1
        )
    assert len(pool.worker_pids) == 2
    # timeout= keeps its meaning for the whole map alongside chunk_timeout.
    with pytest.raises(TimeoutError):
        pool.map(
            kernels_retry.hang_then_work,
            x,
            chunks=4,
            timeout=0.5,
            chunk_timeout=30,
            folder=str(tmp_path),
            bad=9,
            times=2,
        )


def test_timed_out_chunk_listed_among_the_attempts(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    x = pool.asarray(np.arange(40))
    with pytest.raises(shmpool.WorkerCrashedError) as info:
        pool.map(
            kernels_retry.hang_then_work,
            x,
            chunks=4,
            retries=1,
            chunk_timeout=0.3,
            folder=str(tmp_path),
            bad=0,
            times=5,
        )
    assert [a[:3] for a in info.value.attempts] == [(0, 0, 4), (0, 0, 4)]
    assert all("chunk_timeout=0.3" in a[3] for a in info.value.attempts)


BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"retries": -1}, ValueError, "retries must be a non-negative int"),
    ({"retries": 1.5}, TypeError, "retries must be a non-negative int"),
    ({"retries": True}, TypeError, "retries must be a non-negative int"),
    ({"retries": "2"}, TypeError, "retries must be a non-negative int"),
    ({"chunk_timeout": 0}, ValueError, "chunk_timeout must be a positive, finite number"),
    ({"chunk_timeout": -1.0}, ValueError, "chunk_timeout must be a positive"),
    ({"chunk_timeout": math.inf}, ValueError, "chunk_timeout must be a positive"),
    ({"chunk_timeout": "1"}, TypeError, "chunk_timeout must be None or a number"),
]


@pytest.mark.parametrize(("options", "error", "text"), BAD_OPTIONS)
@pytest.mark.parametrize("kind", ["SharedPool", "ThreadPool"])
def test_bad_options_are_refused_before_any_work(
    shared_pool: shmpool.SharedPool, kind: str, options: dict[str, Any], error: type[Exception], text: str
) -> None:
    calls: list[int] = []
    with shmpool.ThreadPool(2) as threads:
        pool: shmpool.Pool = shared_pool if kind == "SharedPool" else threads
        with pytest.raises(error, match=text):
            pool.map(lambda v: calls.append(1), np.zeros(4), **options)
        with pytest.raises(error, match=text):
            pool.map_async(lambda v: calls.append(1), np.zeros(4), **options)
    assert calls == []


def test_thread_pool_refuses_chunk_timeout_and_takes_retries() -> None:
    with shmpool.ThreadPool(2) as pool:
        with pytest.raises(ValueError, match="not available on a ThreadPool: a thread cannot be stopped"):
            pool.map(np.sum, np.zeros(4), chunk_timeout=1.0)
        # retries never apply (threads do not die), and never get in the way.
        assert pool.map(np.sum, np.arange(4), chunks=2, retries=3) == [1, 5]
        with pytest.raises(ZeroDivisionError):  # a kernel's exception is never retried
            pool.map(lambda v: 1 / 0, np.arange(4), retries=3)


def test_a_kernel_exception_is_never_retried(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(ZeroDivisionError):
        shared_pool.map(lambda v: 1 / 0, np.arange(4), retries=3)


def test_decorated_kernel_takes_the_options(pool: shmpool.SharedPool, tmp_path: Path) -> None:
    decorated = shmpool.kernel(kernels_retry.crash_then_work, retries=1, chunks=5)
    x = pool.asarray(np.arange(20))
    out = pool.zeros_like(x)
    sums = decorated(x, out, folder=str(tmp_path), bad=7, times=1, how="exit")  # on the active pool
    assert sums == [10, 35, 60, 85] and np.array_equal(out, x * 2)
    assert len(list(tmp_path.iterdir())) == 1


def test_a_replacement_that_dies_before_its_lost_chunks_passes_them_on(
    start_method: str, tmp_path: Path
) -> None:
    # The first replacement dies in its initializer, before it reads the chunks it was sent
    # to run again: the next replacement gets them, and nothing is lost or counted twice.
    starts, crashes = tmp_path / "starts", tmp_path / "crashes"
    starts.mkdir()
    crashes.mkdir()
    with shmpool.SharedPool(
        2, start_method=start_method, initializer=kernels_retry.third_start_dies, initargs=(str(starts),)
    ) as pool:
        x = pool.asarray(np.arange(200))
        out = pool.zeros_like(x)
        sums = pool.map(
            kernels_retry.crash_then_work, x, out, chunks=10, retries=1,
            folder=str(crashes), bad=95, times=1, how="kill",
        )  # fmt: skip
        assert sums == [int(x[i : i + 10].sum()) for i in range(0, 200, 10)]
        assert np.array_equal(out, x * 2)
        assert len(list(starts.iterdir())) == 4  # two workers, a replacement that died, and its own


def test_crash_error_keeps_its_attempts_through_pickle() -> None:
    import pickle

    attempts = ((4, 40, 50, "exited with code 5"), (None, 0, 0, "was killed by SIGKILL (-9)"))
    err = shmpool.WorkerCrashedError("gone", exitcode=5, chunk=4, attempts=attempts)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.exitcode, back.chunk, back.attempts) == ("gone", 5, 4, attempts)
