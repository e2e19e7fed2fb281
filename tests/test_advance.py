"""shmpool.advance(): progress from inside a kernel, read from tqdm's own output.

The bar of a map counts indices along the split axis; a kernel that reports its rows
makes it move before any chunk has finished, a chunk that ends counts its full length,
and advance() does nothing where nothing counts it."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

import shmpool

from . import kernels_retry

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["fork", "spawn", "forkserver", "threads"])
def any_local_pool(request: pytest.FixtureRequest) -> Iterator[shmpool.Pool]:
    """A 2-worker SharedPool per start method, and a ThreadPool."""
    if request.param == "threads":
        with shmpool.ThreadPool(2) as threads:
            yield threads
        return
    with shmpool.SharedPool(2, start_method=request.param) as pool:
        yield pool


def _counts(bar: str, total: int) -> list[int]:
    """Every ``n`` the bar showed, in order."""
    return [int(n) for n in re.findall(rf"(\d+)/{total}\b", bar)]


def test_bar_moves_before_the_first_chunk_finishes(any_local_pool: shmpool.Pool) -> None:
    # Two chunks of 20 rows, one per worker, each row 25 ms: no chunk ends before 0.5 s.
    x = np.zeros(40)
    out = io.StringIO()
    future = any_local_pool.map_async(
        kernels_retry.rows_with_advance, x, chunks=20, seconds=0.025, progress={"file": out, "mininterval": 0}
    )
    seen_before_end: list[int] = []
    while not future.done():
        seen_before_end += _counts(out.getvalue(), 40)
        time.sleep(0.02)
    assert future.result() == [20, 20]
    assert any(0 < n < 20 for n in seen_before_end), out.getvalue()  # moved inside the chunks
    shown = _counts(out.getvalue(), 40)
    assert shown == sorted(shown) and shown[-1] == 40


def test_reports_past_a_chunk_end_are_ignored(any_local_pool: shmpool.Pool) -> None:
    out = io.StringIO()
    any_local_pool.map(
        kernels_retry.rows_with_advance,
        np.zeros(30),
        chunks=10,
        seconds=0,
        extra=1000,
        progress={"file": out},
    )
    shown = _counts(out.getvalue(), 30)
    assert max(shown) == 30 and shown[-1] == 30


def test_kernels_that_never_report_give_a_correct_bar(any_local_pool: shmpool.Pool) -> None:
    out = io.StringIO()
    any_local_pool.map(np.sum, np.zeros((37, 3)), chunks=[10, 20, 7], progress={"file": out})
    assert _counts(out.getvalue(), 37)[-1] == 37 and "index" in out.getvalue()


def test_advance_is_a_no_op_without_a_bar_and_outside_a_map(any_local_pool: shmpool.Pool) -> None:
    shmpool.advance()  # plain code: nothing to count
    shmpool.advance(10)
    assert any_local_pool.map(kernels_retry.rows_with_advance, np.zeros(6), chunks=3, seconds=0) == [3, 3]
    with pytest.raises(ValueError, match="non-negative"):
        shmpool.advance(-1)
    with pytest.raises(ValueError, match="non-negative"):
        any_local_pool.map(kernels_retry.advance_negative, np.zeros(4))


def test_imap_bar_counts_items_and_advance_does_nothing_there(any_local_pool: shmpool.Pool) -> None:
    out = io.StringIO()
    results = list(any_local_pool.imap(kernels_retry.item_with_advance, range(8), progress={"file": out}))
    assert results == [v * 2 for v in range(8)]
    assert _counts(out.getvalue(), 8)[-1] == 8
    assert any_local_pool.submit(kernels_retry.item_with_advance, 4).result(timeout=30) == 8


def test_a_map_inside_a_kernel_has_its_own_count() -> None:
    # ThreadPool runs a map made from inside one of its kernels in that thread: the inner
    # map's tally must not take the outer chunk's reports, and the outer one comes back.
    with shmpool.ThreadPool(2) as pool:

        def outer(x: np.ndarray) -> int:
            inner = io.StringIO()
            pool.map(
                kernels_retry.rows_with_advance, np.zeros(4), chunks=2, seconds=0, progress={"file": inner}
            )
            shmpool.advance(len(x))
            assert _counts(inner.getvalue(), 4)[-1] == 4
            return len(x)

        out = io.StringIO()
        assert pool.map(outer, np.zeros(10), chunks=5, progress={"file": out}) == [5, 5]
        assert _counts(out.getvalue(), 10)[-1] == 10
