"""An iterative 2-D diffusion stencil: halo maps against dask.array.map_overlap and NumPy.

    python benchmarks/stencil.py [--n 2048] [--steps 20] [--rounds 3] [--workers 2]
    python benchmarks/stencil.py --full      # the issue's size: 8192 x 8192, 50 steps

Explicit diffusion on an n x n float64 grid, depth 1, boundary ``reflect`` (the edge value
repeats) on both axes, two buffers swapped after every step: ``v = step(u); u, v = v, u``.
The grid is split along axis 0 into blocks of ``--rows`` rows (default: ``4 x workers``
blocks), the same blocks for every system but serial; axis 1 is never split, so
each kernel handles that axis's boundary itself. Systems:

- ``serial``: NumPy in this process, the interior rows straight from ``u``, the two edge
  rows from three-row padded copies (what a halo map does, without the pool);
- ``shmpool``: ``SharedPool(workers)``, ``pool.map(step, shmpool.halo(u, 1, "reflect"), v)``
  over pool arrays;
- ``threadpool``: the same map on ``ThreadPool(workers)``;
- ``dask-threads``, ``dask-processes``: ``x = x.map_overlap(step, depth={0: 1, 1: 0},
  boundary="reflect").persist()`` per step, on Dask's threaded and process schedulers with
  ``workers`` workers, the same row blocks.

Every system runs in a fresh process, once per round, systems alternating. The time is
the steps only (the pool's start-up and the first fill excluded; for Dask, from
``from_array`` to the final NumPy array). The peak memory is the highest tmpfs-aware total
of that process tree (``benchmarks/memsample.py``: private and file-backed PSS plus
``/dev/shm``) less its value just before the grids were made, with the pool already
started (its interpreters are a fixed cost, not the stencil's), reported in MiB and
against input plus output (two grids). Dask's process scheduler is given one
``ProcessPoolExecutor(workers)`` for all its computes (by default it starts a new one per
compute), started before the baseline too. Every result is compared bit for bit with the serial one;
the exit status is 1 on a mismatch. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import memsample

ALPHA = 0.2  # diffusion number: below 0.25 the explicit scheme is stable
SYSTEMS = ("serial", "shmpool", "threadpool", "dask-threads", "dask-processes")
MiB = 1 << 20


def step(ext: np.ndarray, out: np.ndarray) -> None:
    """One diffusion step of the rows of ``out`` from ``ext``, the same rows with one more
    above and below. Axis 1's boundary is ``reflect``. In place on ``out``: no temporary of
    the grid's size, and the same operations in the same order for every system, so the
    results are equal bit for bit however the rows are split."""
    centre = ext[1:-1]
    np.add(ext[:-2], ext[2:], out=out)
    out[:, 1:] += centre[:, :-1]
    out[:, :1] += centre[:, :1]
    out[:, :-1] += centre[:, 1:]
    out[:, -1:] += centre[:, -1:]
    for _ in range(4):
        out -= centre
    out *= ALPHA
    out += centre


def halo_step(u: np.ndarray, v: np.ndarray) -> None:
    """The kernel of the halo maps: its view of ``u`` always has one row more on each side."""
    step(u, v)


def dask_block(block: np.ndarray) -> np.ndarray:
    """The map_overlap function: a block with its halo rows in, the same size out (the
    halo rows of the result are trimmed off by Dask)."""
    out = np.empty_like(block)
    step(block, out[1:-1])
    return out


def initial(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, n))


def serial_step(u: np.ndarray, v: np.ndarray) -> None:
    step(u, v[1:-1])
    step(np.concatenate([u[:1], u[:2]]), v[:1])
    step(np.concatenate([u[-2:], u[-1:]]), v[-1:])


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def prepare(system: str, workers: int) -> Any:
    """Start what the system runs on, before the memory baseline: a pool's processes or
    threads (a fixed cost, not the stencil's), and a first Dask compute."""
    import shmpool

    if system == "shmpool":
        return shmpool.SharedPool(workers)
    if system == "threadpool":
        return shmpool.ThreadPool(workers)
    if system.startswith("dask"):
        import dask
        import dask.array as da

        if system == "dask-threads":
            dask.config.set(scheduler="threads", num_workers=workers)
        else:
            # One process pool for every compute: by default Dask's process scheduler starts
            # a new one per compute (seconds each, under spawn), which is not the stencil.
            from concurrent.futures import ProcessPoolExecutor

            dask.config.set(scheduler="processes", pool=ProcessPoolExecutor(workers))
        da.ones(8, chunks=4).sum().compute()  # its workers started before the baseline
    return None


def run_system(system: str, n: int, steps: int, workers: int, rows: int, pool: Any) -> dict[str, Any]:
    """Run one system in this process; its seconds and the digest of its result."""
    chunks = rows
    if system == "serial":
        u, v = initial(n), np.empty((n, n))
        t0 = time.perf_counter()
        for _ in range(steps):
            serial_step(u, v)
            u, v = v, u
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "digest": digest(u)}
    if pool is not None:
        import shmpool

        with pool:
            u = pool.empty((n, n))
            u[...] = initial(n)
            v = pool.empty((n, n))
            t0 = time.perf_counter()
            for _ in range(steps):
                pool.map(halo_step, shmpool.halo(u, 1, "reflect"), v, chunks=chunks)
                u, v = v, u
            seconds = time.perf_counter() - t0
            return {"seconds": seconds, "digest": digest(u)}
    import dask.array as da

    start = initial(n)
    t0 = time.perf_counter()
    x = da.from_array(start, chunks=(chunks, n))
    for _ in range(steps):
        x = x.map_overlap(dask_block, depth={0: 1, 1: 0}, boundary="reflect", dtype=np.float64).persist()
    result = np.asarray(x)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "digest": digest(result)}


def measure(system: str, n: int, steps: int, workers: int, rows: int) -> dict[str, Any]:
    """Run ``system`` in a fresh process and sample the memory of its tree."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            system,
            "--n",
            str(n),
            "--steps",
            str(steps),
            "--workers",
            str(workers),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"  # imports done, nothing allocated yet
    base = memsample.snapshot(proc.pid)
    sampler = memsample.PeakSampler(proc.pid).start()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    peak = sampler.stop()
    proc.wait()
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{system} failed (exit {proc.returncode})")
    row: dict[str, Any] = json.loads(line)
    row["peak_bytes"] = peak.tmpfs_aware - base.tmpfs_aware
    return row


def child(system: str, n: int, steps: int, workers: int, rows: int) -> None:
    import dask.array  # noqa: F401 - imported before the baseline, by every system alike

    pool = prepare(system, workers)
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(run_system(system, n, steps, workers, rows, pool)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="grid size n (n x n float64; default 2048)")
    parser.add_argument("--steps", type=int, default=20, help="time steps (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each system (default 3)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=0, help="rows per block (default: n / (4 x workers))")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--full", action="store_true", help="the issue's size: --n 8192 --steps 50")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full:
        args.n, args.steps = 8192, 50
    args.rows = args.rows or max(1, args.n // (4 * args.workers))
    if args.child:
        child(args.child, args.n, args.steps, args.workers, args.rows)
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    grids = 2 * args.n * args.n * 8
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for _ in range(args.rounds):
        for system in systems:
            rows[system].append(measure(system, args.n, args.steps, args.workers, args.rows))
    reference = rows[systems[0]][0]["digest"] if "serial" not in rows else rows["serial"][0]["digest"]
    print(
        f"{args.n} x {args.n} float64 ({args.n * args.n * 8 / MiB:.0f} MiB a grid), {args.steps} steps, "
        f"{args.workers} workers, blocks of {args.rows} rows, medians of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| system | seconds | s per step | peak extra memory | x (input + output) | result |")
    print("|---|---|---|---|---|---|")
    bad = False
    for system, runs in rows.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_bytes"] for r in runs)
        same = all(r["digest"] == reference for r in runs)
        bad |= not same
        print(
            f"| {system} | {seconds:.3g} | {seconds / args.steps:.3g} | {peak / MiB:.0f} MiB | "
            f"{peak / grids:.2f} | {'equal' if same else 'MISMATCH'} |"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
