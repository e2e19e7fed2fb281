"""What one shmpool.advance() call costs: inside a SharedPool worker and a ThreadPool thread,
with a bar shown (it counts) and without (a no-op), and in plain code.

Each figure is the median over repeats of the thread's CPU time per call (CPU time, not wall
time, so that other processes on a busy machine do not inflate it), minus the cost of an
empty loop of the same length.

    python benchmarks/advance_cost.py [--calls 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

import shmpool


def per_call_ns(x: np.ndarray, *, calls: int, repeats: int) -> float:
    """The median CPU nanoseconds of one advance(1) call in this thread, loop cost removed."""
    advance = shmpool.advance
    figures = []
    for _ in range(repeats):
        start = time.thread_time_ns()
        for _ in range(calls):
            pass
        empty = time.thread_time_ns() - start
        start = time.thread_time_ns()
        for _ in range(calls):
            advance(1)
        figures.append((time.thread_time_ns() - start - empty) / calls)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    options = {"calls": args.calls, "repeats": args.repeats}
    # One chunk of length 1 whose kernel reports a million times: the counter stops at the
    # chunk's end after the first call, but every call still does the full work (read,
    # add, compare, store).
    print(f"plain code (no map):             {per_call_ns(np.zeros(1), **options):7.1f} ns per call")
    with shmpool.SharedPool(1) as pool:
        for bar, label in (
            (False, "SharedPool worker, no bar:      "),
            (True, "SharedPool worker, bar shown:   "),
        ):
            progress = {"file": io.StringIO()} if bar else False
            (ns,) = pool.map(per_call_ns, np.zeros(1), progress=progress, **options)
            print(f"{label} {ns:7.1f} ns per call")
    with shmpool.ThreadPool(1) as threads:
        for bar, label in (
            (False, "ThreadPool thread, no bar:      "),
            (True, "ThreadPool thread, bar shown:   "),
        ):
            progress = {"file": io.StringIO()} if bar else False
            (ns,) = threads.map(per_call_ns, np.zeros(1), progress=progress, **options)
            print(f"{label} {ns:7.1f} ns per call")


if __name__ == "__main__":
    main()
