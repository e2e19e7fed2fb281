"""Halo maps (shmpool.halo) and chunk_info, on SharedPool, ThreadPool and DaskPool."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmpool

from . import kernels_halo
from .any_pools import (  # noqa: F401 - fixtures used by name
    POOL_TYPES,
    DaskPool,
    any_pool,
    dask_client,
    dask_cluster_processes_are_not_leaks,
    fresh_pool,
    local_cluster,
)

pytestmark = pytest.mark.timeout(120)

# np.pad's names for the boundaries, to compute what a halo view must hold.
PAD_MODES = {"reflect": "symmetric", "periodic": "wrap", "nearest": "edge"}


def zeros_like(pool: shmpool.Pool, a: Any) -> Any:
    """An output for a map over ``a``: the pool's own, but NumPy's on a DaskPool when ``a``
    is a NumPy array (cluster arrays and NumPy arrays do not mix in one map)."""
    if type(pool).__name__ == "DaskPool" and not pool.is_shared(a):
        return np.zeros_like(a)
    return pool.zeros_like(a)


def arrays(pool: shmpool.Pool, own: bool, x: np.ndarray) -> Any:  # type: ignore[type-arg]
    """``x`` as the test's map takes it: the pool's own array (a shared block, or a
    DaskPool's cluster array, whose halo views are built from the chunks on the workers)
    or the NumPy array itself."""
    return pool.asarray(x) if own else x


# Every map of the suites below runs over NumPy arrays and over the pool's own arrays.
own_arrays = pytest.mark.parametrize("own", [False, True], ids=["numpy", "own"])


def padded(x: np.ndarray, axis: int, before: int, after: int, boundary: Any) -> np.ndarray:  # type: ignore[type-arg]
    """``x`` padded along ``axis`` as a halo with ``boundary`` fills it (zeros for "none")."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (before, after)
    if boundary == "none":
        return np.pad(x, pad)
    if isinstance(boundary, str):
        return np.pad(x, pad, mode=PAD_MODES[boundary])
    return np.pad(x, pad, constant_values=boundary)


def check_convolution(
    pool: shmpool.Pool,
    x: np.ndarray,  # type: ignore[type-arg]
    axis: int,
    chunks: Any,
    before: int,
    after: int,
    boundary: Any,
    weights: np.ndarray,  # type: ignore[type-arg]
    own: bool = False,
) -> None:
    given = arrays(pool, own, x)
    out = zeros_like(pool, given)
    pool.map(
        kernels_halo.convolve,
        shmpool.halo(given, (before, after), boundary),
        out,
        axis=axis,
        chunks=chunks,
        weights=weights,
        before=before,
        after=after,
        along=axis,
    )
    expected = kernels_halo.convolve_serial(
        padded(x, axis, before, after, boundary), weights, x.shape[axis], axis
    )
    np.testing.assert_array_equal(np.asarray(out), expected)


# ---- what a kernel sees ---------------------------------------------------------------------


@own_arrays
def test_views_and_chunk_info(any_pool: shmpool.Pool, own: bool) -> None:
    x = np.arange(10.0)
    got = any_pool.map(kernels_halo.where, shmpool.halo(arrays(any_pool, own, x), 2), chunks=3)
    bounds = [(0, 3), (3, 6), (6, 9), (9, 10)]
    for index, (start, stop) in enumerate(bounds):
        i, s, e, length, margin, margins, view = got[index]
        low, high = max(0, start - 2), min(10, stop + 2)
        assert (i, s, e, length) == (index, start, stop, 10)
        assert margin == (start - low, high - stop) and margins == {0: margin}
        np.testing.assert_array_equal(view, x[low:high])


@own_arrays
@pytest.mark.parametrize("boundary", ["reflect", "periodic", "nearest", -1.5])
def test_padded_boundaries_give_every_view_the_full_margin(
    any_pool: shmpool.Pool, boundary: Any, own: bool
) -> None:
    x = np.arange(1.0, 8.0)
    got = any_pool.map(kernels_halo.where, shmpool.halo(arrays(any_pool, own, x), (3, 2), boundary), chunks=2)
    full = padded(x, 0, 3, 2, boundary)
    for index, (_, start, stop, _, margin, _, view) in enumerate(got):
        assert margin == (3, 2), index
        np.testing.assert_array_equal(view, full[start : stop + 5])


@own_arrays
def test_depth_larger_than_a_chunk_spans_several(any_pool: shmpool.Pool, own: bool) -> None:
    x = np.arange(12.0).reshape(6, 2)
    check_convolution(any_pool, x, 0, 1, 4, 5, "periodic", np.arange(1.0, 11.0), own)
    check_convolution(any_pool, x, 0, [1, 4, 1], 6, 6, "none", np.ones(13), own)  # depth == length
    for boundary in ("reflect", "nearest", 2.0):  # reflections and edges from several chunks
        check_convolution(any_pool, x, 0, [2, 1, 3], 5, 4, boundary, np.arange(10.0), own)


@own_arrays
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_any_axis_and_order(any_pool: shmpool.Pool, axis: int, order: str, own: bool) -> None:
    rng = np.random.default_rng(axis + 7)
    x = np.asarray(rng.random((5, 9, 4)), order=order)  # type: ignore[call-overload]
    check_convolution(any_pool, x, axis % 3, 2, 1, 2, "reflect", rng.random(4), own)


@own_arrays
def test_no_halo_map_has_chunk_info_without_margins(any_pool: shmpool.Pool, own: bool) -> None:
    infos = any_pool.map(kernels_halo.info_only, arrays(any_pool, own, np.zeros(5)), chunks=2)
    assert [(i.index, i.start, i.stop, i.length) for i in infos] == [(0, 0, 2, 5), (1, 2, 4, 5), (2, 4, 5, 5)]
    assert all(i.margin == (0, 0) and dict(i.margins) == {} for i in infos)


def test_chunk_info_is_none_outside_a_map(any_pool: shmpool.Pool) -> None:
    assert shmpool.chunk_info() is None
    any_pool.map(kernels_halo.info_only, np.zeros(4))
    assert shmpool.chunk_info() is None


def test_map_async_and_the_decorator(fresh_pool: shmpool.Pool) -> None:
    x = np.random.default_rng(3).random(11)
    expected = np.convolve(np.pad(x, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    with fresh_pool as pool:
        out = zeros_like(pool, x)
        kernels_halo.smooth3(shmpool.halo(x, 1, "nearest"), out)
        np.testing.assert_allclose(out, expected, rtol=1e-15)
        out2 = zeros_like(pool, x)
        future = pool.map_async(kernels_halo.smooth3.func, shmpool.halo(x, 1, "nearest"), out2, chunks=4)
        assert future.result(timeout=60) == [None] * 3
        np.testing.assert_array_equal(out2, out)


@own_arrays
def test_halo_views_are_read_only(any_pool: shmpool.Pool, own: bool) -> None:
    x = arrays(any_pool, own, np.ones(6))
    for boundary in ("none", "periodic"):  # views of the array, and padded copies
        with pytest.raises(ValueError, match="read-only"):
            any_pool.map(kernels_halo.write_halo, shmpool.halo(x, 1, boundary), chunks=3)
    assert (np.asarray(x) == 1).all()


@own_arrays
def test_iterative_stencil_with_swapped_buffers(any_pool: shmpool.Pool, own: bool) -> None:
    u = arrays(any_pool, own, np.sin(np.linspace(0, 3, 40)) ** 2)
    v = zeros_like(any_pool, u)
    serial = np.array(u)
    for _ in range(5):
        any_pool.map(kernels_halo.diffuse, shmpool.halo(u, 1, "reflect"), v, chunks=7)
        p = np.pad(serial, 1, mode="symmetric")
        serial = p[1:-1] + 0.25 * (p[:-2] - 2 * p[1:-1] + p[2:])
        u, v = v, u
    np.testing.assert_array_equal(np.asarray(u), serial)


# ---- errors before anything runs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "boundary", "error", "match"),
    [
        (-1, "none", ValueError, "must not be negative"),
        ((1, -2), "reflect", ValueError, "must not be negative"),
        ((1, 2, 3), "none", TypeError, "pair"),
        (1.5, "none", TypeError, "int or a pair"),
        (1, "mirror", ValueError, "boundary must be one of"),
        (1, None, TypeError, "string or a number"),
        (1, 0.5, ValueError, "cannot be held exactly by dtype int64"),
    ],
)
def test_bad_halo_arguments(depth: Any, boundary: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        shmpool.halo(np.zeros(4, dtype=np.int64), depth, boundary)


def test_depth_beyond_the_array_and_halos_over_outputs(any_pool: shmpool.Pool) -> None:
    x = np.zeros((4, 3))
    maps = any_pool.stats.maps
    with pytest.raises(ValueError, match=r"halo depth \(0, 5\) of argument 0 is larger than its length 4"):
        any_pool.map(kernels_halo.where, shmpool.halo(x, (0, 5)))
    with pytest.raises(ValueError, match="larger than its length 3"):
        any_pool.map(kernels_halo.where, shmpool.halo(x, 4), axis=1)
    with pytest.raises(ValueError, match="halo input must not be written by the same map"):
        any_pool.map(kernels_halo.where, shmpool.halo(x, 1), x)
    with pytest.raises(ValueError, match="argument 1 may write"):
        any_pool.map(kernels_halo.where, shmpool.halo(x, 1), x[::-1])
    with pytest.raises(ValueError, match="argument 2 may write"):
        any_pool.map(kernels_halo.where, shmpool.halo(x, 1), np.zeros(4), shmpool.whole(x[1]))
    read_only = x.view()
    read_only.flags.writeable = False
    any_pool.map(kernels_halo.where, shmpool.halo(x, 1), read_only)  # only read: allowed
    assert any_pool.stats.maps == maps + 1
    with pytest.raises(TypeError, match="takes a NumPy array"):
        shmpool.halo([1, 2, 3], 1)  # type: ignore[arg-type]


# ---- no copies where the neighbours are already there --------------------------------------


@pytest.mark.parametrize("pool_type", ["SharedPool", "ThreadPool"])
def test_interior_chunks_are_views_and_only_padded_edges_copy(pool_type: str) -> None:
    pool: shmpool.Pool = shmpool.SharedPool(2) if pool_type == "SharedPool" else shmpool.ThreadPool(2)
    with pool:
        x = pool.asarray(np.arange(20.0))
        views = pool.map(kernels_halo.itself, shmpool.halo(x, 2, "periodic"), chunks=5)
        assert [np.shares_memory(v, x) for v in views] == [False, True, True, False]
        views = pool.map(kernels_halo.itself, shmpool.halo(x, 2), chunks=5)
        assert all(np.shares_memory(v, x) for v in views)
        assert [len(v) for v in views] == [7, 9, 9, 7]
        del views
        assert pool.stats.bytes_staged_in == 0 and pool.stats.bytes_copied_back == 0


def test_plain_arrays_are_staged_in_only(shared_pool: shmpool.SharedPool) -> None:
    x = np.random.default_rng(1).random((30, 4))
    out = np.zeros_like(x)
    before = shared_pool.stats
    shared_pool.map(
        kernels_halo.convolve,
        shmpool.halo(x, 2, "reflect"),
        out,
        chunks=4,
        weights=np.ones(5),
        before=2,
        after=2,
        along=0,
    )
    expected = kernels_halo.convolve_serial(padded(x, 0, 2, 2, "reflect"), np.ones(5), 30, 0)
    np.testing.assert_array_equal(out, expected)
    after = shared_pool.stats
    assert after.bytes_staged_in - before.bytes_staged_in == x.nbytes + out.nbytes
    assert after.bytes_copied_back - before.bytes_copied_back == out.nbytes  # x is never copied back


def test_every_start_method(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.asarray(np.asfortranarray(np.arange(24.0).reshape(4, 6)))
    check_convolution(shared_pool, x, 1, 4, 2, 1, 7.0, np.array([1.0, 2.0, 3.0, 4.0]))


# ---- the property: a halo map is the serial computation on the padded array -----------------


@st.composite
def halo_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(0, ndim - 1))
    length = shape[axis]
    if draw(st.booleans()):
        chunks: Any = draw(st.integers(1, length))
    else:
        sizes = []
        left = length
        while left:
            sizes.append(draw(st.integers(1, left)))
            left -= sizes[-1]
        chunks = sizes
    before = draw(st.integers(0, length))
    after = draw(st.integers(0, length))
    boundary = draw(st.sampled_from(["none", "reflect", "periodic", "nearest", "constant"]))
    if boundary == "constant":
        boundary = draw(st.sampled_from([0.0, -2.5, 3.0]))
    order = draw(st.sampled_from(["C", "F"]))
    seed = draw(st.integers(0, 2**16))
    return shape, axis, chunks, before, after, boundary, order, seed


def _property(pool: shmpool.Pool, case: tuple[Any, ...], own: bool = False) -> None:
    shape, axis, chunks, before, after, boundary, order, seed = case
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.random(shape), order=order)
    check_convolution(pool, x, axis, chunks, before, after, boundary, rng.random(before + after + 1), own)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=halo_cases())
def test_property_threads(case: tuple[Any, ...]) -> None:
    with shmpool.ThreadPool(2) as pool:
        _property(pool, case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=halo_cases())
def test_property_shared(shared_pool: shmpool.SharedPool, case: tuple[Any, ...]) -> None:
    _property(shared_pool, case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=halo_cases())
def test_property_any_pool(any_pool: shmpool.Pool, case: tuple[Any, ...]) -> None:
    _property(any_pool, case)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=halo_cases())
def test_property_own_arrays(any_pool: shmpool.Pool, case: tuple[Any, ...]) -> None:
    # On a DaskPool: cluster arrays split in two chunks (asarray's), mapped with the case's
    # chunks, so the views are cut from chunks that are not the map's.
    _property(any_pool, case, own=True)


@pytest.mark.skipif("DaskPool" not in POOL_TYPES, reason="Dask is not installed")
def test_halos_of_cluster_arrays_do_not_mix(dask_client: Any) -> None:
    with DaskPool(dask_client) as pool, DaskPool(dask_client) as other, shmpool.ThreadPool(1) as threads:
        x = pool.asarray(np.zeros(6))
        maps = pool.stats.maps
        with pytest.raises(
            TypeError, match=r"halo\(\) of a ndarray, while other arguments are cluster arrays"
        ):
            pool.map(kernels_halo.where, shmpool.halo(np.zeros(6), 1), x)
        with pytest.raises(TypeError, match=r"not a cluster array \(ndarray\)"):
            pool.map(kernels_halo.where, shmpool.halo(x, 1), np.zeros(6))
        with pytest.raises(ValueError, match="cluster array of another pool"):
            other.map(kernels_halo.where, shmpool.halo(x, 1), other.zeros(6))
        with pytest.raises(TypeError, match=r"halo\(\) of a ClusterArray, which only its own DaskPool"):
            threads.map(kernels_halo.where, shmpool.halo(x, 1))
        with pytest.raises(
            ValueError, match=r"halo depth \(7, 7\) of argument 0 is larger than its length 6"
        ):
            pool.map(kernels_halo.where, shmpool.halo(x, 7))
        with pytest.raises(ValueError, match="argument 1 may write"):
            pool.map(kernels_halo.where, shmpool.halo(x, 1), x)  # x, chunked, is written in place
        with pytest.raises(ValueError, match="cannot be held exactly by dtype int64"):
            shmpool.halo(pool.zeros(4, dtype=np.int64), 1, 0.5)
        with pytest.raises(ValueError, match="boundary must be one of"):
            shmpool.halo(x, 1, "mirror")
        assert pool.stats.maps == maps  # nothing ran
        # Read both ways, one map: a whole() cluster array is read-only too.
        got = pool.map(kernels_halo.where, shmpool.halo(x, 1), shmpool.whole(x), chunks=2)
        assert [g[:3] for g in got] == [(0, 0, 2), (1, 2, 4), (2, 4, 6)]


def test_a_map_inside_a_thread_kernel_gives_the_outer_chunk_back() -> None:
    with shmpool.ThreadPool(2) as pool:

        def outer(x: np.ndarray) -> tuple[Any, ...]:  # type: ignore[type-arg]
            before = shmpool.chunk_info()
            inner = pool.map(kernels_halo.info_only, np.zeros(3), chunks=1)  # runs in this thread
            return before, shmpool.chunk_info(), [i.index for i in inner]

        for before, after, inner in pool.map(outer, shmpool.halo(np.zeros(8), 2, "nearest"), chunks=4):
            assert after == before and before.margin == (2, 2)
            assert inner == [0, 1, 2]


def test_empty_arrays() -> None:
    with shmpool.ThreadPool(2) as pool:
        assert pool.map(kernels_halo.where, shmpool.halo(np.zeros((0, 3)), 0, "reflect")) == []
        with pytest.raises(ValueError, match="larger than its length 0"):
            pool.map(kernels_halo.where, shmpool.halo(np.zeros((0, 3)), 1))
