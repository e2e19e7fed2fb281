"""Property tests: map equals the serial loop for any layout; free never disturbs others."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmpool

DTYPES = [
    np.dtype(bool),
    np.dtype(np.int8),
    np.dtype(np.uint16),
    np.dtype(np.int64),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.complex128),
    np.dtype(">f8"),
    np.dtype(">i4"),
    np.dtype([("a", "<i4"), ("b", ">f8", (2,))]),
]

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bump(x: np.ndarray) -> int:
    """An in-place, element-wise change for any dtype; returns the chunk's element count."""
    if x.dtype.names:
        x[x.dtype.names[0]] += 1
    elif x.dtype == bool:
        np.logical_not(x, out=x)
    else:
        x += x.dtype.type(1)
    return int(x.size)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[np.ndarray, Any, int, Any]:
    """A base array, a view recipe (slices), an axis and a chunks option."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 7)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    order = draw(st.sampled_from(["C", "F"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    raw = rng.integers(0, 100, size=max(1, int(np.prod(shape))) * dtype.itemsize, dtype=np.uint8)
    base = np.frombuffer(raw.tobytes()[: int(np.prod(shape)) * dtype.itemsize], dtype=dtype).reshape(
        shape, order=order
    )
    slices = tuple(
        slice(None, None, draw(st.sampled_from([1, 2, -1, -2]))) if draw(st.booleans()) else slice(None)
        for _ in shape
    )
    axis = draw(st.integers(-ndim, ndim - 1))
    chunks = draw(st.one_of(st.none(), st.integers(1, 8)))
    return base, slices, axis, chunks


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


@SETTINGS
@given(layout=layouts(), shared=st.booleans())
def test_map_equals_serial(
    shared_pool: shmpool.SharedPool, layout: tuple[np.ndarray, Any, int, Any], shared: bool
) -> None:
    base, slices, axis, chunks = layout
    expected = base.copy(order="K")
    bump(expected[slices])
    arr = shared_pool.asarray(base) if shared else base.copy(order="K")
    view = arr[slices]
    counts = shared_pool.map(bump, view, axis=axis, chunks=chunks)
    assert sum(counts) == view.size
    assert _same(arr, expected)
    if shared:
        shared_pool.free(arr)


@SETTINGS
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("alloc"), st.integers(0, 5000), st.sampled_from(DTYPES[:7])),
            st.tuples(st.just("free"), st.integers(0, 100), st.none()),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_free_never_disturbs_live_arrays(
    shared_pool: shmpool.SharedPool, ops: list[tuple[str, int, Any]]
) -> None:
    live: list[tuple[np.ndarray, bytes]] = []
    for n, (op, value, dtype) in enumerate(ops):
        if op == "alloc":
            a = shared_pool.full(value, n % 2 == 0 if dtype.kind == "b" else n % 100, dtype=dtype)
            live.append((a, a.tobytes()))
        elif live:
            a, _ = live.pop(value % len(live))
            shared_pool.free(a)
            a[...] = 0  # freed arrays stay writable views; they must not alias live ones
        for a, content in live:
            assert a.tobytes() == content
    for a, _ in live:
        shared_pool.free(a)


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_counts(workers: int) -> None:
    data = np.random.default_rng(workers).random((37, 5))
    with shmpool.SharedPool(workers, start_method="forkserver") as pool:
        for chunks in (None, 1, 4, [30, 7]):
            x = pool.asarray(data)
            assert sum(pool.map(bump, x, chunks=chunks)) == data.size
            assert np.array_equal(x, data + 1)
