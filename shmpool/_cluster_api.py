"""The cluster arrays of one DaskPool: made on the workers, split for maps, freed.

A DaskPool's ``empty``, ``zeros``, ``full``, ``*_like`` and ``asarray`` (the front end's,
shared by every pool) reach :meth:`ClusterArrays.make` through the backend's ``allocate``;
its ``map`` reaches :meth:`ClusterArrays.split` through the backend's ``split_own`` when
the arguments are cluster arrays. So a map over them goes through the front end's
:class:`~shmpool._calls.MapCall` (waiting, deadline, Ctrl-C, cancel, error choice) as every
map does, and only the run (:mod:`shmpool._cluster_map`) is the cluster's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import Whole
from ._chunks import ChunkPlan, plan_chunks
from ._cluster_array import ClusterArray, ClusterStore
from ._cluster_halo import HaloArg
from ._cluster_map import ClusterSplit, MapArrays
from ._cluster_worker import make_chunk
from ._halo import Halo, HaloSpec, check_halos, written_halo_error

__all__ = ["DEFAULT_CHUNK_BYTES", "ClusterArrays"]

# Automatic chunks of a cluster array: one per worker thread, more when that would make a
# chunk bigger than this (Dask's own default chunk size): a task costs about a millisecond
# of scheduling, so chunks are far bigger than a SharedPool's.
DEFAULT_CHUNK_BYTES = 128 << 20


class ClusterArrays:
    """Makes the cluster arrays of one DaskPool and checks the maps over them."""

    def __init__(self, store: ClusterStore, workers: Callable[[], int]):
        self._store = store
        self._workers = workers

    def owns(self, a: Any) -> bool:
        """Whether ``a`` is a cluster array of this pool that was not freed."""
        return isinstance(a, ClusterArray) and a.belongs_to(self._store) and not a.freed

    def _offsets(self, length: int, nbytes: int, chunks: object) -> list[int]:
        if chunks is None:
            count = max(self._workers(), math.ceil(nbytes / DEFAULT_CHUNK_BYTES))
            chunks = max(1, -(-length // max(1, min(count, length))))
        plan = plan_chunks(length, chunks, self._workers(), nbytes // length if length else 0)
        return [plan.bounds(i)[0] for i in range(len(plan))] + [length]

    def make(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        order: str,
        zero: bool,
        like: Any,  # type: ignore[type-arg]
    ) -> ClusterArray:
        """A new cluster array, each chunk made on its worker (zeros when ``zero``). Like a
        cluster array of the same length, it takes that array's chunks and their workers;
        otherwise one chunk per worker thread (more if one would exceed 128 MiB). A 0-d
        array is one chunk."""
        # The split axis of a new array is its first; a map along another re-splits it.
        axis, length = 0, shape[0] if shape else 1
        nbytes = math.prod(shape) * dtype.itemsize
        if isinstance(like, ClusterArray) and shape and like.axis == 0 and like.shape[:1] == shape[:1]:
            offsets = list(like.chunks)
            known = like.chunk_futures("making an array like it")
            homes = like.homes if like.homes is not None else self._store.homes(known)
        else:
            offsets = [0, 1] if not shape else self._offsets(length, nbytes, None)
            homes = self._store.spread(len(offsets) - 1)
        name = self._store.new_name()
        prefix = self._store.key(name)
        futures = []
        for i in range(len(offsets) - 1):
            chunk_shape = (offsets[i + 1] - offsets[i], *shape[1:]) if shape else ()
            task = self._store.client.submit(
                make_chunk, chunk_shape, dtype.str, order, 0 if zero else None,
                key=(prefix, i), workers=homes[i], allow_other_workers=homes[i] is not None, pure=False,
            )  # fmt: skip
            futures.append(task)
        made = ClusterArray(self._store, name, shape, dtype, axis, offsets, futures)
        made.homes = homes
        return made

    def split(
        self, args: tuple[Any, ...], axis: object, chunks: object
    ) -> tuple[ClusterSplit, ChunkPlan] | None:
        """The split and plan of a map over cluster arrays; None if ``args`` hold none (a
        map over NumPy arrays). Cluster arrays and chunked NumPy arrays do not mix: a map
        runs either where its arrays live or from this process."""
        if not any(
            isinstance(a.obj if isinstance(a, Whole) else a.array if isinstance(a, Halo) else a, ClusterArray)
            for a in args
        ):
            return None
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        slots: dict[int, int] = {}
        unique: list[ClusterArray] = []
        axes: list[int] = []
        layout: list[int] = []
        wholes: dict[int, Any] = {}
        joined: list[ClusterArray] = []
        halos: list[HaloArg] = []
        ordered: list[tuple[ClusterArray, int]] = []  # split arrays, halo ones too, by position
        for i, arg in enumerate(args):
            if isinstance(arg, Whole):
                if isinstance(arg.obj, ClusterArray):
                    self._check_mine(arg.obj, i)
                    joined.append(arg.obj)  # joined on each worker that runs a chunk
                    layout.append(-1 - len(joined))
                else:
                    wholes[i] = arg.obj
                    layout.append(-1)
                continue
            if isinstance(arg, Halo):
                if not isinstance(arg.array, ClusterArray):
                    raise TypeError(
                        f"positional argument {i} of map is a halo() of a {type(arg.array).__name__}, "
                        "while other arguments are cluster arrays: a map runs where cluster arrays "
                        "live, or over NumPy arrays from this process, not both; make it one with "
                        "pool.asarray(a) and pass halo() of that"
                    )
                array = self._checked(arg.array, i, axis)
                halos.append(HaloArg(i, array, axis % array.ndim, arg.spec))
                ordered.append((array, axis % array.ndim))
                layout.append(-1)  # unused: the worker puts the halo view at position i
                continue
            if not isinstance(arg, ClusterArray):
                raise TypeError(
                    f"positional argument {i} of map is not a cluster array ({type(arg).__name__}), "
                    "while other arguments are: a map runs where cluster arrays live, or over NumPy "
                    "arrays from this process, not both; make it one with pool.asarray(a), or pass it "
                    "read-only to every chunk with shmpool.whole(a)"
                )
            self._checked(arg, i, axis)
            if id(arg) not in slots:
                slots[id(arg)] = len(unique)
                unique.append(arg)
                axes.append(axis % arg.ndim)
            ordered.append((arg, axis % arg.ndim))
            layout.append(slots[id(arg)])
        if not ordered:
            raise ValueError("map needs at least one cluster array to split into chunks")
        lengths = {a.shape[x] for a, x in ordered}
        if len(lengths) > 1:
            shapes = ", ".join(f"{a.name}: {a.shape}" for a, _ in ordered)
            raise ValueError(
                f"arrays split along axis {axis} must have the same length along it; got {shapes}"
            )
        length = lengths.pop()
        if halos:
            self._check_halos(halos, unique, layout, length)
        first, first_axis = ordered[0]
        if chunks is None and first.axis == first_axis:
            offsets = list(first.chunks)  # automatic: where the first array's chunks are
        else:
            nbytes = sum(a.nbytes for a in unique) + sum(h.array.nbytes for h in halos)
            offsets = self._offsets(length, nbytes, chunks)
        plan = plan_chunks(length, [b - a for a, b in itertools.pairwise(offsets)] or None, 1, 0)
        arrays = MapArrays(unique, axes, tuple(layout), offsets, joined, halos)
        return ClusterSplit({}, {}, wholes, length, 0, len(args), cluster=arrays), plan

    def _checked(self, a: ClusterArray, position: int, axis: int) -> ClusterArray:
        """``a``, a split argument of a map along ``axis``, once checked."""
        self._check_mine(a, position)
        if not a.ndim:
            raise ValueError(
                f"positional argument {position} of map is a 0-d array, which has no axis to split; "
                "wrap it in shmpool.whole() to pass it to every call"
            )
        if not -a.ndim <= axis < a.ndim:
            raise ValueError(f"axis {axis} is out of bounds for argument {position} of shape {a.shape}")
        return a

    @staticmethod
    def _check_halos(
        halos: list[HaloArg], written: list[ClusterArray], layout: list[int], length: int
    ) -> None:
        """As for NumPy arrays: no depth beyond the length, and no halo array that the same
        map writes (a cluster array passed chunked is written in place; two cluster arrays
        never share chunks, and whole() ones are read-only)."""
        specs: dict[int, HaloSpec] = {h.position: h.spec for h in halos}
        check_halos(specs, {}, {}, length)
        for h in halos:
            for j, slot in enumerate(layout):
                if slot >= 0 and j not in specs and written[slot] is h.array:
                    raise written_halo_error(h.position, j)

    def _check_mine(self, a: ClusterArray, position: int) -> None:
        if not a.belongs_to(self._store):
            raise ValueError(f"positional argument {position} of map is a cluster array of another pool")
        a.chunk_futures("a map")  # freed, or its pool closed: ValueError now, before any task
