#!/usr/bin/env python3
"""Fresh outputs (issue 14): W8, a fresh output from the pool each call, and W9, a loop
that allocates and drops an output.

    python benchmarks/fresh.py --quick      # W8 at 128 MiB, 5 rounds; W9 1,000 x 64 MiB
    python benchmarks/fresh.py --smoke      # tiny, one round (tests/test_benchmarks_smoke.py)

W8: ``out[:] = sqrt(x) * 2 + 1`` in 8 chunks, **e2e** from a plain array (the input made
shared or staged by the system, a new output), **shared** with the input already where the
system wants it and only the output new. Systems: shmpool (``pool.empty_like`` each call),
threadpool (``shmpool.ThreadPool``, the same calls), cf_tpe (``np.empty`` + a
ThreadPoolExecutor over slices), shm_hand (SharedMemory segments + a fork Pool) and
joblib_memmap (a new ``np.memmap`` output; skipped when joblib is missing). Rows run in
rounds with a rotating order, one warm-up round; every result is checked against serial
NumPy (outside the timing) and each system's arrays are dropped after it (pool arrays
by the last reference, as in a user's loop: not ``pool.free``, which would unmap them).

All systems live in this one process (unlike ``run.py``'s hosts): idle pools' threads and
processes sleep while another system runs.

W9: 1,000 iterations of ``y = pool.empty_like(x); pool.map(k, x, y); del y`` on 64 MiB
(``drop``), the same with ``pool.free(y)`` (``free``), and one output reused by hand
(``reuse``): /dev/shm use sampled every 100 iterations, and the steady iteration time
(median of the last half).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)

import multiprocessing  # noqa: E402

import numpy as np  # noqa: E402

import shmpool  # noqa: E402
from benchmarks import kernels  # noqa: E402
from benchmarks.adapters import _Segments, shm_task  # noqa: E402

KERNEL = kernels.w2_kernel
CHUNKS = 8
DROP_CAP = 2 << 30  # W9 drop stops when /dev/shm grew this much: not flat, and RAM is shared
# A run function: (input, shared input or None) -> (result, cleanup after the check)
Run = Callable[[], tuple[np.ndarray, Callable[[], None]]]


def _nothing() -> None:
    pass


def _systems(workers: int, x: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[dict[str, Any], list[Any]]:
    """Each system's e2e and shared call, and what to close at the end."""
    chunk_len = bounds[0][1]
    pool = shmpool.SharedPool(workers)
    tpool = shmpool.ThreadPool(workers)
    tpe = ThreadPoolExecutor(workers)
    fork_pool = multiprocessing.get_context("fork").Pool(workers)
    closers: list[Any] = [pool.close, tpool.close, tpe.shutdown, fork_pool.terminate]

    def pool_calls(p: Any) -> dict[str, Run]:
        xs = p.asarray(x)

        # The arrays are dropped, as a user's loop drops them (the next call's empty_like
        # reuses their blocks); pool.free() would give the memory back at once instead,
        # and every call would pay for fresh pages (W9's "free" row shows that cost).
        def e2e() -> tuple[np.ndarray, Callable[[], None]]:
            a = p.asarray(x)
            y = p.empty_like(a)
            p.map(KERNEL, a, y, chunks=chunk_len)
            return y, _nothing

        def shared() -> tuple[np.ndarray, Callable[[], None]]:
            y = p.empty_like(xs)
            p.map(KERNEL, xs, y, chunks=chunk_len)
            return y, _nothing

        return {"e2e": e2e, "shared": shared}

    def tpe_call() -> tuple[np.ndarray, Callable[[], None]]:
        y = np.empty_like(x)
        list(tpe.map(KERNEL, (x[lo:hi] for lo, hi in bounds), (y[lo:hi] for lo, hi in bounds)))
        return y, lambda: None

    hand_input = _Segments(x)
    closers.append(hand_input.destroy)

    def hand(e2e: bool) -> Run:
        def run() -> tuple[np.ndarray, Callable[[], None]]:
            segs = _Segments(x) if e2e else _Segments.__new__(_Segments)
            if not e2e:  # only a new output segment next to the shared input
                from multiprocessing import shared_memory

                segs.shape, segs.dtype, segs.x = x.shape, x.dtype, hand_input.x
                segs.out = shared_memory.SharedMemory(create=True, size=x.nbytes)
            fork_pool.map(shm_task, segs.specs("W2", bounds), chunksize=1)
            out = segs.output()

            def done() -> None:
                segs.out.close()
                segs.out.unlink()
                if e2e:
                    segs.x.close()
                    segs.x.unlink()

            return out, done

        return run

    systems: dict[str, Any] = {
        "shmpool": pool_calls(pool),
        "threadpool": pool_calls(tpool),
        "cf_tpe": {"e2e": tpe_call, "shared": tpe_call},
        "shm_hand": {"e2e": hand(True), "shared": hand(False)},
    }
    try:
        import joblib

        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        xm_path = os.path.join(folder or ".", f"fresh_x_{os.getpid()}.mmap")
        xm = np.memmap(xm_path, dtype=x.dtype, mode="w+", shape=x.shape)
        xm[:] = x
        par = joblib.Parallel(n_jobs=workers)
        closers.append(lambda: os.unlink(xm_path))

        def jl(inp: np.ndarray) -> Run:
            def run() -> tuple[np.ndarray, Callable[[], None]]:
                path = os.path.join(folder or ".", f"fresh_y_{os.getpid()}.mmap")
                y = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
                par(joblib.delayed(KERNEL)(inp[lo:hi], y[lo:hi]) for lo, hi in bounds)
                return y, lambda: os.unlink(path)

            return run

        systems["joblib_memmap"] = {"e2e": jl(x), "shared": jl(xm)}
    except ImportError:
        print("joblib not installed: joblib_memmap skipped", file=sys.stderr)
    return systems, closers


def w8(size: int, workers: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """Medians per (system, variant); raises on a wrong result."""
    x = kernels.make_input("W2", size)
    bounds = kernels.chunk_bounds(size, -(-size // CHUNKS))
    systems, closers = _systems(workers, x, bounds)
    rows = [(s, v) for s in systems for v in ("e2e", "shared")]
    times: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    try:
        for r in range(rounds + 1):
            for k in range(len(rows)):
                system, variant = rows[(k + r) % len(rows)]
                start = time.perf_counter()
                out, done = systems[system][variant]()
                seconds = time.perf_counter() - start
                problem = kernels.check("W2", out, x)
                del out
                done()
                if problem:
                    raise AssertionError(f"{system} {variant}: {problem}")
                if r:  # round 0 warms up
                    times[(system, variant)].append(seconds)
    finally:
        for close in closers:
            close()
    return times


def _shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def w9(size: int, workers: int, iterations: int) -> dict[str, tuple[float, list[int]]]:
    """(steady median seconds per iteration, /dev/shm bytes used every 10% of the loop)."""
    out: dict[str, tuple[float, list[int]]] = {}
    with shmpool.SharedPool(workers) as pool:
        x = pool.asarray(kernels.make_input("W2", size))
        for variant in ("reuse", "free", "drop"):  # drop last: what it leaves goes at close
            base = _shm_used()
            samples, used = [], []
            reused = pool.empty_like(x) if variant == "reuse" else None
            for i in range(iterations):
                start = time.perf_counter()
                y = reused if reused is not None else pool.empty_like(x)
                pool.map(KERNEL, x, y, chunks=-(-size // CHUNKS))
                if variant == "free":
                    pool.free(y)
                del y
                samples.append(time.perf_counter() - start)
                if (i + 1) % max(1, iterations // 10) == 0:
                    used.append(_shm_used() - base)
                gc.collect() if variant == "drop" and i % 100 == 0 else None
                if variant == "drop" and _shm_used() - base > DROP_CAP:
                    # Blocks that stay would fill /dev/shm (and RAM: others share it).
                    used.append(_shm_used() - base)
                    print(f"drop: /dev/shm grew past {DROP_CAP >> 20} MiB at iteration {i + 1}: stopped")
                    break
            if reused is not None:
                pool.free(reused)
            out[variant] = (statistics.median(samples[len(samples) // 2 :]), used)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args(argv)
    mib = 1 if args.smoke else 128
    rounds = args.rounds or (1 if args.smoke else 5)
    times = w8((mib << 20) // 8, args.workers, rounds)
    med = {row: statistics.median(t) for row, t in times.items()}
    print(f"## W8 fresh output each call ({mib} MiB, {CHUNKS} chunks, median of {rounds})\n")
    print("| system | e2e | shared | e2e / cf_tpe | shared / cf_tpe |\n|---|---|---|---|---|")
    for system in dict.fromkeys(s for s, _ in med):
        e, s = med[(system, "e2e")], med[(system, "shared")]
        ce, cs = med[("cf_tpe", "e2e")], med[("cf_tpe", "shared")]
        print(f"| {system} | {e * 1e3:.1f} ms | {s * 1e3:.1f} ms | {e / ce:.2f}x | {s / cs:.2f}x |")
    procs = [s for s in ("shm_hand", "joblib_memmap") if (s, "e2e") in med]
    best = min(procs, key=lambda s: med[(s, "e2e")])
    print("\nTargets:")
    print(f"- shmpool shared <= 1.25x cf_tpe: {med[('shmpool', 'shared')] / med[('cf_tpe', 'shared')]:.2f}x")
    print(f"- shmpool e2e <= 1.5x threadpool: {med[('shmpool', 'e2e')] / med[('threadpool', 'e2e')]:.2f}x")
    print(
        f"- shmpool e2e >= 3x faster than the best process peer ({best}): "
        f"{med[(best, 'e2e')] / med[('shmpool', 'e2e')]:.2f}x"
    )
    iterations = args.iterations or (20 if args.smoke else 1000)
    w9_mib = 1 if args.smoke else 64
    print(f"\n## W9 allocate and drop ({w9_mib} MiB, {iterations} iterations)\n")
    print("| variant | steady iteration | / reuse | /dev/shm growth every 10% (MiB) |\n|---|---|---|---|")
    results = w9((w9_mib << 20) // 8, args.workers, iterations)
    for variant, (seconds, used) in results.items():
        growth = ", ".join(f"{u / 2**20:.0f}" for u in used)
        print(f"| {variant} | {seconds * 1e3:.2f} ms | {seconds / results['reuse'][0]:.2f}x | {growth} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
