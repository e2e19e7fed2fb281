"""Decorated kernels defined in a module, as users write them."""

from __future__ import annotations

import numpy as np

import shmpool


@shmpool.kernel
def saxpy(x: np.ndarray, y: np.ndarray, out: np.ndarray, *, a: float) -> None:
    out[:] = a * x + y


@shmpool.kernel(axis=1, chunks=2)
def column_sums(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=0)


@shmpool.kernel
def twice_saxpy(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> int:
    """A kernel that calls another kernel: inside a worker it runs in place."""
    saxpy(x, y, out, a=2.0)
    return len(x)
