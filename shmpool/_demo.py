"""``python -m shmpool demo``: a GIL-bound kernel over a few hundred MB, serial vs SharedPool.

Timings on a shared machine are noisy, so the demo warms up, alternates serial and pool
runs, reports medians, and says so when the numbers cannot be right.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .pool import SharedPool

__all__ = ["noise_notes", "robust_zscore_rows", "run_demo"]

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


def noise_notes(serial: list[float], pooled: list[float], workers: int) -> list[str]:
    """Why a measurement cannot be trusted, if it cannot: a speed-up above the worker
    count (impossible for this kernel: something else slowed the serial runs), or runs of
    one kind that differ by more than a quarter (the machine was busy)."""
    notes = []
    speedup = statistics.median(serial) / statistics.median(pooled)
    if speedup > workers * 1.05:
        notes.append(
            f"a speed-up of {speedup:.2f}x is more than {workers} workers can give: "
            "the machine was busy during the serial runs; rerun it on a quieter machine"
        )
    for name, runs in (("serial", serial), ("SharedPool", pooled)):
        if max(runs) > 1.25 * min(runs):
            notes.append(
                f"the {name} runs differ by {max(runs) / min(runs) - 1:.0%} (slowest vs fastest): "
                "other work competed for the CPUs"
            )
    return notes


def run_demo(megabytes: int, workers: int | None, start_method: str | None, repeats: int = 3) -> int:
    """Run the demo on an array of ``megabytes`` MB; print times; 0 if results match.

    The pool's start-up, the copy in and a first map are timed once, end to end; then,
    after a serial warm-up, serial and pool runs alternate ``repeats`` times (so that a
    busy spell hits both) and their medians are compared.
    """
    rows = max(1, megabytes * 2**20 // (ROW * 8))
    data = np.random.default_rng(0).standard_normal((rows, ROW))
    print(f"array: {rows} x {ROW} float64 = {data.nbytes / 2**20:.0f} MiB; kernel: per-row robust z-score")
    expected = np.empty_like(data)
    robust_zscore_rows(data[: min(rows, 256)], expected[: min(rows, 256)])  # warm-up

    begin = time.perf_counter()
    with SharedPool(workers, start_method=start_method) as pool:
        started = time.perf_counter()
        x = pool.asarray(data)  # one copy into shared memory
        out = pool.empty_like(x)
        copied = time.perf_counter()
        pool.map(robust_zscore_rows, x, out)  # also the pool's warm-up
        end_to_end = time.perf_counter() - begin
        serial: list[float] = []
        pooled: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            robust_zscore_rows(data, expected)
            serial.append(time.perf_counter() - start)
            start = time.perf_counter()
            pool.map(robust_zscore_rows, x, out)
            pooled.append(time.perf_counter() - start)
        same = bool(np.array_equal(out, expected))
        n_workers, method = pool.workers, pool.start_method

    def runs(times: list[float]) -> str:
        return ", ".join(f"{t:.3f}" for t in times)

    t_serial, t_pool = statistics.median(serial), statistics.median(pooled)
    print(f"serial:     {t_serial:8.3f} s  (median of {repeats}: {runs(serial)})")
    print(f"SharedPool: {t_pool:8.3f} s  (median of {repeats}: {runs(pooled)})")
    print(
        f"end to end: {end_to_end:8.3f} s  (pool start-up {started - begin:.3f} s, "
        f"copy in {copied - started:.3f} s, first map {begin + end_to_end - copied:.3f} s)"
    )
    print(
        f"workers: {n_workers} ({method}); speed-up: {t_serial / t_pool:.2f}x "
        f"(end to end, with start-up: {t_serial / end_to_end:.2f}x); results equal: {same}"
    )
    for note in noise_notes(serial, pooled, n_workers):
        print(f"note: noisy measurement: {note}")
    return 0 if same else 1
