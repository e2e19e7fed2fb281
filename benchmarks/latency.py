"""Per-call latency of the installed shmpool: W6 (maps of 2 chunks) and W7 (imap items), as
wall time and as the calling process's CPU time.

Run it in two checkouts, alternating, to compare two versions on one machine under the
same load (the CPU time of the calling process is the steadier figure on a busy machine):

    python benchmarks/latency.py --label new --rounds 3

Each round also times ``multiprocessing.Pool`` (the same start method and number of
workers) in the same way, right after shmpool's round, so that the ratios compare two
systems under one load: ``Pool.map`` of a 2-item list for W6, and ``Pool.imap`` with
``chunksize=1`` for W7 (the imap target is twice its per-item rate).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import numpy as np

import shmpool

MAPS = 1500
ITEMS = 3000
AUTO_ITEMS = 200_000


def _noop(x: np.ndarray) -> None:
    pass


def _square(i: int) -> int:
    return i * i


def measure(workers: int) -> dict[str, float]:
    """One round: µs per map, µs per imap item (chunksize=1, over a range: trains; over a
    generator: one item per message), ms for 200,000 items ("auto"), as wall time and, for
    the first two, as this process's CPU time."""
    out: dict[str, float] = {}
    with shmpool.SharedPool(workers) as pool:
        x = pool.zeros(4096)
        for _ in range(200):  # warm up: kernels cached, blocks mapped in the workers
            pool.map(_noop, x, chunks=2048)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(MAPS):
            pool.map(_noop, x, chunks=2048)
        out["W6 us/map"] = (time.perf_counter() - wall) / MAPS * 1e6
        out["W6 cpu us/map"] = (time.process_time() - cpu) / MAPS * 1e6
        list(pool.imap(_square, range(500)))
        wall, cpu = time.perf_counter(), time.process_time()
        list(pool.imap(_square, range(ITEMS)))
        out["W7 us/item"] = (time.perf_counter() - wall) / ITEMS * 1e6
        out["W7 cpu us/item"] = (time.process_time() - cpu) / ITEMS * 1e6
        # From a generator: no trains, one item per message (the path before trains).
        wall = time.perf_counter()
        list(pool.imap(_square, iter(range(ITEMS))))
        out["W7 one-per-message us/item"] = (time.perf_counter() - wall) / ITEMS * 1e6
        wall = time.perf_counter()
        list(pool.imap(_square, range(AUTO_ITEMS), chunksize="auto"))
        out["W7 auto ms"] = (time.perf_counter() - wall) * 1e3
    return out


def measure_mp_pool(workers: int) -> dict[str, float]:
    """The same round for ``multiprocessing.Pool`` with the start method shmpool uses."""
    out: dict[str, float] = {}
    ctx = multiprocessing.get_context(shmpool.default_start_method())
    with ctx.Pool(workers) as pool:
        for _ in range(200):
            pool.map(_square, [1, 2])
        wall = time.perf_counter()
        for _ in range(MAPS):
            pool.map(_square, [1, 2])
        out["Pool W6 us/map"] = (time.perf_counter() - wall) / MAPS * 1e6
        list(pool.imap(_square, range(500)))
        wall = time.perf_counter()
        list(pool.imap(_square, range(ITEMS), chunksize=1))
        out["Pool W7 us/item"] = (time.perf_counter() - wall) / ITEMS * 1e6
    return out


def main() -> None:
    """Print the medians over ``--rounds`` rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default=shmpool.__version__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip multiprocessing.Pool")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        one = measure(args.workers)
        if not args.no_peer:
            one.update(measure_mp_pool(args.workers))
            # Per round, so that a ratio compares two systems under the same load.
            one["W7 rate vs Pool"] = one["Pool W7 us/item"] / one["W7 us/item"]
            one["one-per-message vs Pool"] = one["Pool W7 us/item"] / one["W7 one-per-message us/item"]
        rounds.append(one)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(args.label, "  ".join(f"{k} {v:.2f}" if "vs" in k else f"{k} {v:.0f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
