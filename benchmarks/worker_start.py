"""Worker start-up of a script whose main module imports something heavy: the time from
``SharedPool(2, start_method=...)`` to both workers having answered a call.

Workers that ran the script's main module again would pay its imports too; shmpool's do
not. To compare two checkouts, run it with each on ``PYTHONPATH``:

    PYTHONPATH=/path/to/checkout python benchmarks/worker_start.py spawn --runs 5

It is a script on purpose, guarded so that an older shmpool (whose workers do run the
main module) can be measured with it too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time

t0 = time.perf_counter()
# What a data-science script typically imports first; whatever of it is installed.
for _name in ("dask.array", "scipy.signal", "sklearn.ensemble"):
    try:
        importlib.import_module(_name)
    except ImportError:
        pass
IMPORTS_S = time.perf_counter() - t0

import shmpool  # noqa: E402


def _pid(_: object) -> int:
    time.sleep(0.05)  # long enough that both workers get an item
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("start_method", choices=["fork", "spawn", "forkserver"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        with shmpool.SharedPool(2, start_method=args.start_method) as pool:
            pids = set(pool.imap(_pid, range(8)))
            times.append(time.perf_counter() - start)
        if len(pids) != 2:
            raise SystemExit(f"expected both workers to answer, got {sorted(pids)}")
    print(
        f"{args.start_method}: main module's imports {IMPORTS_S * 1000:.0f} ms; pool start to both "
        f"workers answering: median {statistics.median(times) * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms over {len(times)} runs (shmpool from {shmpool.__file__})"
    )


if __name__ == "__main__":
    main()
