#!/usr/bin/env python3
"""W2 steady in one pool before and after the per-call workloads (W6's small maps and
W7's imap items, with run.py's kernels), to tell a pool that slows down with use from a
noisy run.

``run.py`` times W6 and W7 before W2 in each system's host; if a pool kept something from
them (threads, cached blocks, a slower path) its W2 would suffer in every run. This times
``out = sqrt(x) * 2 + 1`` over 128 MiB in 64 chunks (the quick mode's W2) 15 times, then
again after 2,000 maps of 2 chunks, after 100,000 imap items, and once more::

    python benchmarks/after_loads.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
# Workers unpickle the kernel by reference: they must find `benchmarks` too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402

import shmpool  # noqa: E402
from benchmarks import kernels  # noqa: E402

CHUNKS = 64


def time_w2(pool: shmpool.SharedPool, x: np.ndarray, out: np.ndarray, reps: int) -> str:
    """Median and minimum of ``reps`` W2 maps, in ms."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        pool.map(kernels.w2_kernel, x, out, chunks=max(1, len(x) // CHUNKS))
        times.append(time.perf_counter() - start)
    return f"median {statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mib", type=float, default=128, help="W2's input size")
    parser.add_argument("--maps", type=int, default=2000, help="W6 maps between the timings")
    parser.add_argument("--items", type=int, default=100_000, help="imap items between the timings")
    args = parser.parse_args()
    length = int(args.mib * 2**20) // 8
    with shmpool.SharedPool(args.workers) as pool:
        x = pool.empty(length)
        x[:] = kernels.make_input("W2", length)
        out = pool.empty_like(x)
        print("W2 first:", time_w2(pool, x, out, args.reps))
        small = pool.asarray(kernels.make_input("W6", kernels.W6_LENGTH))
        small_out = pool.empty_like(small)
        for _ in range(args.maps):
            pool.map(kernels.w6_kernel, small, small_out, chunks=kernels.W6_LENGTH // 2)
        print(f"after {args.maps:,} W6 maps:", time_w2(pool, x, out, args.reps))
        items = list(pool.imap(kernels.w7_item, range(args.items)))
        assert items == [kernels.w7_item(i) for i in range(args.items)], "imap's results are wrong"
        print(f"after {args.items:,} imap items:", time_w2(pool, x, out, args.reps))
        print("once more:", time_w2(pool, x, out, args.reps))
        expected = np.sqrt(x) * 2 + 1
        assert np.array_equal(out, expected), "W2's output is wrong"


if __name__ == "__main__":
    main()
