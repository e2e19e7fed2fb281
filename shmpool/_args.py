"""Checking and preparing ``map``'s arguments before any worker runs.

Positional arguments are split along ``axis`` (NumPy arrays) or passed whole
(:func:`whole`). Every problem raises here, before anything is allocated or sent.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["Whole", "check_dtype", "split_args", "whole"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Whole(Generic[T]):
    """Marks an argument that every kernel call receives whole (see :func:`whole`)."""

    obj: T


def whole(obj: T) -> Whole[T]:
    """Pass ``obj`` to every kernel call of a ``map`` whole instead of chunked.

    For a lookup table, a parameter vector or a shared array read as a whole. A pool array
    (or view of one) arrives as a view on the same shared memory; a plain writable NumPy
    array is staged like a chunked one (copied in, and back after the map).
    """
    return Whole(obj)


def check_dtype(dtype: np.dtype) -> np.dtype:  # type: ignore[type-arg]
    """Refuse dtypes that hold Python objects: their bytes are pointers into one process."""
    if dtype.hasobject:
        raise TypeError(
            f"dtype {dtype} holds Python objects, which cannot live in shared memory; "
            "use a numeric, bool, string or structured dtype without object fields"
        )
    return dtype


@dataclass(frozen=True, slots=True)
class SplitArgs:
    """The validated positional arguments of a map."""

    chunked: dict[int, np.ndarray]  # type: ignore[type-arg]  # position -> array
    axes: dict[int, int]  # position -> non-negative axis of that array
    wholes: dict[int, Any]  # position -> object
    length: int
    bytes_per_index: int


def split_args(args: tuple[Any, ...], axis: object) -> SplitArgs:
    """Sort positional arguments into chunked arrays and whole objects and check them."""
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise ValueError(f"axis must be an int, got {axis!r}")
    axis = int(axis)
    chunked: dict[int, np.ndarray] = {}  # type: ignore[type-arg]
    axes: dict[int, int] = {}
    wholes: dict[int, Any] = {}
    for i, arg in enumerate(args):
        if isinstance(arg, Whole):
            wholes[i] = arg.obj
            continue
        if not isinstance(arg, np.ndarray):
            raise TypeError(
                f"positional argument {i} of map is a {type(arg).__name__}, not a NumPy array; "
                "pass arrays to split, wrap other objects in shmpool.whole(), or pass them "
                "as keyword arguments"
            )
        check_dtype(arg.dtype)
        if arg.ndim == 0:
            raise ValueError(
                f"positional argument {i} of map is a 0-d array, which has no axis to split; "
                "wrap it in shmpool.whole() to pass it to every call"
            )
        if not -arg.ndim <= axis < arg.ndim:
            raise ValueError(f"axis {axis} is out of bounds for argument {i} of shape {arg.shape}")
        chunked[i] = arg
        axes[i] = axis % arg.ndim
    if not chunked:
        raise ValueError("map needs at least one NumPy array to split into chunks")
    lengths = {i: a.shape[axes[i]] for i, a in chunked.items()}
    if len(set(lengths.values())) > 1:
        shapes = ", ".join(f"argument {i}: {a.shape}" for i, a in chunked.items())
        raise ValueError(f"arrays split along axis {axis} must have the same length along it; got {shapes}")
    length = next(iter(lengths.values()))
    per_index = sum(a.nbytes // a.shape[axes[i]] if a.shape[axes[i]] else 0 for i, a in chunked.items())
    return SplitArgs(chunked, axes, wholes, length, per_index)
