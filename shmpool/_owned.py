"""Which ordinary NumPy arrays a pool made, for pools whose arrays live in private memory
(ThreadPool): ``is_shared(a)`` there means "made by this pool and not freed"."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

__all__ = ["OwnedArrays", "PrivateMemory"]

Array = np.ndarray  # type: ignore[type-arg]


def _root(a: Array) -> Array:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class OwnedArrays:
    """The arrays a pool made, held weakly: an array that is garbage-collected is no longer
    the pool's, and the registry never keeps memory alive."""

    def __init__(self) -> None:
        self._roots: weakref.WeakValueDictionary[int, Array] = weakref.WeakValueDictionary()

    def add(self, a: Array) -> Array:
        """Record ``a`` as made by the pool; return it."""
        self._roots[id(a)] = a
        return a

    def owns(self, a: Array) -> bool:
        """Whether ``a`` or the array it views was made by the pool and not dropped."""
        root = _root(a)
        return self._roots.get(id(root)) is root

    def drop(self, a: Array) -> None:
        """Forget the array ``a`` views (``free``)."""
        self._roots.pop(id(_root(a)), None)

    def clear(self) -> None:
        """Forget every array (the pool shut down)."""
        self._roots.clear()


class PrivateMemory:
    """The allocation part of a backend whose arrays are ordinary NumPy arrays."""

    def __init__(self) -> None:
        self.owned = OwnedArrays()

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any) -> Array:  # type: ignore[type-arg]
        """A new ordinary array, recorded as the pool's."""
        array: Array = (np.zeros if zero else np.empty)(shape, dtype=dtype, order=order)  # type: ignore[call-overload]
        return self.owned.add(array)

    def owns(self, a: Any) -> bool:
        """Whether the pool made ``a`` (or the array it views) and did not free it."""
        return isinstance(a, np.ndarray) and self.owned.owns(a)

    def split_own(self, arrays: tuple[Any, ...], axis: object, chunks: object) -> None:
        """None: the arrays are NumPy arrays, which the front end splits."""
        return None

    def release(self, a: Array) -> None:
        """Forget that the pool made ``a``: its memory goes with its last reference."""
        self.owned.drop(a)
