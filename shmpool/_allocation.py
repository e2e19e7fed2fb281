"""The allocation methods every pool has, over its backend's ``allocate`` and ``release``.

Kept apart from :mod:`shmpool._frontend` for size: :class:`~shmpool._frontend.Pool`
inherits them, and gives them its backend and its open-and-same-process check. The mixin is
generic in the kind of array its backend makes (``ArrayT``): a SharedPool's and a
ThreadPool's are NumPy arrays, a DaskPool's are ClusterArrays, so that a type checker knows
which one ``pool.empty(...)`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, cast

import numpy as np

from ._backend import Backend
from ._checks import check_dtype, check_order, check_shape, order_of

__all__ = ["Allocation", "ArrayT"]

ArrayT = TypeVar("ArrayT")  # the kind of array the pool's backend makes


class Allocation(Generic[ArrayT]):
    """``empty``, ``zeros``, ``full``, the ``*_like`` forms, ``asarray``, ``is_shared`` and
    ``free``: checked here, made by the backend (a DaskPool's are ClusterArrays)."""

    _backend: Backend  # set by the pool

    def _check_open(self) -> None:
        """Raise unless the pool is open and used by the process that made it."""
        raise NotImplementedError

    def empty(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> ArrayT:
        """A new uninitialised array of the pool's (a DaskPool's is a ClusterArray)."""
        return self._allocate(shape, dtype, order, zero=False)

    def zeros(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> ArrayT:
        """A new array of zeros of the pool's."""
        return self._allocate(shape, dtype, order, zero=True)

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, order: str = "C"
    ) -> ArrayT:
        """A new array of the pool's filled with ``fill_value`` (dtype: ``fill_value``'s)."""
        if dtype is None:
            dtype = np.asarray(fill_value).dtype
        return self._allocate(
            shape, dtype, order, zero=False, fill=lambda out: out.__setitem__(..., fill_value)
        )

    def _like(self, a: Any) -> tuple[Any, Any, str]:
        # The pool's own arrays as they are: np.asanyarray would fetch a cluster array whole.
        if self._backend.owns(a):
            return a, a, order_of(a) if isinstance(a, np.ndarray) else "C"
        a = np.asanyarray(a)
        return a, None, order_of(a)

    def empty_like(self, a: Any, dtype: Any = None) -> ArrayT:
        """A new uninitialised array of the pool's shaped like ``a`` (dtype, C or F order;
        a DaskPool's cluster array: its chunks, on the same workers)."""
        a, like, order = self._like(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, order, zero=False, like=like)

    def zeros_like(self, a: Any, dtype: Any = None) -> ArrayT:
        """:meth:`empty_like`, of zeros."""
        a, like, order = self._like(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, order, zero=True, like=like)

    def full_like(self, a: Any, fill_value: Any, dtype: Any = None) -> ArrayT:
        """:meth:`empty_like`, filled with ``fill_value`` (dtype: ``a``'s)."""
        a, like, order = self._like(a)
        fill = lambda out: out.__setitem__(..., fill_value)  # noqa: E731
        return self._allocate(
            a.shape, a.dtype if dtype is None else dtype, order, zero=False, like=like, fill=fill
        )

    def asarray(self, a: Any, dtype: Any = None) -> ArrayT:
        """``a`` as the pool's array: ``a`` itself if the pool made it (and no other dtype is
        asked for), else a copy."""
        self._check_open()
        if (dtype is None or np.dtype(dtype) == getattr(a, "dtype", None)) and self._backend.owns(a):
            return cast("ArrayT", a)
        source = np.asarray(a, dtype=dtype)
        fill = lambda out: out.__setitem__(..., source)  # noqa: E731 - a cluster array too
        return self._allocate(source.shape, source.dtype, order_of(source), zero=False, fill=fill)

    def is_shared(self, a: Any) -> bool:
        """Whether ``a`` (or the array it is a view of) was made by this pool and not freed."""
        self._check_open()
        return self._backend.owns(a)

    def free(self, a: Any) -> None:
        """Give the memory holding ``a`` back now instead of at shutdown.

        All of it goes, whichever view of it ``a`` is. Arrays that still view it stay valid
        (the memory is released when the last one is garbage-collected), but no longer count
        as the pool's: passing one to a SharedPool's ``map`` copies it. A DaskPool's cluster
        array is released on the cluster; using it afterwards raises ValueError."""
        self._check_open()
        if not self._backend.owns(a):
            raise ValueError("free() takes an array allocated by this pool that was not freed yet")
        self._backend.release(a)

    def _allocate(
        self,
        shape: object,
        dtype: Any,
        order: str,
        *,
        zero: bool,
        fill: Callable[[Any], object] | None = None,
        like: Any = None,
    ) -> ArrayT:
        self._check_open()
        checked_dtype = check_dtype(np.dtype(dtype))
        dims = check_shape(shape)
        check_order(order)
        try:
            nbytes = math.prod(d for d in dims if d) * checked_dtype.itemsize
        except OverflowError:  # pragma: no cover - math.prod of ints does not overflow
            nbytes = 2**63
        if nbytes >= 2**63 or any(d >= 2**63 for d in dims):
            raise ValueError(f"array is too big: shape {dims} of {checked_dtype} does not fit in memory")
        out: ArrayT = self._backend.allocate(dims, checked_dtype, order, zero, like)
        if fill is not None:
            try:
                fill(out)
            except BaseException:
                self._backend.release(out)  # a failed allocation leaves nothing behind
                raise
        return out
