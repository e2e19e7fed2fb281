"""The first pool of a fresh interpreter: start (forkserver, 2 workers), one map, close.

Each round runs two fresh interpreters, alternating: shmpool, and multiprocessing's own
``Pool`` with the same start method and NumPy preloaded in its fork server (what any
process pool pays here). Times are from after ``import numpy, shmpool`` (shmpool's import is
lazy: the pool machinery loads on first use of ``SharedPool``, inside "start"). Run with
compiled bytecode kept, or every figure pays for compiling (``PYTHONDONTWRITEBYTECODE``)::

    python benchmarks/first_pool.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

SHMPOOL = """
import time
import numpy as np, shmpool
t0 = time.perf_counter()
pool = shmpool.SharedPool(2, start_method="forkserver")
t1 = time.perf_counter()
pool.map(np.negative, pool.zeros(1000))
t2 = time.perf_counter()
pool.close()
t3 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3)
"""

MP_POOL = """
import time, multiprocessing as mp
import numpy as np, shmpool

def same(x):
    return x

if __name__ == "__main__":
    t0 = time.perf_counter()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy"])
    pool = ctx.Pool(2)
    t1 = time.perf_counter()
    pool.map(same, [1, 2])
    t2 = time.perf_counter()
    pool.close()
    pool.join()
    t3 = time.perf_counter()
    print((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3)
"""


def _run(code: str, folder: str) -> list[float]:
    # From a file: forkserver children find a kernel by its module, and "-c" code has none.
    path = os.path.join(folder, "first_pool_case.py")
    with open(path, "w") as f:
        f.write(code)
    out = subprocess.run([sys.executable, path], capture_output=True, text=True, check=True, timeout=120)
    return [float(v) for v in out.stdout.split()]


def main() -> None:
    """Print the medians of start, first map, close and their sum, in ms."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[list[float]]] = {"shmpool": [], "multiprocessing.Pool": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            runs["shmpool"].append(_run(SHMPOOL, folder))
            runs["multiprocessing.Pool"].append(_run(MP_POOL, folder))
    print("| system | start | first map | close | total (target 200 ms) |")
    print("|---|---|---|---|---|")
    for name, rows in runs.items():
        cells = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"| {name} | " + " | ".join(f"{c:.0f} ms" for c in cells) + " |")


if __name__ == "__main__":
    main()
