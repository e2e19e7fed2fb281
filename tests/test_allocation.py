"""Allocation: empty, zeros, full, *_like, asarray, is_shared, free."""

from __future__ import annotations

import gc
import os
import warnings

import numpy as np
import pytest

import shmpool
from shmpool import _segments


def test_empty_zeros_full_shapes_and_dtypes(shared_pool: shmpool.SharedPool) -> None:
    e = shared_pool.empty((3, 4), dtype=np.int32)
    assert e.shape == (3, 4) and e.dtype == np.int32 and e.flags.c_contiguous and e.flags.writeable
    z = shared_pool.zeros(5)
    assert z.dtype == np.float64 and not z.any()
    f = shared_pool.full((2, 2), 7, dtype=np.uint8)
    assert f.dtype == np.uint8 and (f == 7).all()
    g = shared_pool.full(3, 1.5)
    assert g.dtype == np.float64 and (g == 1.5).all()
    h = shared_pool.full(2, "ab")
    assert h.dtype.kind == "U" and list(h) == ["ab", "ab"]
    assert all(shared_pool.is_shared(a) for a in (e, z, f, g, h))


def test_fortran_order(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.zeros((4, 3), order="F")
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    like = shared_pool.empty_like(a)
    assert like.flags.f_contiguous and like.shape == (4, 3)


@pytest.mark.parametrize("order", ["K", "A", "x", None])
def test_bad_order(shared_pool: shmpool.SharedPool, order: object) -> None:
    with pytest.raises(ValueError, match="order"):
        shared_pool.empty(3, order=order)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(-1,), (2, -3)])
def test_negative_shape(shared_pool: shmpool.SharedPool, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="negative"):
        shared_pool.empty(shape)


@pytest.mark.parametrize("shape", [(1.5,), "abc", (None,)])
def test_bad_shape(shared_pool: shmpool.SharedPool, shape: object) -> None:
    with pytest.raises(TypeError, match="shape"):
        shared_pool.empty(shape)  # type: ignore[arg-type]


def test_like_functions(shared_pool: shmpool.SharedPool) -> None:
    src = np.arange(12, dtype=np.int16).reshape(3, 4)
    a = shared_pool.empty_like(src)
    b = shared_pool.zeros_like(src, dtype=np.float32)
    assert a.shape == src.shape and a.dtype == np.int16
    assert b.dtype == np.float32 and not b.any()
    c = shared_pool.zeros_like([[1, 2], [3, 4]])
    assert c.shape == (2, 2)


def test_asarray_copies_plain_and_returns_shared_itself(shared_pool: shmpool.SharedPool) -> None:
    src = np.arange(10.0)
    a = shared_pool.asarray(src)
    assert a is not src and shared_pool.is_shared(a) and (a == src).all()
    src[0] = 99
    assert a[0] == 0  # a copy
    assert shared_pool.asarray(a) is a
    view = a[2:5]
    assert shared_pool.asarray(view) is view
    converted = shared_pool.asarray(a, dtype=np.float32)
    assert converted is not a and converted.dtype == np.float32 and shared_pool.is_shared(converted)
    assert shared_pool.asarray(a, dtype=np.float64) is a
    from_list = shared_pool.asarray([[1, 2], [3, 4]])
    assert from_list.dtype.kind == "i" and from_list.tolist() == [[1, 2], [3, 4]]
    fortran = shared_pool.asarray(np.asfortranarray(np.ones((3, 2))))
    assert fortran.flags.f_contiguous


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.empty(3, dtype=object),
        lambda p: p.zeros(3, dtype=object),
        lambda p: p.full(3, None),
        lambda p: p.full(3, 1, dtype=[("a", "i4"), ("b", "O")]),
        lambda p: p.empty_like(np.array([1, "x", None], dtype=object)),
        lambda p: p.zeros_like(np.zeros(2), dtype=object),
        lambda p: p.asarray([1, "x", None]),
        lambda p: p.asarray(np.array([{}], dtype=object)),
    ],
)
def test_object_dtypes_refused(shared_pool: shmpool.SharedPool, make: object) -> None:
    with pytest.raises(TypeError, match="Python objects"):
        make(shared_pool)  # type: ignore[operator]


def test_zero_size_and_zero_d(shared_pool: shmpool.SharedPool) -> None:
    empty = shared_pool.empty((0, 5))
    assert empty.shape == (0, 5) and shared_pool.is_shared(empty)
    scalar = shared_pool.full((), 3.0)
    assert scalar.shape == () and float(scalar) == 3.0 and shared_pool.is_shared(scalar)
    copied = shared_pool.asarray(np.float32(2.5))
    assert copied.shape == () and copied.dtype == np.float32 and float(copied) == 2.5
    shared_pool.free(empty)
    shared_pool.free(scalar)


def test_structured_and_big_endian(shared_pool: shmpool.SharedPool) -> None:
    dt = np.dtype([("x", ">f8"), ("n", "<i2", (2,))])
    a = shared_pool.zeros(4, dtype=dt)
    a["x"] = [1, 2, 3, 4]
    assert a.dtype == dt and a["x"].sum() == 10


def test_is_shared(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.zeros((10, 10))
    assert shared_pool.is_shared(a)
    assert shared_pool.is_shared(a[::2, 3])
    assert shared_pool.is_shared(a.T)
    assert shared_pool.is_shared(a[5:5])
    assert not shared_pool.is_shared(np.zeros(3))
    assert not shared_pool.is_shared(a.copy())
    assert not shared_pool.is_shared([1, 2])
    with shmpool.SharedPool(1, start_method="fork") as other:
        b = other.zeros(3)
        assert other.is_shared(b) and not shared_pool.is_shared(b)
        assert not other.is_shared(a)


def test_free_keeps_views_valid(shared_pool: shmpool.SharedPool) -> None:
    a = shared_pool.zeros(1000)
    view = a[10:20]
    path = shmpool._arrays.locate(a)[0].path  # type: ignore[index]
    assert path in shared_pool.block_paths
    shared_pool.free(view)
    assert not os.path.exists(path)
    assert not shared_pool.is_shared(a)
    a[:] = 5  # still mapped: no crash
    assert view.sum() == 50
    with pytest.raises(ValueError, match="not freed yet"):
        shared_pool.free(a)
    with pytest.raises(ValueError, match="allocated by this pool"):
        shared_pool.free(np.zeros(3))
    b = shared_pool.full(1000, 2.0)  # new blocks do not disturb the old views
    assert view.sum() == 50 and b.sum() == 2000
    del a, view
    gc.collect()


def test_arrays_stay_valid_after_close(start_method: str) -> None:
    with shmpool.SharedPool(1, start_method=start_method) as pool:
        a = pool.full((100, 10), 3.0)
        b = a[::3]
        names = set(pool.block_paths)
    assert pool.closed
    assert not any(os.path.exists(p) for p in names)  # unlinked at shutdown ...
    assert a.sum() == 3000 and b.shape == (34, 10)  # ... but still mapped here
    a[:] = 1
    assert b.sum() == 340


def test_allocation_after_close_raises(start_method: str) -> None:
    pool = shmpool.SharedPool(1, start_method=start_method)
    pool.close()
    for call in (lambda: pool.empty(3), lambda: pool.zeros(3), lambda: pool.asarray([1])):
        with pytest.raises(shmpool.PoolClosedError):
            call()
    with pytest.raises(shmpool.PoolClosedError):
        pool.map(np.sum, np.zeros(3))


def test_shared_memory_full_simulated(
    shared_pool: shmpool.SharedPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeStat:
        f_bavail = 1000
        f_frsize = 4096

    before = set(os.listdir(shared_pool.temp_folder))
    monkeypatch.setattr(_segments.os, "statvfs", lambda path: FakeStat())
    # Every folder looks full, the fallback on disk too (it is tried, with a warning).
    with warnings.catch_warnings(), pytest.raises(shmpool.SharedMemoryFullError) as info:
        warnings.simplefilter("ignore", shmpool.SharedMemoryFallbackWarning)
        shared_pool.empty(10_000_000)
    err = info.value
    assert err.folder in (shared_pool.temp_folder, shared_pool.fallback_folder)
    assert isinstance(err, MemoryError)
    assert err.requested == 80_000_000 and err.available == 4_096_000
    message = str(err)
    assert "80,000,000" in message and "4,096,000" in message
    assert "--shm-size" in message and "temp_folder" in message and "SHMPOOL_TEMP_FOLDER" in message
    monkeypatch.undo()
    assert set(os.listdir(shared_pool.temp_folder)) == before


def test_temp_folder_option_and_env(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with shmpool.SharedPool(1, start_method="fork", temp_folder=tmp_path) as pool:
        assert pool.temp_folder == str(tmp_path)
        a = pool.asarray(np.arange(5.0))
        assert [p for p in os.listdir(tmp_path) if p.startswith("shmpool_")]
        pool.map(lambda x: x.__imul__(2), a)
        assert a.tolist() == [0, 2, 4, 6, 8]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("shmpool_")]
    monkeypatch.setenv("SHMPOOL_TEMP_FOLDER", str(tmp_path))
    with shmpool.SharedPool(1, start_method="fork") as pool:
        assert pool.temp_folder == str(tmp_path)
    with pytest.raises(ValueError, match="not an existing folder"):
        shmpool.SharedPool(1, temp_folder=os.path.join(str(tmp_path), "missing"))


def test_locate_finds_every_kind_of_view_at_its_offset(shared_pool: shmpool.SharedPool) -> None:
    # locate() takes contiguous arrays' bounds from their start and size, and asks NumPy
    # for the others: both must give each view's own offset, and refuse what is not inside.
    from numpy.lib.array_utils import byte_bounds

    a = shared_pool.zeros((6, 8))
    found = shmpool._arrays.locate(a)
    assert found is not None and found[1] >= 0
    block, base = found
    views = [a, a[2:], a[:, 3:], a.T, a[::-1], a[:, ::-2], a[1:2], a[3:4, :].T, a.ravel()[5:9], a[::2, ::3]]
    for view in views:
        where = shmpool._arrays.locate(view)
        assert where is not None and where[0] is block
        start = view.__array_interface__["data"][0]
        assert where[1] == start - block.address
        low, high = byte_bounds(view)
        assert block.address <= low and high <= block.address + block.size
    assert base == a.__array_interface__["data"][0] - block.address
    plain = np.zeros((6, 8))
    assert shmpool._arrays.locate(plain) is None and shmpool._arrays.locate(plain.T) is None
