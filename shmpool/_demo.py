"""``python -m shmpool demo``: a GIL-bound kernel over a few hundred MB, serial vs SharedPool."""

from __future__ import annotations

import time

import numpy as np

from .pool import SharedPool

__all__ = ["robust_zscore_rows", "run_demo"]

ROW = 256  # float64 values per row


def robust_zscore_rows(x: np.ndarray, out: np.ndarray) -> None:  # type: ignore[type-arg]
    """Per-row robust z-score (median and MAD), one row at a time.

    The Python loop and the small per-row NumPy calls hold the GIL: threads would not
    speed this up, processes do.
    """
    for i in range(x.shape[0]):
        row = x[i]
        med = np.median(row)
        mad = np.median(np.abs(row - med))
        out[i] = (row - med) / (1.4826 * mad + 1e-12)


def run_demo(megabytes: int, workers: int | None, start_method: str | None) -> int:
    """Run the demo on an array of ``megabytes`` MB; print times; 0 if results match."""
    rows = max(1, megabytes * 2**20 // (ROW * 8))
    data = np.random.default_rng(0).standard_normal((rows, ROW))
    print(f"array: {rows} x {ROW} float64 = {data.nbytes / 2**20:.0f} MiB; kernel: per-row robust z-score")

    expected = np.empty_like(data)
    start = time.perf_counter()
    robust_zscore_rows(data, expected)
    serial = time.perf_counter() - start
    print(f"serial:     {serial:8.3f} s")

    with SharedPool(workers, start_method=start_method) as pool:
        start = time.perf_counter()
        x = pool.asarray(data)  # one copy into shared memory
        out = pool.empty_like(x)
        copied = time.perf_counter()
        pool.map(robust_zscore_rows, x, out)
        done = time.perf_counter()
        same = bool(np.array_equal(out, expected))
        print(f"SharedPool: {done - copied:8.3f} s  (+{copied - start:.3f} s to copy the input in)")
        print(
            f"workers: {pool.workers} ({pool.start_method}); speed-up: {serial / (done - copied):.2f}x "
            f"(end to end {serial / (done - start):.2f}x); results equal: {same}"
        )
    return 0 if same else 1
