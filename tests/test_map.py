"""pool.map: splitting, in-place results, return values, staging, options, bad input."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

import shmpool
from shmpool.errors import RemoteTraceback

from . import kernels


def test_in_place_matches_serial(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.random.default_rng(0).random((1000, 7)))
    y = shared_pool.asarray(np.random.default_rng(1).random((1000, 7)))
    out = shared_pool.empty_like(x)
    result = shared_pool.map(kernels.saxpy, x, y, out, a=3.0)
    assert np.array_equal(out, 3.0 * x + y)
    assert result == [None] * len(result) and len(result) >= 2 * shared_pool.workers


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_axes(shared_pool: shmpool.SharedPool, axis: int) -> None:
    data = np.random.default_rng(2).random((6, 5, 4))
    x = shared_pool.asarray(data)
    shared_pool.map(kernels.double_in_place, x, axis=axis)
    assert np.array_equal(x, data * 2)
    sizes = shared_pool.map(kernels.chunk_length, x, axis=axis, chunks=2, along=axis)
    assert sum(sizes) == data.shape[axis] and sizes[0] == 2


def test_chunk_options(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(10.0))
    assert shared_pool.map(kernels.chunk_length, x, chunks=3) == [3, 3, 3, 1]
    assert shared_pool.map(kernels.chunk_length, x, chunks=[1, 2, 7]) == [1, 2, 7]
    assert shared_pool.map(kernels.chunk_length, x, chunks=np.array([5, 5])) == [5, 5]
    assert shared_pool.map(kernels.chunk_length, x, chunks=100) == [10]
    # Automatic: 4 chunks per worker, of equal length (the last may be shorter).
    assert shared_pool.map(kernels.chunk_length, x) == [2] * 5
    assert shared_pool.map(kernels.chunk_length, np.zeros(800)) == [100] * 8
    # ... and chunks of at most about 4 MiB for big arrays.
    big = shared_pool.map(kernels.chunk_length, shared_pool.empty(3 << 20))  # 24 MiB
    assert len(big) == 8 and sum(big) == 3 << 20
    bigger = shared_pool.map(kernels.chunk_length, shared_pool.empty((64 << 20) // 8))  # 64 MiB
    assert len(bigger) == 16


def test_results_in_chunk_order(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(1000))
    firsts = shared_pool.map(kernels.first_index, x, chunks=7)
    assert firsts == list(range(0, 1000, 7))


def test_reduction(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.random.default_rng(3).random(100_000))
    assert sum(shared_pool.map(np.sum, x)) == pytest.approx(x.sum())


def test_whole_arguments(shared_pool: shmpool.SharedPool) -> None:
    table = shared_pool.asarray(np.arange(10) * 100)
    idx = shared_pool.asarray(np.array([3, 1, 4, 1, 5, 9, 2, 6]))
    out = shared_pool.zeros(8, dtype=table.dtype)

    def lookup(i: np.ndarray, t: np.ndarray, o: np.ndarray, scale: int) -> None:
        o[:] = t[i] * scale

    shared_pool.map(lookup, idx, shmpool.whole(table), out, shmpool.whole(2))
    assert out.tolist() == [600, 200, 800, 200, 1000, 1800, 400, 1200]


def test_whole_shared_array_is_not_copied(shared_pool: shmpool.SharedPool) -> None:
    counts = shared_pool.zeros(4, dtype=np.int64)
    x = shared_pool.asarray(np.arange(4))

    def mark(chunk: np.ndarray, c: np.ndarray) -> None:
        for v in chunk:
            c[v] = 1

    shared_pool.map(mark, x, shmpool.whole(counts), chunks=1)
    assert counts.tolist() == [1, 1, 1, 1]


def test_plain_arrays_are_staged_and_copied_back(shared_pool: shmpool.SharedPool) -> None:
    before = shared_pool.stats
    x = np.arange(20.0)
    shared_pool.map(kernels.double_in_place, x)
    assert x.tolist() == [2.0 * i for i in range(20)]
    after = shared_pool.stats
    assert after.bytes_staged_in - before.bytes_staged_in == x.nbytes
    assert after.bytes_copied_back - before.bytes_copied_back == x.nbytes
    assert after.maps == before.maps + 1


def test_read_only_plain_array_copied_in_only(shared_pool: shmpool.SharedPool) -> None:
    src = np.arange(10.0)
    src.flags.writeable = False
    out = shared_pool.zeros(10)
    before = shared_pool.stats

    def copy(s: np.ndarray, o: np.ndarray) -> None:
        assert not s.flags.writeable
        o[:] = s + 1

    shared_pool.map(copy, src, out)
    assert out.tolist() == [i + 1.0 for i in range(10)]
    after = shared_pool.stats
    assert after.bytes_staged_in - before.bytes_staged_in == src.nbytes
    assert after.bytes_copied_back == before.bytes_copied_back


def test_plain_array_passed_twice_is_staged_once(shared_pool: shmpool.SharedPool) -> None:
    x = np.ones(10)
    before = shared_pool.stats

    def add(a: np.ndarray, b: np.ndarray) -> None:
        a += b

    shared_pool.map(add, x, x)
    assert x.tolist() == [2.0] * 10
    assert shared_pool.stats.bytes_staged_in - before.bytes_staged_in == x.nbytes


def test_plain_whole_array_is_staged(shared_pool: shmpool.SharedPool) -> None:
    acc = np.zeros(4)
    x = shared_pool.asarray(np.arange(4))

    def mark(chunk: np.ndarray, c: np.ndarray) -> None:
        c[chunk] = 1

    shared_pool.map(mark, x, shmpool.whole(acc), chunks=1)
    assert acc.tolist() == [1, 1, 1, 1]


def test_shared_views_used_in_place(shared_pool: shmpool.SharedPool) -> None:
    base = shared_pool.zeros((10, 6), order="F")
    before = shared_pool.stats

    def fill(v: np.ndarray) -> None:
        v[...] = 7

    shared_pool.map(fill, base[:, ::2])
    shared_pool.map(fill, base[::-1, 1], chunks=3)
    assert (base[:, ::2] == 7).all() and (base[:, 1] == 7).all()
    assert (base[:, 3] == 0).all() and (base[:, 5] == 0).all()
    assert shared_pool.stats.bytes_staged_in == before.bytes_staged_in


def test_lambdas_and_closures(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(6.0))
    offset = 10.0
    shared_pool.map(lambda v: v.__iadd__(offset), x)
    assert x.tolist() == [10, 11, 12, 13, 14, 15]
    target = shared_pool.zeros(6)

    def writes_captured(v: np.ndarray) -> None:
        target[: len(v)] += 0  # captured shared array arrives by reference
        target[int(v[0]) - 10 : int(v[-1]) - 9] = v

    shared_pool.map(writes_captured, x)
    assert target.tolist() == x.tolist()


def test_zero_length(shared_pool: shmpool.SharedPool) -> None:
    marker = shared_pool.zeros(1)

    def never(v: np.ndarray) -> None:
        marker[0] = 1

    assert shared_pool.map(never, shared_pool.empty((0, 3))) == []
    assert shared_pool.map(never, np.empty((4, 0)), axis=1) == []
    assert marker[0] == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros(3), np.zeros(4)), {}, ValueError, r"\(3,\).*\(4,\)"),
        ((np.zeros((3, 2)), np.zeros((3, 5))), {"axis": 1}, ValueError, "same length"),
        ((np.zeros(3),), {"axis": 1}, ValueError, "out of bounds"),
        ((np.zeros(3),), {"axis": -2}, ValueError, "out of bounds"),
        ((np.zeros(3),), {"axis": "rows"}, ValueError, "axis must be an int"),
        ((np.zeros(3),), {"axis": 1.0}, ValueError, "axis must be an int"),
        ((np.ones(()),), {}, ValueError, "0-d"),
        (([1, 2, 3],), {}, TypeError, "not a NumPy array"),
        ((3.0,), {}, TypeError, "shmpool.whole"),
        ((), {}, ValueError, "at least one"),
        ((shmpool.whole(np.zeros(3)),), {}, ValueError, "at least one"),
        ((np.zeros(3),), {"chunks": 0}, ValueError, "positive"),
        ((np.zeros(3),), {"chunks": -2}, ValueError, "positive"),
        ((np.zeros(3),), {"chunks": [1, 1]}, ValueError, "sum to 2"),
        ((np.zeros(3),), {"chunks": [1, 0, 2]}, ValueError, "positive"),
        ((np.zeros(3),), {"chunks": [1.5, 1.5]}, ValueError, "ints"),
        ((np.zeros(3),), {"chunks": 1.5}, ValueError, "chunks must be"),
        ((np.zeros(3),), {"chunks": "abc"}, ValueError, "chunks must be"),
        ((np.zeros(3),), {"chunks": True}, ValueError, "chunks must be"),
        ((np.array([object(), 1], dtype=object),), {}, TypeError, "Python objects"),
        ((np.zeros(3),), {"progress": "yes"}, TypeError, "progress"),
        ((np.zeros(3),), {"timeout": 0}, ValueError, "timeout"),
        ((np.zeros(3),), {"lock": threading.Lock()}, TypeError, "cannot be pickled"),
    ],
)
def test_bad_input_rejected_before_any_worker_runs(
    shared_pool: shmpool.SharedPool, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
) -> None:
    ran = shared_pool.zeros(1)

    def kernel(*a: Any, **k: Any) -> None:
        ran[0] = 1

    blocks = set(shared_pool.block_paths)
    with pytest.raises(error, match=match):
        shared_pool.map(kernel, *args, **kwargs)
    assert ran[0] == 0
    assert set(shared_pool.block_paths) == blocks  # nothing left staged


def test_bad_kernel(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(TypeError, match="callable"):
        shared_pool.map(42, np.zeros(3))  # type: ignore[arg-type]
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be pickled"):
        shared_pool.map(lambda x: lock, np.zeros(3))


def test_kernel_exception_keeps_its_type(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(100))
    with pytest.raises(KeyError) as info:
        shared_pool.map(kernels.fail_on, x, chunks=10, bad=42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause) and "found 42" in str(cause)
    assert "chunk 4 (indices 40:50" in str(cause)
    # The pool is still usable.
    assert sum(shared_pool.map(np.sum, x)) == x.sum()


def test_kernel_error_cancels_remaining_chunks(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(1000))
    start = time.perf_counter()
    with pytest.raises(KeyError):
        shared_pool.map(kernels.fail_on, x, chunks=1, bad=3, delay=0.01)
    elapsed = time.perf_counter() - start
    # Running all 1000 chunks would take >= 5 s on 2 workers.
    assert elapsed < 2.0
    assert shared_pool.stats.chunks < 10**6


def test_unpicklable_exception(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(shmpool.KernelError) as info:
        shared_pool.map(kernels.raise_unpicklable, np.zeros(4), chunks=2)
    err = info.value
    assert err.type_name == "tests.kernels.Unpicklable"
    assert err.message == "a=1 b=2"
    assert "raise_unpicklable" in err.remote_traceback


def test_exception_that_cannot_be_rebuilt(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(shmpool.KernelError) as info:
        shared_pool.map(kernels.raise_odd, np.zeros(4))
    assert info.value.type_name == "tests.kernels.OddInit"
    assert "odd 3 4" in str(info.value)


def test_unpicklable_result(shared_pool: shmpool.SharedPool) -> None:
    with pytest.raises(TypeError, match="chunk 0"):
        shared_pool.map(kernels.return_generator, np.zeros(4), chunks=4)
    assert shared_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


def test_results_can_be_shared_views(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.arange(10.0))
    parts = shared_pool.map(lambda v: v, x, chunks=5)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert all(shared_pool.is_shared(p) for p in parts)
    parts[0][0] = 42
    assert x[0] == 42  # a view, not a copy


def test_progress_bar(shared_pool: shmpool.SharedPool, capsys: pytest.CaptureFixture[str]) -> None:
    x = shared_pool.asarray(np.arange(10.0))
    shared_pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.03, progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "index" in err  # the bar counts indices along the axis
    shared_pool.map(kernels.sleep_chunk, x, chunks=5, seconds=0.0, progress={"desc": "smoothing"})
    err = capsys.readouterr().err
    assert "smoothing" in err and "10/10" in err and "2/2" not in err  # 2 chunks of 5 indices
    shared_pool.map(kernels.sleep_chunk, x, chunks=5, seconds=0.0)
    assert capsys.readouterr().err == ""


def test_pool_progress_default(capsys: pytest.CaptureFixture[str]) -> None:
    with shmpool.SharedPool(1, start_method="fork", progress={"desc": "default-bar"}) as pool:
        pool.map(kernels.chunk_length, np.zeros(4), chunks=2)
        assert "default-bar" in capsys.readouterr().err
        pool.map(kernels.chunk_length, np.zeros(4), chunks=2, progress=False)
        assert capsys.readouterr().err == ""


def test_threads_share_a_pool(shared_pool: shmpool.SharedPool) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(5):
                data = np.random.default_rng(seed).random(5000)
                x = shared_pool.asarray(data)
                shared_pool.map(kernels.double_in_place, x, chunks=500)
                assert np.array_equal(x, data * 2)
                shared_pool.free(x)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_gil_bound_kernel_matches_serial(shared_pool: shmpool.SharedPool) -> None:
    data = np.random.default_rng(4).random((64, 50))
    x = shared_pool.asarray(data)
    out = shared_pool.empty_like(x)
    shared_pool.map(kernels.running_max_rows, x, out)
    assert np.array_equal(out, np.maximum.accumulate(data, axis=1))


def test_kwargs_and_repeated_maps_reuse_kernel(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.zeros(8)
    y = shared_pool.zeros(8)
    out = shared_pool.zeros(8)
    for a in (1.0, 2.0, 3.0):
        x[:] = a
        shared_pool.map(kernels.saxpy, x, y, out, a=a)
        assert (out == a * a).all()


def test_staging_blocks_are_reused(shared_pool: shmpool.SharedPool) -> None:
    x = np.arange(50_000.0)
    before = set(shared_pool.block_paths)
    shared_pool.map(kernels.double_in_place, x)
    blocks = set(shared_pool.block_paths)
    assert len(blocks - before) == 1  # the staging block stays, cached for the next map
    for _ in range(5):
        shared_pool.map(kernels.double_in_place, x)
    assert set(shared_pool.block_paths) == blocks  # the same staging block every time
    assert np.array_equal(x, np.arange(50_000.0) * 2**6)


def test_a_result_viewing_a_staged_copy_is_never_overwritten(shared_pool: shmpool.SharedPool) -> None:
    x = np.arange(10.0)
    views = shared_pool.map(lambda v: v, x, chunks=5)  # views of the staging copy
    first = [v.copy() for v in views]
    y = np.full(10, -1.0)
    shared_pool.map(kernels.double_in_place, y)  # would reuse the block if it were cached
    assert [v.tolist() for v in views] == [f.tolist() for f in first]


def test_kernels_pickled_by_value_see_what_they_capture_now(shared_pool: shmpool.SharedPool) -> None:
    from shmpool import _pickling

    x = shared_pool.zeros(4)
    for value in (1.0, 2.0, 3.0):

        def fill(v: np.ndarray, value: float = value) -> None:
            v[:] = value

        shared_pool.map(fill, x)
        assert (x == value).all()
    scale = [2.0]
    shared_pool.map(lambda v: v.__setitem__(slice(None), scale[0]), x)
    scale[0] = 5.0  # a closure is pickled again for every map: the change reaches the workers
    shared_pool.map(lambda v: v.__setitem__(slice(None), scale[0]), x)
    assert (x == 5.0).all()
    # An importable module-level kernel is pickled once and reused.
    shared_pool.map(kernels.double_in_place, x)
    assert kernels.double_in_place in _pickling._by_reference
    assert fill not in _pickling._by_reference
