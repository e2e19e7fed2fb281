"""Cluster arrays on a DaskPool: made on the workers, mapped where they live, freed.

A DaskPool's own arrays (``empty``, ``zeros``, ``full``, ``*_like``, ``asarray``) are
cluster arrays, and its ``map`` runs where they live when it is given them; what every pool
shares is in test_pool_contract.py, which runs DaskPool over cluster arrays too.

Every test runs on a LocalCluster of two worker processes (the fixtures of
test_dask_pool.py). "Nothing moved" is checked twice: by the pool's own counters (what the
client sent and received) and by Dask's counters on the workers (what they sent to anyone).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pytest

import shmpool

from . import kernels, kernels_halo
from .test_dask_pool import (  # noqa: F401 - fixtures used by name
    DaskPool,
    MiB,
    bytes_sent_by_workers,
    dask_client,
    dask_cluster_processes_are_not_leaks,
    local_cluster,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool(dask_client: Any) -> Any:
    with DaskPool(dask_client) as p:
        yield p
    _wait_until_no_keys(dask_client)


def _shmpool_keys(client: Any) -> list[str]:
    def keys(dask_worker: Any) -> list[str]:
        return [str(k) for k in dask_worker.data if "shmpool" in str(k)]

    return [k for ks in client.run(keys).values() for k in ks]


def _wait_until_no_keys(client: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (left := _shmpool_keys(client)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left on the workers: {left}"


def step(x: np.ndarray, y: np.ndarray) -> None:
    """The benchmark's kernel (W2 in place): y = sqrt(x) * 2 + 1."""
    np.sqrt(x, out=y)
    y *= 2
    y += 1


def total(x: np.ndarray) -> float:
    return float(x.sum())


def keep(x: np.ndarray) -> None:
    """Writes nothing: a map of it re-splits an array into the map's chunks (on the workers)."""


def _rechunk(pool: Any, a: Any, chunks: Any, axis: int = 0) -> Any:
    pool.map(keep, a, chunks=chunks, axis=axis)
    return a


# ---- making, reading, writing ----------------------------------------------------------------


def test_made_on_the_workers(pool: Any) -> None:
    before = pool.stats
    z = pool.zeros((1000, 3), dtype=np.int32)
    e = pool.empty((6, 4), order="F")
    assert pool.stats.bytes_staged_in == before.bytes_staged_in  # only tasks were sent
    f = pool.full(10, 2.5)
    assert pool.stats.bytes_staged_in - before.bytes_staged_in == 2 * 8  # the value, per chunk
    assert isinstance(z, shmpool.ClusterArray) and pool.is_shared(z) and not pool.is_shared(np.zeros(3))
    assert (z.shape, z.dtype, z.ndim, z.size, z.nbytes) == ((1000, 3), np.int32, 2, 3000, 12000)
    assert z.chunks == (0, 500, 1000) and z.axis == 0  # one chunk per worker thread
    assert f.chunks == (0, 5, 10) and f.dtype == np.float64 and e.chunks == (0, 3, 6)
    assert np.array_equal(np.asarray(z), np.zeros((1000, 3), np.int32)) and np.sum(f) == 25.0
    _rechunk(pool, f, 3)
    like = pool.full_like(f, 7, dtype=np.int8)
    assert like.chunks == f.chunks == (0, 3, 6, 9, 10) and like.homes == f.homes  # where f's are
    assert like.dtype == np.int8 and like.gather().tolist() == [7] * 10
    assert pool.zeros_like(np.zeros((2, 5))).shape == (2, 5)
    assert pool.empty_like(z).chunks == z.chunks
    scalar = pool.full((), 4.5)
    assert scalar.shape == () and scalar[()] == 4.5 and float(np.asarray(scalar)) == 4.5
    scalar[...] = 2
    assert np.asarray(scalar).tolist() == 2.0


def test_asarray_sends_the_data_once(pool: Any) -> None:
    data = np.random.default_rng(1).random((4000, 8))
    before = pool.stats
    x = pool.asarray(data)
    assert pool.stats.bytes_staged_in - before.bytes_staged_in == data.nbytes
    assert pool.asarray(x) is x and pool.asarray(x, dtype=np.float32).dtype == np.float32
    assert np.array_equal(x.gather(), data) and x.chunks == (0, 2000, 4000)
    assert pool.stats.bytes_copied_back - before.bytes_copied_back >= data.nbytes
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.submit(total, x)  # it does not travel by value


@pytest.mark.parametrize("axis", [0, 1])
def test_reads_fetch_only_what_they_touch(pool: Any, axis: int) -> None:
    data = np.arange(64 * 32, dtype=np.float64).reshape(64, 32)
    x = _rechunk(pool, pool.asarray(data), 8, axis)
    assert x.axis == axis and len(x.chunks) == data.shape[axis] // 8 + 1
    keys: list[Any] = [
        5, -1, (3, 4), (slice(None), 7), (slice(2, 50, 3), slice(None, None, -2)), (Ellipsis, 9),
        (slice(None, None, -1),), (slice(60, 2, -5), 1), slice(10, 10), (np.int64(2), Ellipsis),
        ([1, 5], slice(None)), data[:, 0] > 100,
    ]  # fmt: skip
    for key in keys:
        assert np.array_equal(x[key], data[key]), key
    before = pool.stats
    row = x[(slice(None), 3) if axis else (3,)]
    assert pool.stats.bytes_copied_back - before.bytes_copied_back == row.nbytes  # one line
    with pytest.raises(IndexError):
        x[(slice(None), 32) if axis else (64,)]


def test_writes_send_only_what_they_touch(pool: Any) -> None:
    data = np.zeros((40, 6))
    x = _rechunk(pool, pool.asarray(data), 7)
    writes: list[tuple[Any, Any]] = [
        ((3, 2), 1.0), (slice(5, 30, 4), np.arange(6.0)), ((slice(None), 1), np.arange(40.0)),
        ((slice(39, 0, -3), slice(0, 2)), np.ones((13, 1)) * 9), (Ellipsis, 0.0), ((slice(1, 3),), 4),
    ]  # fmt: skip
    for key, value in writes:
        before = pool.stats.bytes_staged_in
        x[key] = value
        data[key] = value
        assert np.array_equal(x.gather(), data), key
        # A value that spans the split axis is cut per chunk; one that broadcasts along it
        # goes whole to each chunk it touches: never the chunks themselves.
        assert pool.stats.bytes_staged_in - before <= np.asarray(value, dtype=float).nbytes * 6
    # Index arrays, masks and None are refused before anything is sent, the key named.
    for key in ([1, 2], np.array([0, 3]), data[:, 0] > 0, (None, 1)):
        before = pool.stats.bytes_staged_in
        with pytest.raises(TypeError, match="ints, slices and Ellipsis only"):
            x[key] = 0
        assert pool.stats.bytes_staged_in == before
    with pytest.raises(ValueError):
        x[0:3] = np.ones(4)  # does not broadcast, as in NumPy
    assert np.array_equal(x.gather(), data)


def test_to_dask_shares_the_chunks(pool: Any) -> None:
    data = np.random.default_rng(2).random((1000, 4))
    x = pool.asarray(data)
    d = x.to_dask()
    assert d.shape == data.shape and d.chunks[0] == (500, 500)
    sent = bytes_sent_by_workers(pool.client)
    assert np.isclose(pool.client.compute(d.sum()).result(), data.sum())
    assert bytes_sent_by_workers(pool.client) - sent < 64 * 1024  # partial sums, not chunks


# ---- maps -------------------------------------------------------------------------------------


def test_map_results_equal_shared_pools(pool: Any) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((3000, 5)), rng.random((3000, 5))
    with shmpool.SharedPool(2) as shared:
        sx, sy, sout = shared.asarray(a), shared.asarray(b), shared.zeros_like(a)
        shared.map(kernels.saxpy, sx, sy, sout, a=3.0, chunks=700)
        shared.map(step, sout, sy)
        sums = shared.map(total, sy, chunks=1000)
        expected_out, expected_y = sout.copy(), sy.copy()
    x, y = pool.asarray(a), pool.asarray(b)
    out = pool.zeros_like(x)
    assert pool.map(kernels.saxpy, x, y, out, a=3.0, chunks=700) == [None] * 5
    pool.map(step, out, y)
    assert pool.map(total, y, chunks=1000) == sums
    assert np.array_equal(out.gather(), expected_out) and np.array_equal(y.gather(), expected_y)
    assert out.chunks == (0, 700, 1400, 2100, 2800, 3000)  # the arrays keep the map's chunks
    assert y.chunks == (0, 1000, 2000, 3000)


def test_no_chunk_passes_through_the_client(pool: Any) -> None:
    x = pool.full(4 * MiB // 8, 4.0)  # 4 MiB each, one chunk per worker
    y = pool.empty_like(x)
    pool.map(step, x, y)  # warm: the workers import the kernel's module once
    before, sent = pool.stats, bytes_sent_by_workers(pool.client)
    for _ in range(10):
        pool.map(step, x, y)
        x, y = y, x
    after = pool.stats
    assert after.maps - before.maps == 10 and after.chunks - before.chunks == 20
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    assert moved < 10 * 16 * 1024  # kernel and results only: under 16 KiB per map
    assert bytes_sent_by_workers(pool.client) - sent < 10 * 16 * 1024  # nor between workers
    expected = np.full(4, 4.0)
    for _ in range(10):  # x was written last
        expected = np.sqrt(expected) * 2 + 1
    assert np.array_equal(x[:4], expected) and np.all(np.asarray(x) == expected[0])


def test_other_chunks_are_resplit_on_the_workers(pool: Any) -> None:
    data = np.arange(6000.0).reshape(1000, 6)
    x = _rechunk(pool, pool.asarray(data), 300)
    y = _rechunk(pool, pool.zeros((1000, 6)), 250)  # other boundaries
    before = pool.stats
    pool.map(kernels.saxpy, x, x, y, a=1.0)  # x's chunks win; y is re-split
    assert pool.stats.bytes_staged_in - before.bytes_staged_in < 64 * 1024
    assert y.chunks == x.chunks and np.array_equal(y.gather(), 2 * data)
    assert pool.map(kernels.chunk_length, y, axis=1, chunks=2, along=1) == [2, 2, 2]
    assert y.axis == 1 and y.chunks == (0, 2, 4, 6) and np.array_equal(np.asarray(y), 2 * data)


# ---- halo maps: only the margins move -------------------------------------------------------


@pytest.mark.parametrize("boundary", ["none", "reflect", "periodic", "nearest", 0.5])
def test_halo_stencils_equal_shared_pools(pool: Any, boundary: Any) -> None:
    rng = np.random.default_rng(5)
    # Uneven chunks, some shorter than the depth: a margin spans several neighbours.
    cases = [(rng.random(50), [7, 3, 12, 1, 27], 5), (rng.random((30, 6)), [2, 9, 1, 18], 4)]
    expected = []
    with shmpool.SharedPool(2) as shared:
        for data, chunks, depth in cases:
            u, v = shared.asarray(data), shared.zeros_like(data)
            for _ in range(3):
                shared.map(
                    kernels_halo.diffuse_wide, shmpool.halo(u, depth, boundary), v, chunks=chunks, depth=depth
                )
                u, v = v, u
            expected.append(np.array(u))
    for (data, chunks, depth), wanted in zip(cases, expected, strict=True):
        u = _rechunk(pool, pool.asarray(data), chunks)
        v = pool.zeros_like(u)  # u's chunks, on u's workers: each map runs where they are
        for _ in range(3):
            pool.map(kernels_halo.diffuse_wide, shmpool.halo(u, depth, boundary), v, depth=depth)
            u, v = v, u
        assert u.chunks == v.chunks == (0, *np.cumsum(chunks))
        np.testing.assert_array_equal(u.gather(), wanted)  # bit for bit


def ramp(u: np.ndarray) -> None:
    """Fills a chunk with values that differ from row to row and column to column."""
    info = shmpool.chunk_info()
    assert info is not None
    u[...] = np.sin(np.arange(info.start, info.stop))[:, None] + np.cos(np.arange(u.shape[1]))


def test_a_halo_map_moves_only_the_margins(pool: Any) -> None:
    u = pool.empty((1024, 2048))  # 16 MiB, one chunk per worker
    pool.map(ramp, u)
    start = u.gather()
    v = pool.empty_like(u)
    before, sent = pool.stats, bytes_sent_by_workers(pool.client)
    for _ in range(4):  # periodic: each chunk needs a row from each end of the other
        pool.map(kernels_halo.diffuse_wide, shmpool.halo(u, 1, "periodic"), v, depth=1)
        u, v = v, u
    after = pool.stats
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    assert after.maps - before.maps == 4 and moved < 4 * 16 * 1024  # tasks only: no chunk, no margin
    row = 2048 * 8
    # Between the workers: 4 margin rows a map (16 KiB each), not the 8 MiB chunks.
    assert bytes_sent_by_workers(pool.client) - sent < 4 * (4 * row + 64 * 1024)
    assert u.chunks == (0, 512, 1024)  # the halo array kept its chunks, and where they are
    with shmpool.ThreadPool(2) as threads:
        x, y = start, np.empty_like(start)
        for _ in range(4):
            threads.map(kernels_halo.diffuse_wide, shmpool.halo(x, 1, "periodic"), y, chunks=512, depth=1)
            x, y = y, x
    np.testing.assert_array_equal(u.gather(), x)


def test_a_halo_array_chunked_otherwise_keeps_its_chunks(pool: Any) -> None:
    data = np.arange(120.0).reshape(20, 6)
    x = _rechunk(pool, pool.asarray(data), 3, axis=1)  # split along the other axis
    out = pool.zeros((20, 6))
    weights = np.array([1.0, 10.0, 100.0])
    pool.map(kernels_halo.convolve, shmpool.halo(x, 1, "reflect"), out, chunks=[4, 9, 7],
             weights=weights, before=1, after=1, along=0)  # fmt: skip
    padded = np.pad(data, ((1, 1), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(out.gather(), kernels_halo.convolve_serial(padded, weights, 20, 0))
    assert x.axis == 1 and x.chunks == (0, 3, 6) and out.chunks == (0, 4, 13, 20)


def test_map_errors_and_checks(pool: Any) -> None:
    x = _rechunk(pool, pool.asarray(np.arange(50.0)), 5)
    with pytest.raises(KeyError) as info:
        pool.map(kernels.fail_on, x, bad=17)
    assert "chunk 3" in str(info.value.__cause__) or "chunk 3" in str(info.value)
    with pytest.raises(TypeError, match=r"not a cluster array \(ndarray\), while other arguments are"):
        pool.map(kernels.saxpy, x, np.zeros(50), x, a=1.0)  # one map does not mix them
    with pytest.raises(ValueError, match="same length"):
        pool.map(kernels.saxpy, x, pool.zeros(3), x, a=1.0)
    with pytest.raises(ValueError, match="read-only"):
        pool.map(kernels.saxpy, x, x, shmpool.whole(np.zeros(5)), a=1.0)
    with pytest.raises(TimeoutError):
        pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.3, timeout=0.5)
    assert pool.map(kernels.chunk_length, x, chunks=25) == [25, 25]


def lookup(i: np.ndarray, table: np.ndarray, out: np.ndarray) -> bool:
    out[:] = table[i]
    return bool(table.flags.writeable)


def test_a_whole_cluster_array_is_joined_on_the_workers(pool: Any) -> None:
    table = pool.asarray(np.arange(200_000.0) * 2)  # 1.6 MB: scattered, two chunks
    idx = pool.asarray(np.array([5, 199_999, 100_000, 0]))
    out = pool.zeros(4)
    before, sent = pool.stats, bytes_sent_by_workers(pool.client)
    writable = pool.map(lookup, idx, shmpool.whole(table), out)
    after = pool.stats
    assert writable == [False, False]  # read-only, as every whole() argument of a cluster map
    assert np.asarray(out).tolist() == [10.0, 399_998.0, 200_000.0, 0.0]
    moved = (after.bytes_staged_in - before.bytes_staged_in) + (
        after.bytes_copied_back - before.bytes_copied_back
    )
    assert moved < 16 * 1024  # the table went worker to worker, not through the client
    # Each worker fetched the half it lacked from the other, once.
    assert bytes_sent_by_workers(pool.client) - sent < table.nbytes + 64 * 1024
    nothing = pool.zeros((0, 3))  # a zero-length array has no chunks, and is joined all the same
    assert pool.map(lambda i, t: t.shape, idx, shmpool.whole(nothing), chunks=4) == [(0, 3)]


def test_map_async_over_cluster_arrays_and_its_cancel(pool: Any) -> None:
    x = pool.asarray(np.arange(40.0))
    future = pool.map_async(kernels.first_index, x, chunks=10)
    assert future.result(timeout=30) == [0.0, 10.0, 20.0, 30.0] and x.chunks == (0, 10, 20, 30, 40)
    slow = pool.map_async(kernels.sleep_chunk, x, chunks=1, seconds=0.1)
    time.sleep(0.3)
    assert slow.cancel() and slow.cancelled()
    with pytest.raises(CancelledError):
        slow.result(timeout=5)
    # As on every pool, a chunk already running when cancel() returns still finishes (here
    # its map then hands the array its chunks): the values are the same either way.
    assert np.array_equal(np.asarray(x), np.arange(40.0))
    assert pool.map(kernels.chunk_length, x, chunks=20) == [20, 20]


# ---- lifetime ---------------------------------------------------------------------------------


def test_free_del_and_close_leave_nothing(dask_client: Any) -> None:
    with DaskPool(dask_client) as pool:
        x = pool.zeros(1000)
        y = pool.asarray(np.ones(1000))
        pool.map(step, y, x)
        assert _shmpool_keys(dask_client)
        pool.free(x)
        with pytest.raises(ValueError, match="was freed"):
            x[0]
        with pytest.raises(ValueError, match="not freed yet"):
            pool.free(x)
        del y
        _wait_until_no_keys(dask_client)
        z = pool.full(100, 3.0)
        pool.map(step, z, z)
    _wait_until_no_keys(dask_client)
    with pytest.raises(ValueError, match="pool was closed"):
        z.gather()
    with pytest.raises(shmpool.PoolClosedError):
        pool.zeros(3)


def test_a_lost_worker_gives_a_clear_error_unless_dask_can_recompute(
    pool: Any,
    dask_client: Any,
) -> None:
    n = 300_000  # two chunks of 1.2 MB: over the 1 MiB that travels inside a task
    half, wide = n // 2, f"(indices {n // 2}:{n})"
    x = pool.asarray(np.arange(float(n)))  # scattered, chunk by chunk
    small = pool.asarray(np.arange(1000.0))  # inside the chunks' tasks: Dask can recompute
    y = pool.full_like(x, 4.0)
    pool.map(step, y, y)  # written by a map
    z = pool.full_like(x, 3.0)  # only made and filled: its tasks carry all
    x.name, y.name, z.name = "field", "written", "as-made"
    # A map returns once its written chunks are root keys in place, so their homes are
    # exact and each is on one worker: Dask copies a chunk only when a task elsewhere needs
    # it, and none did.
    assert all(len(h) == 1 for h in y.homes)
    holder = y.homes[1][0]
    x_lost, y0_lost = ({holder} == set(a.homes[i]) for a, i in ((x, 1), (y, 0)))
    os.kill(dask_client.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
    deadline = time.monotonic() + 30
    # The written chunk 1 had no other copy and no lineage (the run that wrote it was
    # released when the map returned): its read raises the documented error, every time.
    # (Before, a kill within milliseconds of the map's return found the run's key still
    # held, and Dask re-ran the kernel elsewhere: right values or the error, by timing.)
    with pytest.raises(shmpool.WorkerCrashedError) as lost:
        y[half:]
    assert f"'written' lost chunk(s) 1 {wide}" in str(lost.value) and lost.value.chunk == 1
    if x_lost:  # scattered from the client: Dask cannot recompute it
        with pytest.raises(shmpool.WorkerCrashedError) as info:
            while time.monotonic() < deadline:  # the client hears of the loss a moment later
                pool.map(total, x)
                time.sleep(0.2)
        assert "'field'" in str(info.value) and f"chunk(s) 1 {wide}" in str(info.value)
        assert info.value.chunk == 1
    else:
        assert sum(pool.map(total, x)) == n * (n - 1) / 2  # on the other worker
    if not y0_lost:
        assert np.all(y[:half] == 5.0)  # chunk 0 lives on the other worker: still there
    assert np.array_equal(z.gather(), np.full(n, 3.0))  # recomputed by Dask
    assert np.array_equal(small.gather(), np.arange(1000.0))  # recomputed from its tasks
    dask_client.wait_for_workers(2, timeout=60)


def test_a_lost_worker_fails_a_halo_map_that_needs_its_chunk(pool: Any, dask_client: Any) -> None:
    n = 300_000  # two chunks of 1.2 MB, each on one worker
    u = pool.full(n, 4.0)
    pool.map(step, u, u)  # written by a map: no other copy, no lineage
    v = pool.zeros_like(u)
    u.name = "field"
    holder = u.homes[1][0]
    os.kill(dask_client.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
    deadline = time.monotonic() + 30
    # Chunk 0's view needs chunk 1's first row as its margin, and chunk 1 is gone: the map
    # fails with the documented error naming the halo's array, whichever chunk asks first.
    with pytest.raises(shmpool.WorkerCrashedError) as lost:
        while time.monotonic() < deadline:  # the client hears of the loss a moment later
            pool.map(kernels_halo.diffuse_wide, shmpool.halo(u, 1, "periodic"), v, depth=1)
            time.sleep(0.2)
    assert "'field'" in str(lost.value) and "chunk(s) 1 " in str(lost.value), str(lost.value)
    dask_client.wait_for_workers(2, timeout=60)


def test_an_iterative_job_does_not_grow_the_scheduler(pool: Any, local_cluster: Any) -> None:
    x = pool.full(1000, 4.0)
    y = pool.empty_like(x)
    counts = []
    for _ in range(3):
        for _ in range(20):
            pool.map(step, x, y)
            x, y = y, x
        time.sleep(0.3)  # the scheduler forgets released keys asynchronously
        counts.append(sum(1 for key in local_cluster.scheduler.tasks if "shmpool" in str(key)))
    assert counts[0] == counts[1] == counts[2] < 20, counts  # a map's tasks go when it is done


def test_terminate_stops_a_cluster_map_and_close_waits_for_one(dask_client: Any) -> None:
    pool = DaskPool(dask_client)
    x = _rechunk(pool, pool.zeros(20), 1)
    errors: list[BaseException] = []
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(pool.map(kernels.sleep_chunk, x, seconds=0.2))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    pool.terminate()
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], shmpool.PoolClosedError), errors
    assert x.freed
    _wait_until_no_keys(dask_client)

    pool = DaskPool(dask_client)
    y = _rechunk(pool, pool.zeros(6), 1)
    thread = threading.Thread(target=lambda: results.append(pool.map(kernels.sleep_chunk, y, seconds=0.1)))
    thread.start()
    time.sleep(0.2)
    pool.close()  # waits for the map, then releases the chunks
    thread.join(30)
    assert results == [[None] * 6]
    _wait_until_no_keys(dask_client)


def test_progress_bar(pool: Any, capsys: pytest.CaptureFixture[str]) -> None:
    x = _rechunk(pool, pool.zeros(8), 2)
    pool.map(kernels.chunk_length, x, progress={"desc": "on-cluster"})
    err = capsys.readouterr().err
    assert "on-cluster" in err and "8/8" in err  # indices, not chunks
