"""A reduction: each chunk returns a partial result; the parent combines them.

Mean, variance and a histogram of a large array in one pass over shared memory.

Run: python examples/reduction.py [--n N]
"""

from __future__ import annotations

import argparse

import numpy as np

import shmpool

BINS = np.linspace(-5, 5, 21)


def partial_stats(x: np.ndarray) -> tuple[int, float, float, np.ndarray]:
    """Count, sum, sum of squares and histogram counts of one chunk."""
    counts, _ = np.histogram(x, bins=BINS)
    return x.size, float(x.sum()), float(np.square(x).sum()), counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5_000_000)
    args = parser.parse_args()
    with shmpool.SharedPool() as pool:
        x = pool.asarray(np.random.default_rng(1).standard_normal(args.n))
        parts = pool.map(partial_stats, x)  # one tuple per chunk, in chunk order
        n = sum(p[0] for p in parts)
        mean = sum(p[1] for p in parts) / n
        var = sum(p[2] for p in parts) / n - mean**2
        hist = sum(p[3] for p in parts)
        assert n == x.size
        assert np.isclose(mean, x.mean()) and np.isclose(var, x.var())
        assert np.array_equal(hist, np.histogram(x, bins=BINS)[0])
        total = sum(pool.map(np.sum, x))  # the simplest reduction
        assert np.isclose(total, x.sum())
        print(f"n={n} mean={mean:.5f} var={var:.5f} from {len(parts)} chunks; matches NumPy")


if __name__ == "__main__":
    main()
