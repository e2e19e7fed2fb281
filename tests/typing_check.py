"""Checked by mypy in tests/test_typing.py, never run: what a type checker is told the
allocation methods return on each kind of pool, and that the per-call records, plain slotted
dataclasses at run time (shmpool._records), are frozen to it.

A line's comment says what mypy must report there: ``# reveal: TEXT`` (its revealed type
contains TEXT) or ``# error: [code]`` (an error of that code). Every other line must pass.
Were the methods typed ``Any``, the reveals would read "Any" and the errors would not come.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

import shmpool
from shmpool._arrays import ArrayRef
from shmpool._checks import MapRequest
from shmpool._protocol import MapDone, MapJob

if TYPE_CHECKING:
    from typing_extensions import reveal_type  # mypy's own; typing has it from 3.11


def on_shared(pool: shmpool.SharedPool, b: NDArray[Any]) -> None:
    reveal_type(pool.empty(3))  # reveal: numpy.ndarray[
    reveal_type(pool.zeros((2, 3), np.int32))  # reveal: numpy.ndarray[
    reveal_type(pool.full(3, 1.5))  # reveal: numpy.ndarray[
    reveal_type(pool.empty_like(b))  # reveal: numpy.ndarray[
    reveal_type(pool.zeros_like(b))  # reveal: numpy.ndarray[
    reveal_type(pool.full_like(b, 2))  # reveal: numpy.ndarray[
    reveal_type(pool.asarray([1, 2]))  # reveal: numpy.ndarray[
    a: np.ndarray[Any, Any] = pool.empty(3)
    a.sum()
    _wrong: shmpool.ClusterArray = pool.empty(3)  # error: [assignment]


def on_threads(pool: shmpool.ThreadPool, b: NDArray[Any]) -> None:
    reveal_type(pool.empty(3))  # reveal: numpy.ndarray[
    reveal_type(pool.zeros(3))  # reveal: numpy.ndarray[
    reveal_type(pool.full(3, 0))  # reveal: numpy.ndarray[
    reveal_type(pool.empty_like(b))  # reveal: numpy.ndarray[
    reveal_type(pool.zeros_like(b))  # reveal: numpy.ndarray[
    reveal_type(pool.full_like(b, 0))  # reveal: numpy.ndarray[
    reveal_type(pool.asarray(b))  # reveal: numpy.ndarray[
    _wrong: shmpool.ClusterArray = pool.zeros_like(b)  # error: [assignment]


def on_dask(pool: shmpool.DaskPool, b: shmpool.ClusterArray) -> None:
    reveal_type(pool.empty(3))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.zeros(3))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.full(3, 0))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.empty_like(b))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.zeros_like(b))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.full_like(b, 0))  # reveal: shmpool._cluster_array.ClusterArray
    reveal_type(pool.asarray([1, 2]))  # reveal: shmpool._cluster_array.ClusterArray
    c: shmpool.ClusterArray = pool.empty(3)
    c.gather().sum()
    _wrong: np.ndarray[Any, Any] = pool.empty(3)  # error: [assignment]
    pool.empty(3).sum()  # error: [attr-defined]


def on_any_pool(pool: shmpool.Pool[Any]) -> None:
    reveal_type(pool.empty(3))  # reveal: Any


def on_records(job: MapJob, ref: ArrayRef, request: MapRequest, reply: MapDone) -> None:
    job.slot = 3  # error: [misc]
    ref.offset = 0  # error: [misc]
    request.retries = 2  # error: [misc]
    reply.chunks_run += 1  # error: [misc]
