#!/usr/bin/env python3
"""Oversubscription: per-chunk ``np.linalg.svd`` with 2 workers, with and without the
inner thread limit (issue 11, part 4).

    python benchmarks/inner_threads.py [--n 256] [--count 64] [--workers 2] [--reps 5]
                                       [--start-method forkserver] [--smoke]

A stack of ``count`` random ``n`` x ``n`` matrices in shared memory; the kernel computes
the singular values of each matrix of its chunk (LAPACK's gesdd on NumPy's BLAS). Systems,
timed in alternation after one warm-up each, medians of ``reps``:

- ``serial``: one process, the BLAS with its default threads (one per CPU);
- ``serial 1 thread``: the same with the BLAS limited to one thread;
- ``shmpool limited``: ``SharedPool(workers)``, default ``inner_threads`` (cpus // workers);
- ``shmpool unlimited``: ``SharedPool(workers, inner_threads=None)``: every worker's BLAS
  starts one thread per CPU, so workers x CPUs threads share the CPUs;
- ``threads limited`` / ``threads unlimited``: the same with ``ThreadPool(workers)``.

Every result is checked against the serial one. The BLAS threads each worker really had
(threadpoolctl, read inside the workers) are printed with the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import threadpoolctl

import shmpool


def singular_values(x: np.ndarray, out: np.ndarray) -> None:  # type: ignore[type-arg]
    for i in range(x.shape[0]):
        out[i] = np.linalg.svd(x[i], compute_uv=False)


def blas_threads(_: object = None) -> int:
    return max((lib["num_threads"] for lib in threadpoolctl.threadpool_info()), default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--start-method", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.count, args.reps = 32, 8, 1
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.count, args.n, args.n))
    expected = np.empty((args.count, args.n))
    singular_values(data, expected)

    with (
        shmpool.SharedPool(args.workers, start_method=args.start_method) as limited,
        shmpool.SharedPool(args.workers, start_method=args.start_method, inner_threads=None) as unlimited,
        shmpool.ThreadPool(args.workers) as t_limited,
        shmpool.ThreadPool(args.workers, inner_threads=None) as t_unlimited,
    ):
        systems: dict[str, tuple[Callable[[], np.ndarray], str]] = {}  # type: ignore[type-arg]

        def serial() -> np.ndarray:  # type: ignore[type-arg]
            out = np.empty_like(expected)
            singular_values(data, out)
            return out

        def serial_one() -> np.ndarray:  # type: ignore[type-arg]
            with threadpoolctl.threadpool_limits(limits=1):
                return serial()

        systems["serial"] = (serial, f"{blas_threads()} BLAS threads")
        systems["serial 1 thread"] = (serial_one, "1 BLAS thread")
        for name, pool in (
            ("shmpool limited", limited),
            ("shmpool unlimited", unlimited),
            ("threads limited", t_limited),
            ("threads unlimited", t_unlimited),
        ):
            x = pool.asarray(data)
            out = pool.empty_like(expected)

            def run(pool: Any = pool, x: Any = x, out: Any = out) -> np.ndarray:  # type: ignore[type-arg]
                pool.map(singular_values, x, out, chunks=max(1, args.count // (4 * args.workers)))
                return out

            if isinstance(pool, shmpool.SharedPool):
                seen = sorted(set(pool.imap(blas_threads, range(4 * args.workers))))
            else:
                seen = sorted(set(pool.map(lambda x: blas_threads(), np.zeros(args.workers))))
            systems[name] = (run, f"inner_threads={pool.inner_threads}: {seen} BLAS threads per worker")
        times: dict[str, list[float]] = {name: [] for name in systems}
        for fn, _ in systems.values():
            np.testing.assert_allclose(fn(), expected, rtol=1e-10)  # warm-up and check
        for _ in range(args.reps):
            for name, (fn, _) in systems.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["serial"])
        print(
            f"{args.count} SVDs of {args.n}x{args.n}, {args.workers} workers, "
            f"{shmpool.usable_cpus()} usable CPUs, medians of {args.reps}"
        )
        for name, (_, note) in systems.items():
            med = statistics.median(times[name])
            spread = f"{min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f}"
            print(f"  {name:17s} {med * 1e3:8.1f} ms  ({spread} ms; {base / med:4.2f}x serial)  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
