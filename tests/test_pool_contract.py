"""The behaviour every pool shares, run against SharedPool, ThreadPool and DaskPool alike.

Code written for one pool must run unchanged on the others: each test here takes
``any_pool`` (a pool shared by the module's tests) or ``fresh_pool`` (a new one, for tests
that enter or close it), once per pool type. What only one pool type has (shared memory by
reference, lost Dask workers, bytes on the network) is tested in that pool's own modules.

A DaskPool's own arrays are cluster arrays (their chunks live on the workers), so its maps
over them run on the cluster: values are compared through ``np.asarray`` (which is the
array itself for the other pools), and where a cluster array documents other behaviour
(views, automatic chunks, writes to whole() arrays, use after close) the test says which.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np
import pytest

import shmpool
from shmpool.errors import RemoteTraceback

from . import kernels
from .any_pools import (  # noqa: F401 - fixtures used by name
    POOL_TYPES,
    DaskPool,
    any_pool,
    dask_client,
    dask_cluster_processes_are_not_leaks,
    fresh_pool,
    local_cluster,
)
from .kernels_decorated import column_sums, saxpy, twice_saxpy

pytestmark = pytest.mark.timeout(60)


def _arrays_on_cluster(pool: shmpool.Pool) -> bool:
    """Whether the pool's own arrays are cluster arrays (a DaskPool's)."""
    return type(pool).__name__ == "DaskPool"


def local(a: Any) -> np.ndarray:
    """A pool array's values here: the array itself for SharedPool and ThreadPool (no copy),
    a cluster array's values gathered for DaskPool."""
    return np.asarray(a)


# ---- the API itself ---------------------------------------------------------------------------


def test_every_pool_is_the_one_front_end(any_pool: shmpool.Pool) -> None:
    assert isinstance(any_pool, shmpool.Pool)
    assert any_pool.workers == 2 and not any_pool.closed
    assert isinstance(any_pool.stats, shmpool.PoolStats)
    # Each public method is the front end's own, not a copy in the pool class.
    names = ("map", "map_async", "submit", "imap", "empty", "zeros", "full", "empty_like", "zeros_like")
    for name in (*names, "full_like", "asarray", "is_shared", "free", "close", "terminate"):
        assert getattr(type(any_pool), name) is getattr(shmpool.Pool, name), name
    assert type(any_pool).__name__ in repr(any_pool) and "running" in repr(any_pool)


# ---- allocation -------------------------------------------------------------------------------


def test_allocation(any_pool: shmpool.Pool) -> None:
    e = any_pool.empty((3, 4), dtype=np.int32)
    kind = shmpool.ClusterArray if _arrays_on_cluster(any_pool) else np.ndarray
    assert e.shape == (3, 4) and e.dtype == np.int32 and isinstance(e, kind)
    assert (local(any_pool.zeros(5)) == 0).all() and any_pool.zeros(5).dtype == np.float64
    f = any_pool.full((2, 2), 7)
    assert f.dtype == np.asarray(7).dtype and (local(f) == 7).all()
    assert any_pool.full(3, 1.5, dtype=np.float32).dtype == np.float32
    fortran = np.zeros((4, 3), order="F")
    like = any_pool.empty_like(fortran)
    assert like.shape == (4, 3)
    if not _arrays_on_cluster(any_pool):  # a cluster array has no memory order here
        assert like.flags.f_contiguous and not like.flags.c_contiguous
    zl = any_pool.zeros_like(fortran, dtype=np.int8)
    assert zl.dtype == np.int8 and (local(zl) == 0).all()
    fl = any_pool.full_like(zl, 3)
    assert fl.dtype == np.int8 and fl.shape == (4, 3) and (local(fl) == 3).all()
    assert any_pool.empty(()).shape == () and any_pool.zeros((0, 3)).shape == (0, 3)
    assert any_pool.zeros(4, order="F").shape == (4,)


def test_is_shared_asarray_and_free(any_pool: shmpool.Pool) -> None:
    a = any_pool.zeros(10)
    assert any_pool.is_shared(a)
    if not _arrays_on_cluster(any_pool):  # a cluster array's a[2:5] is a NumPy copy, not a view
        assert any_pool.is_shared(a[2:5]) and any_pool.is_shared(a.reshape(2, 5))
    assert not any_pool.is_shared(np.zeros(10)) and not any_pool.is_shared([1, 2])
    assert any_pool.asarray(a) is a
    other = any_pool.asarray(a, dtype=np.float32)
    assert other is not a and other.dtype == np.float32 and any_pool.is_shared(other)
    data = np.arange(6.0)
    copy = any_pool.asarray(data)
    assert copy is not data and np.array_equal(copy, data) and any_pool.is_shared(copy)
    copy[0] = 42
    assert data[0] == 0  # a copy, not a view
    assert local(any_pool.asarray([1, 2, 3])).tolist() == [1, 2, 3]
    view = a[1:3]
    any_pool.free(a)
    assert not any_pool.is_shared(a) and not any_pool.is_shared(view)
    if _arrays_on_cluster(any_pool):  # its chunks are gone from the cluster
        with pytest.raises(ValueError, match="was freed"):
            a[1:3]
    else:
        view[:] = 5  # still valid memory
        assert a[1:3].tolist() == [5.0, 5.0]
    with pytest.raises(ValueError, match="not freed yet"):
        any_pool.free(a)
    with pytest.raises(ValueError, match="allocated by this pool"):
        any_pool.free(np.zeros(3))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.empty(3, dtype=object), TypeError, "Python objects"),
        (lambda p: p.zeros(2, dtype=[("a", "O")]), TypeError, "Python objects"),
        (lambda p: p.asarray(np.array([object()])), TypeError, "Python objects"),
        (lambda p: p.empty(3, order="K"), ValueError, "order"),
        (lambda p: p.zeros((2, -1)), ValueError, "negative"),
        (lambda p: p.empty("abc"), TypeError, "shape"),
    ],
)
def test_bad_allocations(
    any_pool: shmpool.Pool, call: Callable[[shmpool.Pool], Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        call(any_pool)


# ---- map --------------------------------------------------------------------------------------


def test_map_in_place_matches_serial(any_pool: shmpool.Pool) -> None:
    x = any_pool.asarray(np.random.default_rng(0).random((1000, 7)))
    y = any_pool.asarray(np.random.default_rng(1).random((1000, 7)))
    out = any_pool.empty_like(x)
    result = any_pool.map(kernels.saxpy, x, y, out, a=3.0)
    assert np.array_equal(out, 3.0 * local(x) + local(y))
    # Automatic chunks: 4 per worker; over cluster arrays, where x's chunks are (1 per worker).
    assert result == [None] * len(result) and len(result) >= (1 if _arrays_on_cluster(any_pool) else 2) * 2


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_axes(any_pool: shmpool.Pool, axis: int) -> None:
    data = np.random.default_rng(2).random((6, 5, 4))
    x = any_pool.asarray(data)
    any_pool.map(kernels.double_in_place, x, axis=axis)
    assert np.array_equal(x, data * 2)
    sizes = any_pool.map(kernels.chunk_length, x, axis=axis, chunks=2, along=axis)
    assert sum(sizes) == data.shape[axis] and sizes[0] == 2


def test_chunk_options(any_pool: shmpool.Pool) -> None:
    x = any_pool.asarray(np.arange(10.0))
    assert any_pool.map(kernels.chunk_length, x, chunks=3) == [3, 3, 3, 1]
    assert any_pool.map(kernels.chunk_length, x, chunks=[1, 2, 7]) == [1, 2, 7]
    assert any_pool.map(kernels.chunk_length, x, chunks=np.array([5, 5])) == [5, 5]
    assert any_pool.map(kernels.chunk_length, x, chunks=100) == [10]
    if _arrays_on_cluster(any_pool):  # automatic: x's chunks, which the last map left as one
        assert any_pool.map(kernels.chunk_length, x) == [10]
    else:
        assert any_pool.map(kernels.chunk_length, x) == [2] * 5  # automatic: 4 per worker
    assert any_pool.map(kernels.chunk_length, np.zeros(800)) == [100] * 8


def test_results_in_chunk_order_and_reduction(any_pool: shmpool.Pool) -> None:
    x = any_pool.asarray(np.arange(1000))
    assert any_pool.map(kernels.first_index, x, chunks=7) == list(range(0, 1000, 7))
    y = any_pool.asarray(np.random.default_rng(3).random(100_000))
    assert sum(any_pool.map(np.sum, y)) == pytest.approx(np.sum(y))


def test_whole_arguments_and_kwargs(any_pool: shmpool.Pool) -> None:
    table = any_pool.asarray(np.arange(10) * 100)
    idx = any_pool.asarray(np.array([3, 1, 4, 1, 5, 9, 2, 6]))
    out = any_pool.zeros(8, dtype=table.dtype)

    def lookup(i: np.ndarray, t: np.ndarray, o: np.ndarray, scale: int, *, offset: int) -> None:
        o[:] = t[i] * scale + offset

    any_pool.map(lookup, idx, shmpool.whole(table), out, shmpool.whole(2), offset=1)
    assert local(out).tolist() == [601, 201, 801, 201, 1001, 1801, 401, 1201]
    x, y, res = any_pool.zeros(8), any_pool.zeros(8), any_pool.zeros(8)
    for a in (1.0, 2.0, 3.0):
        x[:] = a
        any_pool.map(kernels.saxpy, x, y, res, a=a)
        assert (local(res) == a * a).all()


@pytest.mark.parametrize("allocate", ["pool", "plain"])
def test_whole_array_written_by_chunks(any_pool: shmpool.Pool, allocate: str) -> None:
    marks = any_pool.zeros(6, dtype=np.int64) if allocate == "pool" else np.zeros(6, dtype=np.int64)
    x = any_pool.asarray(np.arange(6))

    def mark(chunk: np.ndarray, m: np.ndarray) -> None:
        m[chunk] = chunk + 10

    if _arrays_on_cluster(any_pool):
        # Over cluster arrays whole() arrays are read-only: a write would stay on one worker.
        with pytest.raises(ValueError, match="read-only"):
            any_pool.map(mark, x, shmpool.whole(marks), chunks=1)
        assert local(marks).tolist() == [0] * 6
        if allocate == "pool":
            return
        x = np.arange(6)  # over NumPy arrays of this process, each chunk's writes come back
    any_pool.map(mark, x, shmpool.whole(marks), chunks=1)
    assert marks.tolist() == [10, 11, 12, 13, 14, 15]


def test_plain_arrays_are_written_back(any_pool: shmpool.Pool) -> None:
    x = np.arange(20.0)
    any_pool.map(kernels.double_in_place, x)
    assert x.tolist() == [2.0 * i for i in range(20)]
    ones = np.ones(10)

    def add(a: np.ndarray, b: np.ndarray) -> None:
        a += b

    any_pool.map(add, ones, ones)  # the same array twice is one array in the kernel
    assert ones.tolist() == [2.0] * 10


def test_read_only_array_is_read_only_and_never_copied_back(any_pool: shmpool.Pool) -> None:
    src = np.arange(10.0)
    src.flags.writeable = False
    out = np.zeros(10)
    before = any_pool.stats

    def copy(s: np.ndarray, o: np.ndarray) -> None:
        assert not s.flags.writeable
        o[:] = s + 1

    any_pool.map(copy, src, out)
    assert out.tolist() == [i + 1.0 for i in range(10)]
    # out's bytes only; a ThreadPool works on the arrays themselves and copies nothing.
    copied = 0 if isinstance(any_pool, shmpool.ThreadPool) else out.nbytes
    assert any_pool.stats.bytes_copied_back - before.bytes_copied_back == copied
    assert any_pool.stats.maps == before.maps + 1

    def write(s: np.ndarray) -> None:
        s[:] = 0

    with pytest.raises(ValueError, match="read-only"):
        any_pool.map(write, src)
    assert src.tolist() == list(np.arange(10.0))


def test_chunks_done_before_an_error_are_kept(any_pool: shmpool.Pool) -> None:
    def _double_then_fail(x: np.ndarray, *, bad: float) -> None:
        x *= 2
        if bad * 2 in x:
            raise KeyError(f"found {bad}")

    x = np.arange(1.0, 41.0)
    with pytest.raises(KeyError):
        any_pool.map(_double_then_fail, x, chunks=4, bad=21.0)
    chunks = x.reshape(10, 4) / np.arange(1.0, 41.0).reshape(10, 4)
    assert (chunks[5] == 2).all()  # what the failing chunk wrote stays, as in shared memory
    assert all((c == 1).all() or (c == 2).all() for c in chunks)


def test_kernel_exception_keeps_its_type_and_names_the_chunk(any_pool: shmpool.Pool) -> None:
    x = any_pool.asarray(np.arange(100))
    with pytest.raises(KeyError) as info:
        any_pool.map(kernels.fail_on, x, chunks=10, bad=42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause) and "found 42" in str(cause)
    assert "chunk 4 (indices 40:50" in str(cause)
    assert sum(any_pool.map(np.sum, x)) == np.sum(x)  # still usable


def _pickles(pool: shmpool.Pool) -> bool:
    """Whether the pool pickles what it sends (every pool but the ThreadPool)."""
    return not isinstance(pool, shmpool.ThreadPool)


def test_exceptions_that_cannot_travel(any_pool: shmpool.Pool) -> None:
    if not _pickles(any_pool):
        # Nothing travels: every exception and return value arrives as itself.
        with pytest.raises(kernels.Unpicklable, match="a=1 b=2") as raised:
            any_pool.map(kernels.raise_unpicklable, np.zeros(4), chunks=2)
        assert "chunk 0" in str(raised.value.__cause__)
        with pytest.raises(kernels.OddInit):
            any_pool.map(kernels.raise_odd, np.zeros(4))
        generators = any_pool.map(kernels.return_generator, np.zeros(4), chunks=4)
        assert [list(g) for g in generators] == [[0, 1, 2]]
        return
    with pytest.raises(shmpool.KernelError) as info:
        any_pool.map(kernels.raise_unpicklable, np.zeros(4), chunks=2)
    assert info.value.type_name == "tests.kernels.Unpicklable" and info.value.message == "a=1 b=2"
    assert "raise_unpicklable" in info.value.remote_traceback
    with pytest.raises(shmpool.KernelError, match="odd 3 4"):
        any_pool.map(kernels.raise_odd, np.zeros(4))
    with pytest.raises(TypeError, match="chunk 0"):
        any_pool.map(kernels.return_generator, np.zeros(4), chunks=4)
    assert any_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros(3), np.zeros(4)), {}, ValueError, r"\(3,\).*\(4,\)"),
        ((np.zeros(3),), {"axis": 1}, ValueError, "out of bounds"),
        ((np.ones(()),), {}, ValueError, "0-d"),
        (([1, 2, 3],), {}, TypeError, "not a NumPy array"),
        ((), {}, ValueError, "at least one"),
        ((np.zeros(3),), {"chunks": 0}, ValueError, "positive"),
        ((np.zeros(3),), {"chunks": [1, 1]}, ValueError, "sum to 2"),
        ((np.array([object(), 1], dtype=object),), {}, TypeError, "Python objects"),
        ((np.zeros(3),), {"progress": "yes"}, TypeError, "progress"),
        ((np.zeros(3),), {"timeout": 0}, ValueError, "timeout"),
        ((np.zeros(3),), {"lock": threading.Lock()}, TypeError, "cannot be pickled"),
        ((np.zeros(3),), {"timeout": float("inf")}, ValueError, "finite"),
        ((np.zeros(3),), {"timeout": True}, TypeError, "timeout"),
        ((np.zeros(3),), {"progress": {"no_such_tqdm_option": 1}}, TypeError, "no_such_tqdm_option"),
        ((np.ma.masked_array([1.0, 2.0], mask=[0, 1]),), {}, TypeError, "masked"),
        ((np.matrix([[1.0, 2.0]]),), {}, TypeError, "subclass"),
        ((shmpool.whole(np.array([None])), np.zeros(3)), {}, TypeError, "Python objects"),
        ((shmpool.whole(np.zeros(2, dtype=[("a", "f8"), ("b", "O")])), np.zeros(3)), {}, TypeError, "Python"),
    ],
)
def test_bad_input_rejected_before_any_worker_runs(
    any_pool: shmpool.Pool, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
) -> None:
    before = any_pool.stats

    def kernel(*a: Any, **k: Any) -> None:
        pass

    if match == "cannot be pickled" and not _pickles(any_pool):
        any_pool.map(kernel, *args, **kwargs)  # a ThreadPool pickles nothing: it just runs
        return
    with pytest.raises(error, match=match):
        any_pool.map(kernel, *args, **kwargs)
    assert any_pool.stats == before  # nothing ran, nothing moved


def test_bad_kernel(any_pool: shmpool.Pool) -> None:
    with pytest.raises(TypeError, match="callable"):
        any_pool.map(42, np.zeros(3))  # type: ignore[arg-type]
    lock = threading.Lock()
    if _pickles(any_pool):
        with pytest.raises(TypeError, match="cannot be pickled"):
            any_pool.map(lambda x: lock, np.zeros(3))
    else:
        assert any_pool.map(lambda x: lock, np.zeros(3), chunks=3) == [lock]


def test_unpicklable_arguments_on_threads() -> None:
    # Threads call the kernel directly: locks, open files and closures over them just work.
    lock = threading.Lock()
    with shmpool.ThreadPool(2) as pool:
        assert pool.map(lambda x, *, guard: guard is lock, np.zeros(4), chunks=2, guard=lock) == [True, True]
        assert pool.submit(lambda g: g is lock, lock).result(timeout=30)
        assert list(pool.imap(lambda g: g is lock, [lock, lock])) == [True, True]


def test_zero_length_and_closures(any_pool: shmpool.Pool) -> None:
    assert any_pool.map(kernels.double_in_place, any_pool.empty((0, 3))) == []
    assert any_pool.map(kernels.double_in_place, np.empty((4, 0)), axis=1) == []
    x = any_pool.asarray(np.arange(6.0))
    offset = 10.0
    any_pool.map(lambda v: v.__iadd__(offset), x)
    assert local(x).tolist() == [10, 11, 12, 13, 14, 15]


def test_progress_bar(any_pool: shmpool.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    x = any_pool.asarray(np.arange(10.0))
    any_pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.02, progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "index" in err  # the bar counts indices along the axis
    any_pool.map(kernels.sleep_chunk, x, chunks=5, seconds=0.0, progress={"desc": "smoothing"})
    err = capsys.readouterr().err
    assert "smoothing" in err and "10/10" in err and "2/2" not in err  # 2 chunks of 5 indices
    any_pool.map(kernels.sleep_chunk, x, chunks=5, seconds=0.0)
    assert capsys.readouterr().err == ""


# ---- map_async, submit, imap ----------------------------------------------------------------


def test_map_async(any_pool: shmpool.Pool) -> None:
    x = any_pool.asarray(np.arange(1000.0))
    futures = [any_pool.map_async(kernels.first_index, x, chunks=c) for c in (10, 100, 250)]
    assert all(isinstance(f, Future) for f in futures)
    assert [f.result(timeout=30) for f in futures] == [
        list(range(0, 1000, 10)),
        list(range(0, 1000, 100)),
        [0, 250, 500, 750],
    ]
    with pytest.raises(ValueError, match="same length"):
        any_pool.map_async(kernels.saxpy, x, any_pool.asarray(np.arange(5.0)), x, a=1.0)
    with pytest.raises(KeyError):
        any_pool.map_async(kernels.fail_on, x, chunks=10, bad=3).result(timeout=30)
    y = np.zeros(4)
    any_pool.map_async(kernels.double_in_place, y + 1, chunks=2).result(timeout=30)
    any_pool.map_async(lambda v: v.__iadd__(1), y, chunks=2).result(timeout=30)
    assert y.tolist() == [1.0] * 4  # written back before the future resolves


def test_map_async_cancel(any_pool: shmpool.Pool) -> None:
    future = any_pool.map_async(kernels.sleep_chunk, np.zeros(100), chunks=1, seconds=0.05)
    time.sleep(0.3)
    assert future.cancel() and future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=5)
    start = time.monotonic()
    # The rest of the cancelled map does not hold the workers (100 chunks would be 2.5 s).
    assert any_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]
    assert time.monotonic() - start < 2.0


def test_submit(any_pool: shmpool.Pool) -> None:
    future = any_pool.submit(kernels.add, 2, 3, scale=10)
    assert isinstance(future, Future) and future.result(timeout=30) == 50
    assert any_pool.submit(lambda: 42).result(timeout=30) == 42
    with pytest.raises(ValueError, match="five") as info:
        any_pool.submit(kernels.fail_at_five, 5).result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    with pytest.raises(TypeError, match="callable"):
        any_pool.submit(3)  # type: ignore[arg-type]
    if _pickles(any_pool):
        with pytest.raises(TypeError, match="cannot be pickled"):
            any_pool.submit(kernels.add, threading.Lock(), 1)
    slow = any_pool.submit(kernels.sleep_chunk, None, seconds=0.3)
    assert slow.cancel() and slow.cancelled()
    with pytest.raises(CancelledError):
        slow.result(timeout=5)
    assert any_pool.submit(kernels.square, 4).result(timeout=30) == 16


def test_imap_ordered_and_unordered(any_pool: shmpool.Pool) -> None:
    assert list(any_pool.imap(kernels.square, range(50))) == [i * i for i in range(50)]
    assert list(any_pool.imap(kernels.square, range(50), chunksize=7)) == [i * i for i in range(50)]
    assert list(any_pool.imap(kernels.square, range(3000), chunksize="auto")) == [i * i for i in range(3000)]
    unordered = list(any_pool.imap(kernels.slow_square, range(40), ordered=False, chunksize=3))
    assert sorted(unordered) == [i * i for i in range(40)]
    assert list(any_pool.imap(kernels.square, [])) == []
    assert list(any_pool.imap(lambda s: s.upper(), iter(["a", "b"]))) == ["A", "B"]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True, "2"])
def test_imap_bad_chunksize(any_pool: shmpool.Pool, chunksize: object) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        any_pool.imap(kernels.square, range(3), chunksize=chunksize)  # type: ignore[arg-type]


def test_imap_error_at_its_position(any_pool: shmpool.Pool) -> None:
    seen = []
    with pytest.raises(ValueError, match="five") as info:
        for value in any_pool.imap(kernels.fail_at_five, range(1000)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert "item 5" in str(info.value.__cause__)
    assert list(any_pool.imap(kernels.square, range(3))) == [0, 1, 4]


def test_imap_is_lazy(any_pool: shmpool.Pool) -> None:
    pulled = itertools.count()

    def source() -> Iterator[int]:
        for i in itertools.count():
            next(pulled)
            yield i

    results = any_pool.imap(kernels.square, source(), chunksize=10)
    assert next(pulled) == 0  # nothing consumed before iteration starts
    assert list(itertools.islice(results, 25)) == [i * i for i in range(25)]
    results.close()  # type: ignore[attr-defined]
    assert next(pulled) < 25 + 4 * any_pool.workers * 10 + 10  # bounded look-ahead


def test_imap_progress(any_pool: shmpool.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    list(any_pool.imap(kernels.square, range(30), progress=True))
    err = capsys.readouterr().err
    assert "30/30" in err and "item" in err


# ---- @shmpool.kernel and the lifecycle --------------------------------------------------------


def test_decorated_kernels_run_on_the_entered_pool(fresh_pool: shmpool.Pool) -> None:
    with fresh_pool as pool:
        assert shmpool.active_pool() is pool
        x = pool.asarray(np.arange(100.0))
        y = pool.full(100, 1.0)
        out = pool.empty_like(x)
        before = pool.stats.maps
        result = saxpy(x, y, out, a=3.0)
        assert result == [None] * len(result) and len(result) > 1
        assert np.array_equal(out, 3.0 * local(x) + 1.0)
        assert pool.stats.maps == before + 1
        data = pool.asarray(np.arange(12.0).reshape(3, 4))
        sums = column_sums(data)
        assert len(sums) == 2 and np.array_equal(np.concatenate(sums), local(data).sum(axis=0))
        assert len(column_sums(data, axis=0, chunks=1)) == 3
        # A kernel that calls a kernel: in a worker, the inner one runs in place.
        inner_out = pool.zeros(10)
        assert sum(twice_saxpy(pool.asarray(np.arange(10.0)), pool.zeros(10), inner_out, chunks=5)) == 10
        assert np.array_equal(inner_out, 2.0 * np.arange(10.0))
        future = saxpy.map_async(x, x, out, a=5.0)
        assert isinstance(future.result(timeout=30), list) and np.array_equal(out, 6.0 * local(x))
    assert pool.closed and shmpool.active_pool() is not pool
    shmpool.default_pool().close()


def test_exception_in_with_block_terminates(fresh_pool: shmpool.Pool) -> None:
    with pytest.raises(RuntimeError, match="boom"), fresh_pool as pool:
        raise RuntimeError("boom")
    assert pool.closed


def test_closed_pool(fresh_pool: shmpool.Pool) -> None:
    pool = fresh_pool
    x = pool.zeros(10)
    pool.close()
    pool.close()
    pool.terminate()
    assert pool.closed
    if _arrays_on_cluster(pool):  # a cluster array's chunks went with the pool
        with pytest.raises(ValueError, match="pool was closed"):
            x[:] = 1
    else:
        x[:] = 1  # arrays stay valid
    calls: list[Callable[[], Any]] = [
        lambda: pool.map(np.sum, x),
        lambda: pool.map_async(np.sum, x),
        lambda: pool.submit(kernels.square, 2),
        lambda: pool.imap(kernels.square, range(3)),
        lambda: pool.empty(1),
        lambda: pool.asarray(x),
        lambda: pool.free(x),
        pool.__enter__,
    ]
    for call in calls:
        with pytest.raises(shmpool.PoolClosedError):
            call()


def test_terminate_then_close(fresh_pool: shmpool.Pool) -> None:
    fresh_pool.terminate()
    fresh_pool.terminate()
    fresh_pool.close()
    with pytest.raises(shmpool.PoolClosedError):
        fresh_pool.map(np.sum, np.zeros(3))
