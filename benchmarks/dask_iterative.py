"""An iterative job on a DaskPool with cluster arrays, against SharedPool and dask.array.

    python benchmarks/dask_iterative.py [--mib 128] [--iterations 100] [--rounds 2]

W2 (``y = sqrt(x) * 2 + 1``, in place) on two float64 arrays of ``--mib`` MiB each,
``--iterations`` times ``map(step, x, y); x, y = y, x``, on a LocalCluster of 2 worker
processes (one thread each):

- ``cluster``: DaskPool with its own arrays (cluster arrays), which stay on the workers;
- ``numpy``: DaskPool with plain NumPy arrays (every map ships the chunks both ways), for
  a few iterations only: it is the "before";
- ``dask.array``: ``x = x.map_blocks(w2).persist()`` on the same cluster, same chunks;
- ``SharedPool(2)``: arrays made by the pool, on the same machine.

It prints the seconds per iteration (median over rounds; systems alternate within a
round), and the bytes the client moved per iteration, by the pool's counters and by the
workers' own (what they sent to anyone: the client or each other). Every system's result
is checked against NumPy's. Exit status 1 on a mismatch.

Then a halo map (``--halo-iterations``, default 20): one explicit diffusion step along
axis 0 of a ``--mib`` MiB float64 grid of 1024 columns, ``halo(u, 1, "reflect")``, two
buffers swapped, against ``map_overlap(depth={0: 1, 1: 0}, boundary="reflect")`` on the
same cluster and row blocks; both checked bit for bit against serial NumPy:

- ``cluster halo``: DaskPool, cluster arrays: each chunk runs where it lives, and only its
  margin rows move to it, worker to worker;
- ``dask.array halo``: ``x = x.map_overlap(...).persist()``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import distributed
import numpy as np
from distributed import futures_of, wait

import shmpool
from shmpool.dask_pool import DaskPool

MiB = 1 << 20


def step(x: np.ndarray, y: np.ndarray) -> None:
    """W2 in place: ``y = sqrt(x) * 2 + 1``."""
    np.sqrt(x, out=y)
    y *= 2.0
    y += 1.0


def w2_block(x: np.ndarray) -> np.ndarray:
    """W2 returning a new block, as map_blocks wants."""
    y = np.sqrt(x)
    y *= 2.0
    y += 1.0
    return y


def expected(start: float, iterations: int) -> float:
    value = np.float64(start)
    for _ in range(iterations):
        value = np.sqrt(value) * 2.0 + 1.0
    return float(value)


def worker_bytes_sent(client: Any) -> int:
    def sent(dask_worker: Any) -> int:
        return int(dask_worker.transfer_outgoing_bytes_total)

    return sum(client.run(sent).values())


def run_cluster(pool: DaskPool, n: int, iterations: int) -> tuple[float, float, float]:
    x = pool.full(n, 4.0)
    y = pool.empty_like(x)
    pool.map(step, x, y)  # warm: the workers import and unpickle once
    x, y = y, x
    before, sent = pool.stats, worker_bytes_sent(pool.client)
    start = time.perf_counter()
    for _ in range(iterations):
        pool.map(step, x, y)
        x, y = y, x
    seconds = (time.perf_counter() - start) / iterations
    after = pool.stats
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    workers = worker_bytes_sent(pool.client) - sent
    ok = x[:3].tolist() == [expected(4.0, iterations + 1)] * 3 and float(x[-1]) == expected(
        4.0, iterations + 1
    )
    pool.free(x)
    pool.free(y)
    if not ok:
        raise SystemExit("cluster arrays: wrong result")
    return seconds, moved / iterations, workers / iterations


def run_numpy(pool: DaskPool, n: int, iterations: int) -> tuple[float, float]:
    x, y = np.full(n, 4.0), np.empty(n)
    before = pool.stats
    start = time.perf_counter()
    for _ in range(iterations):
        pool.map(step, x, y, chunks=n // 2)
        x, y = y, x
    seconds = (time.perf_counter() - start) / iterations
    after = pool.stats
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    if not np.all(x == expected(4.0, iterations)):
        raise SystemExit("DaskPool with NumPy arrays: wrong result")
    return seconds, moved / iterations


def _settle(client: Any, x: Any) -> None:
    """Wait until a persisted collection is in the workers' memory (nothing is fetched)."""
    with client.as_current():
        wait(futures_of(x))


def run_dask_array(client: Any, n: int, iterations: int) -> tuple[float, float]:
    import dask.array as da

    x = client.persist(da.full(n, 4.0, chunks=n // 2))
    _settle(client, x)
    x = client.persist(x.map_blocks(w2_block))  # warm, as for the others
    _settle(client, x)
    sent = worker_bytes_sent(client)
    start = time.perf_counter()
    for _ in range(iterations):
        x = client.persist(x.map_blocks(w2_block))
        _settle(client, x)
    seconds = (time.perf_counter() - start) / iterations
    workers = worker_bytes_sent(client) - sent
    head = client.compute(x[:3]).result()
    if head.tolist() != [expected(4.0, iterations + 1)] * 3:
        raise SystemExit("dask.array: wrong result")
    del x
    return seconds, workers / iterations


ALPHA = 0.2  # diffusion number: below 0.5 the explicit 1-D scheme is stable
COLUMNS = 1024


def diffuse(u: np.ndarray, out: np.ndarray) -> None:
    """One diffusion step along axis 0 of the rows of ``out``, from its halo view ``u``."""
    info = shmpool.chunk_info()
    assert info is not None
    top, n = info.margin[0], out.shape[0]
    centre = u[top : top + n]
    out[...] = centre + ALPHA * (u[top - 1 : top - 1 + n] + u[top + 1 : top + 1 + n] - 2 * centre)


def diffuse_block(ext: np.ndarray) -> np.ndarray:
    """The same step for map_overlap: ``ext`` has a row more above and below (trimmed after)."""
    out = ext.copy()
    centre = ext[1:-1]
    out[1:-1] = centre + ALPHA * (ext[:-2] + ext[2:] - 2 * centre)
    return out


def grid(rows: int) -> np.ndarray:
    return np.sin(np.arange(rows) / 97.0)[:, None] + np.cos(np.arange(COLUMNS) / 13.0)


def serial_diffusion(rows: int, iterations: int) -> np.ndarray:
    u = grid(rows)
    for _ in range(iterations):
        ext = np.pad(u, ((1, 1), (0, 0)), mode="symmetric")
        u = diffuse_block(ext)[1:-1]
    return u


def run_cluster_halo(pool: DaskPool, rows: int, iterations: int) -> tuple[float, float, float, np.ndarray]:
    u = pool.asarray(grid(rows))  # sent once, before the timing: one chunk per worker
    v = pool.empty_like(u)
    pool.map(diffuse, shmpool.halo(u, 1, "reflect"), v)  # warm, and counted in the check
    u, v = v, u
    before, sent = pool.stats, worker_bytes_sent(pool.client)
    start = time.perf_counter()
    for _ in range(iterations - 1):
        pool.map(diffuse, shmpool.halo(u, 1, "reflect"), v)
        u, v = v, u
    seconds = (time.perf_counter() - start) / (iterations - 1)
    after = pool.stats
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    workers = worker_bytes_sent(pool.client) - sent
    result = u.gather()
    pool.free(u)
    pool.free(v)
    return seconds, moved / (iterations - 1), workers / (iterations - 1), result


def run_dask_halo(client: Any, rows: int, iterations: int) -> tuple[float, float, np.ndarray]:
    import dask.array as da

    # The grid made on the workers (from_array would send it inside the graph), as grid() does.
    down = da.sin(da.arange(rows, chunks=rows // 2) / 97.0)[:, None]
    x = client.persist(down + da.cos(da.arange(COLUMNS, chunks=COLUMNS) / 13.0))
    _settle(client, x)

    def once(x: Any) -> Any:
        y = x.map_overlap(diffuse_block, depth={0: 1, 1: 0}, boundary={0: "reflect", 1: "none"})
        y = client.persist(y)
        _settle(client, y)
        return y

    x = once(x)  # warm, and counted in the check
    sent = worker_bytes_sent(client)
    start = time.perf_counter()
    for _ in range(iterations - 1):
        x = once(x)
    seconds = (time.perf_counter() - start) / (iterations - 1)
    workers = worker_bytes_sent(client) - sent
    result = client.compute(x).result()
    del x
    return seconds, workers / (iterations - 1), result


def run_shared(n: int, iterations: int) -> float:
    with shmpool.SharedPool(2) as pool:
        x, y = pool.full(n, 4.0), pool.empty(n)
        pool.map(step, x, y, chunks=n // 2)
        x, y = y, x
        start = time.perf_counter()
        for _ in range(iterations):
            pool.map(step, x, y, chunks=n // 2)
            x, y = y, x
        seconds = (time.perf_counter() - start) / iterations
        if not np.all(x == expected(4.0, iterations + 1)):
            raise SystemExit("SharedPool: wrong result")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB per array (default 128)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--numpy-iterations", type=int, default=3, help="iterations of the NumPy-array path")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--halo-iterations", type=int, default=20, help="steps of the halo maps (at least 2)")
    args = parser.parse_args()
    rows = args.mib * MiB // 8 // COLUMNS
    n = args.mib * MiB // 8
    times: dict[str, list[float]] = {"cluster": [], "numpy": [], "dask.array": [], "SharedPool": []}
    halo_times: dict[str, list[float]] = {"cluster halo": [], "dask.array halo": []}
    results: list[np.ndarray] = []
    moved: dict[str, float] = {}
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        for _ in range(args.rounds):
            with DaskPool(client) as pool:
                seconds, moved["cluster"], moved["cluster (workers)"] = run_cluster(pool, n, args.iterations)
                times["cluster"].append(seconds)
                seconds, moved["numpy"] = run_numpy(pool, n, args.numpy_iterations)
                times["numpy"].append(seconds)
            seconds, moved["dask.array (workers)"] = run_dask_array(client, n, args.iterations)
            times["dask.array"].append(seconds)
            times["SharedPool"].append(run_shared(n, args.iterations))
            with DaskPool(client) as pool:
                seconds, moved["cluster halo"], moved["cluster halo (workers)"], got = run_cluster_halo(
                    pool, rows, args.halo_iterations
                )
                halo_times["cluster halo"].append(seconds)
                results.append(got)
            seconds, moved["dask.array halo (workers)"], got = run_dask_halo(
                client, rows, args.halo_iterations
            )
            halo_times["dask.array halo"].append(seconds)
            results.append(got)
    serial = serial_diffusion(rows, args.halo_iterations)
    if not all(np.array_equal(r, serial) for r in results):
        raise SystemExit("halo maps: a result differs from serial NumPy's")
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"W2, 2 arrays of {args.mib} MiB, {args.iterations} iterations, {args.rounds} rounds, LocalCluster of 2 processes"
    )
    print("| system | s per iteration (median) | all rounds | bytes through the client per iteration |")
    print("|---|---|---|---|")
    client_bytes = {"cluster": moved["cluster"], "numpy": moved["numpy"]}
    for name, value in median.items():
        rounds = ", ".join(f"{t:.4f}" for t in times[name])
        through = f"{client_bytes[name] / 1024:.1f} KiB" if name in client_bytes else "-"
        print(f"| {name} | {value:.4f} | {rounds} | {through} |")
    print(f"cluster vs dask.array: {median['cluster'] / median['dask.array']:.2f}x the time")
    print(f"cluster vs SharedPool: {median['cluster'] / median['SharedPool']:.2f}x the time")
    print(
        f"bytes sent by the workers per iteration: cluster {moved['cluster (workers)'] / 1024:.1f} KiB, "
        f"dask.array {moved['dask.array (workers)'] / 1024:.1f} KiB"
    )
    print(
        f"\nhalo(u, 1, 'reflect') diffusion, a {rows} x {COLUMNS} float64 grid ({args.mib} MiB), "
        f"{args.halo_iterations} steps, equal to serial NumPy bit for bit"
    )
    print(
        "| system | s per step (median) | all rounds | through the client per step | sent by the workers per step |"
    )
    print("|---|---|---|---|---|")
    for name, values in halo_times.items():
        rounds = ", ".join(f"{t:.4f}" for t in values)
        through = f"{moved[name] / 1024:.1f} KiB" if name in moved else "-"
        workers = moved[f"{name} (workers)"] / 1024
        print(f"| {name} | {statistics.median(values):.4f} | {rounds} | {through} | {workers:.1f} KiB |")


if __name__ == "__main__":
    main()
