"""``DaskPool.on_cluster``: make cluster arrays, map over them, free them.

It is a namespace of the pool rather than the pool's own ``empty``/``map``: those are the
one front end that every pool shares, and they take and return NumPy arrays, which stay
in the caller (code written for SharedPool keeps working on a DaskPool). Here the arrays
stay on the cluster. A map here goes through the front end's :class:`~shmpool._calls.MapCall`
(waiting, deadline, Ctrl-C, cancel, error choice), so it behaves as ``Pool.map`` does.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._backend import MapOutcome
from ._calls import MapCall
from ._checks import (
    MapRequest,
    SplitArgs,
    Whole,
    check_callable,
    check_dtype,
    check_shape,
    check_timeout,
    kernel_name,
)
from ._chunks import plan_chunks
from ._cluster_array import ClusterArray, ClusterStore
from ._cluster_map import ClusterMapRun, MapArrays
from ._cluster_worker import make_chunk
from ._progress import open_bar, resolve_progress
from .errors import PoolClosedError

__all__ = ["DEFAULT_CHUNK_BYTES", "OnCluster"]

# Automatic chunks of a cluster array: one per worker thread, more when that would make a
# chunk bigger than this (Dask's own default chunk size): a task costs about a millisecond
# of scheduling, so chunks are far bigger than a SharedPool's.
DEFAULT_CHUNK_BYTES = 128 << 20


class OnCluster:
    """Cluster arrays of one DaskPool: ``pool.on_cluster.zeros(...)``, ``.map(...)``."""

    def __init__(self, store: ClusterStore, workers: Callable[[], int]):
        self._store = store
        self._workers = workers
        self._pool: Callable[[], Any] = lambda: None
        self._creator = os.getpid()
        self._default_progress: bool | dict[str, Any] = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls: set[MapCall] = set()
        self.maps = 0
        self.chunks = 0

    def attach(self, pool: Any, progress: bool | dict[str, Any]) -> None:
        """Bind to the pool (weakly: the pool's finalizer must be able to run)."""
        self._pool = weakref.ref(pool)
        self._default_progress = progress

    def _check_open(self) -> None:
        pool = self._pool()
        if os.getpid() != self._creator:
            raise PoolClosedError("this DaskPool was created by another process; create a new pool here")
        if pool is None or pool.closed or self._store.closed:
            raise PoolClosedError("this DaskPool is closed")

    # ---- making arrays ---------------------------------------------------------------------

    def _offsets(self, length: int, nbytes: int, chunks: object) -> list[int]:
        if chunks is None:
            count = max(self._workers(), math.ceil(nbytes / DEFAULT_CHUNK_BYTES))
            chunks = max(1, -(-length // max(1, min(count, length))))
        plan = plan_chunks(length, chunks, self._workers(), nbytes // length if length else 0)
        return [plan.bounds(i)[0] for i in range(len(plan))] + [length]

    def _make(
        self,
        shape: object,
        dtype: Any,
        fill: Any,
        axis: int,
        chunks: object,
        name: str | None,
        like: ClusterArray | None,
    ) -> ClusterArray:
        self._check_open()
        dims = check_shape(shape)
        kind = check_dtype(np.dtype(dtype))
        if not dims:
            raise ValueError("a cluster array needs at least one dimension to split")
        axis = _axis(axis, len(dims))
        nbytes = math.prod(dims) * kind.itemsize
        if like is not None and chunks is None and like.axis == axis and like.shape[axis] == dims[axis]:
            offsets = list(like.chunks)
            known = like.chunk_futures("making an array like it")
            homes = like.homes if like.homes is not None else self._store.homes(known)
        else:
            offsets = self._offsets(dims[axis], nbytes, chunks)
            homes = self._store.spread(len(offsets) - 1)
        name = name or self._store.new_name()
        prefix = self._store.key(name)
        futures = []
        for i in range(len(offsets) - 1):
            chunk_shape = (*dims[:axis], offsets[i + 1] - offsets[i], *dims[axis + 1 :])
            futures.append(
                self._store.client.submit(
                    make_chunk,
                    chunk_shape,
                    kind.str,
                    "C",
                    fill,
                    key=(prefix, i),
                    workers=homes[i],
                    allow_other_workers=homes[i] is not None,
                    pure=False,
                )
            )
        made = ClusterArray(self._store, name, dims, kind, axis, offsets, futures)
        made.homes = homes
        return made

    def empty(
        self,
        shape: int | Iterable[int],
        dtype: Any = float,
        *,
        axis: int = 0,
        chunks: object = None,
        name: str | None = None,
    ) -> ClusterArray:
        """A new uninitialised cluster array, each chunk made on its worker. ``chunks``:
        None (one per worker thread, more if one would exceed 128 MiB), an int or lengths."""
        return self._make(shape, dtype, None, axis, chunks, name, None)

    def zeros(
        self,
        shape: int | Iterable[int],
        dtype: Any = float,
        *,
        axis: int = 0,
        chunks: object = None,
        name: str | None = None,
    ) -> ClusterArray:
        """A new cluster array of zeros, each chunk made on its worker."""
        return self._make(shape, dtype, 0, axis, chunks, name, None)

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, *, axis: int = 0,
        chunks: object = None, name: str | None = None,
    ) -> ClusterArray:  # fmt: skip
        """A new cluster array filled with ``fill_value`` (dtype: ``fill_value``'s)."""
        kind = np.asarray(fill_value).dtype if dtype is None else dtype
        return self._make(shape, kind, fill_value, axis, chunks, name, None)

    def _like(self, a: Any, dtype: Any, fill: Any, chunks: object, name: str | None) -> ClusterArray:
        if isinstance(a, ClusterArray):
            return self._make(a.shape, a.dtype if dtype is None else dtype, fill, a.axis, chunks, name, a)
        a = np.asanyarray(a)
        return self._make(a.shape, a.dtype if dtype is None else dtype, fill, 0, chunks, name, None)

    def empty_like(
        self, a: Any, dtype: Any = None, *, chunks: object = None, name: str | None = None
    ) -> ClusterArray:
        """Like ``a`` (a cluster array: same chunks on the same workers), uninitialised."""
        return self._like(a, dtype, None, chunks, name)

    def zeros_like(
        self, a: Any, dtype: Any = None, *, chunks: object = None, name: str | None = None
    ) -> ClusterArray:
        """Like ``a`` (a cluster array: same chunks on the same workers), of zeros."""
        return self._like(a, dtype, 0, chunks, name)

    def full_like(
        self, a: Any, fill_value: Any, dtype: Any = None, *, chunks: object = None, name: str | None = None
    ) -> ClusterArray:
        """Like ``a`` (a cluster array: same chunks on the same workers), filled."""
        return self._like(a, dtype, fill_value, chunks, name)

    def asarray(
        self, a: Any, dtype: Any = None, *, axis: int = 0, chunks: object = None, name: str | None = None
    ) -> ClusterArray:
        """``a`` as a cluster array: ``a`` itself if it is one (of that dtype), else a local
        array's chunks scattered once, each straight to its worker. Dask cannot recompute
        scattered chunks: a worker lost with one makes the array raise WorkerCrashedError."""
        self._check_open()
        if isinstance(a, ClusterArray) and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        source = np.asarray(a, dtype=dtype)
        check_dtype(source.dtype)
        if source.ndim == 0:
            raise ValueError("a cluster array needs at least one dimension to split")
        axis = _axis(axis, source.ndim)
        offsets = self._offsets(source.shape[axis], source.nbytes, chunks)
        homes = self._store.spread(len(offsets) - 1)
        futures = []
        for i in range(len(offsets) - 1):
            chunk = np.ascontiguousarray(source[(slice(None),) * axis + (slice(offsets[i], offsets[i + 1]),)])
            futures.append(self._store.client.scatter(chunk, workers=homes[i], hash=False, direct=False))
            self._store.count(sent=chunk.nbytes)
        made = ClusterArray(
            self._store, name or self._store.new_name(), source.shape, source.dtype, axis, offsets, futures
        )
        made.homes = homes
        return made

    def free(self, a: ClusterArray) -> None:
        """Release ``a``'s chunks on the cluster now, instead of when ``a`` is collected."""
        self._check_open()
        if not isinstance(a, ClusterArray) or a.freed:
            raise ValueError("free() takes a cluster array of this pool that was not freed yet")
        a.release()

    # ---- map -----------------------------------------------------------------------------

    def map(
        self,
        kernel: Callable[..., Any],
        /,
        *arrays: Any,
        axis: int = 0,
        chunks: int | Iterable[int] | None = None,
        progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """``Pool.map`` over cluster arrays: chunk *i* runs on the worker holding chunk *i*
        and writes in place there; only the kernel's return values come back.

        ``chunks`` None uses the first array's chunks; other chunks (or arrays chunked
        differently, or along another axis) are re-split on the workers, and the arrays
        keep the map's chunks afterwards. ``whole()`` arguments are read-only here.
        """
        self._check_open()
        request, plan = self._check_map(kernel, arrays, axis, chunks, progress, timeout, kwargs)
        if len(plan.offsets) == 1:
            return []
        bar = (
            open_bar(request.plan.length, request.bar_options, "index", request.name)
            if request.bar_options is not None
            else None
        )
        call = MapCall(request, bar, self._ended)
        with self._lock:
            self._calls.add(call)
        try:
            call.run = ClusterMapRun(self._store, request, plan)
        except BaseException:
            self._ended(call, None)
            if bar is not None:
                bar.close()
            raise
        return call.run_to_end()

    def _check_map(
        self, kernel: Any, args: tuple[Any, ...], axis: object, chunks: object, progress: object,
        timeout: object, kwargs: dict[str, Any],
    ) -> tuple[MapRequest, MapArrays]:  # fmt: skip
        check_callable(kernel, "kernel")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        slots: dict[int, int] = {}
        unique: list[ClusterArray] = []
        axes: list[int] = []
        layout: list[int] = []
        wholes: dict[int, Any] = {}
        for i, arg in enumerate(args):
            if isinstance(arg, Whole):
                if isinstance(arg.obj, ClusterArray):
                    raise TypeError(f"the whole() argument {i} is a cluster array; pass its gather() instead")
                wholes[i] = arg.obj
                layout.append(-1)
                continue
            if not isinstance(arg, ClusterArray):
                raise TypeError(
                    f"positional argument {i} of on_cluster.map is a {type(arg).__name__}, not a cluster "
                    "array; make one with pool.on_cluster.asarray(a), or wrap it in shmpool.whole()"
                )
            if id(arg) not in slots:
                slots[id(arg)] = len(unique)
                unique.append(arg)
                axes.append(_axis(axis, arg.ndim))
            layout.append(slots[id(arg)])
        if not unique:
            raise ValueError("on_cluster.map needs at least one cluster array to split into chunks")
        lengths = {a.shape[x] for a, x in zip(unique, axes, strict=True)}
        if len(lengths) > 1:
            shapes = ", ".join(f"{a.name}: {a.shape}" for a in unique)
            raise ValueError(
                f"arrays split along axis {axis} must have the same length along it; got {shapes}"
            )
        length = lengths.pop()
        first = unique[0]
        if chunks is None and first.axis == axes[0]:
            offsets = list(first.chunks)
        else:
            offsets = self._offsets(length, sum(a.nbytes for a in unique), chunks)
        bar_options = resolve_progress(progress, self._default_progress)
        seconds = check_timeout(timeout)
        split = SplitArgs({}, {}, wholes, length, 0, len(args))
        plan = plan_chunks(length, [b - a for a, b in itertools.pairwise(offsets)] or None, 1, 0)
        name = kernel_name(kernel)
        request = MapRequest(kernel, name, split, plan, kwargs, bar_options, seconds)
        return request, MapArrays(unique, axes, tuple(layout), offsets)

    def _ended(self, call: MapCall, outcome: MapOutcome | None) -> None:
        with self._lock:
            self._calls.discard(call)
            self._idle.notify_all()
            if outcome is not None:
                self.maps += 1
                self.chunks += outcome.chunks_run
        if outcome is not None:
            self._store.count(sent=outcome.bytes_in, received=outcome.bytes_back)

    def shutdown(self, *, kill: bool) -> None:
        """Stop (kill) or wait for (close) the maps in flight, then release every array."""
        with self._lock:
            calls = list(self._calls)
        if kill:
            for call in calls:
                call.abort(PoolClosedError("the DaskPool was terminated while this map ran"))
        with self._lock:
            self._idle.wait_for(lambda: not self._calls, timeout=30)
        self._store.release_all()


def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of {ndim} dimension(s)")
    return axis % ndim
