"""ClusterArray: an array whose chunks live in the memory of Dask workers, not the caller's.

A cluster array is split along one axis (``axis``) at ``chunks`` (the boundaries, from 0 to
the length); chunk *i* is the result of a Dask task, an ordinary NumPy array on one
worker, held through a Dask future. What moves through the caller:

- making one (a DaskPool's ``empty``, ``zeros``, ``full``, ``*_like``): only tasks; each
  worker makes its chunks (``full`` then writes the value into them, a task per chunk).
  ``asarray(a)`` makes empty chunks and writes ``a`` into them: each chunk's part travels
  once, scattered straight to its worker (over ``EMBED_LIMIT``) or inside its write task.
- reading (``a[key]``): each chunk the key touches sends the rows it touches, cut on the
  worker; ``np.asarray(a)`` and ``gather()`` fetch every chunk.
- writing (``a[key] = v``): each chunk the key touches gets the part of ``v`` it needs, and
  a task writes it in place there.
- a map over cluster arrays (:mod:`shmpool._cluster_map`): tasks and small results only.

Writes never change the value of a Dask key the caller still uses: a write is a task that
takes the chunk, writes into it in place (the same memory, nothing copied) and returns it
as a new key; the array then holds the new key's future and drops the old one. So Dask's
bookkeeping stays true (every key keeps the value it was computed with, since the old key
is dropped as it is superseded), while the data never moves. The price is that a
``to_dask()`` array made before a write sees the write, as a NumPy view would.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._cluster_worker import assign, read
from ._halo import accept_arrays
from .errors import WorkerCrashedError

__all__ = ["ClusterArray", "ClusterStore"]

Array = np.ndarray  # type: ignore[type-arg]
DaskClient = Any
DaskFuture = Any

# A value written with a[key] = v that is bigger than this travels by scatter, not inside
# its task: the scheduler keeps a task's arguments (to recompute it), and big ones would
# sit in the scheduler's memory for as long as the array lives.
EMBED_LIMIT = 1 << 20
_names = itertools.count(1)


class ClusterStore:
    """The cluster arrays of one pool: the client, the byte counters, and what to release."""

    def __init__(self, client: DaskClient, origin: str):
        self.client = client
        self.origin = origin
        self.closed = False
        self._arrays: weakref.WeakSet[ClusterArray] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.sent = 0
        self.received = 0

    def count(self, *, sent: int = 0, received: int = 0) -> None:
        """Add to the bytes sent to and received from the cluster."""
        with self._lock:
            self.sent += sent
            self.received += received

    def key(self, name: str) -> str:
        """A fresh Dask key prefix, readable on the dashboard."""
        return f"shmpool-{name}-{uuid.uuid4().hex[:12]}"

    def worker_addresses(self) -> list[str]:
        """The workers now, in a fixed order, to place chunk *i* on worker *i mod n*."""
        return sorted(self.client.scheduler_info()["workers"])

    def spread(self, count: int) -> list[list[str] | None]:
        """Where to put ``count`` new chunks: worker *i mod n* for chunk *i*."""
        workers = self.worker_addresses()
        return [[workers[i % len(workers)]] if workers else None for i in range(count)]

    def homes(self, futures: list[DaskFuture]) -> list[list[str] | None]:
        """The workers holding each chunk; a chunk not made yet goes where ``spread`` puts it."""
        holders = self.client.who_has(futures)
        found: list[list[str] | None] = [sorted(holders.get(f.key, ())) or None for f in futures]
        if any(h is None for h in found):
            spread = self.spread(len(futures))
            found = [h if h is not None else spread[i] for i, h in enumerate(found)]
        return found

    def add(self, array: ClusterArray) -> None:
        with self._lock:
            self._arrays.add(array)

    def release_all(self) -> None:
        """Release every array's chunks on the cluster (the pool is closing)."""
        self.closed = True
        with self._lock:
            arrays = list(self._arrays)
        for array in arrays:
            array.release()

    def new_name(self) -> str:
        return f"cluster-array-{next(_names)}"


def _normalise(key: Any, ndim: int) -> tuple[Any, ...] | None:
    """``key`` as one int or slice per axis, or None if it is not that simple (arrays,
    booleans, None, several Ellipses): such keys are read whole."""
    parts = key if isinstance(key, tuple) else (key,)
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, np.integer, slice, type(Ellipsis))):
            return None
    ellipses = sum(1 for p in parts if p is Ellipsis)
    if ellipses > 1:
        return None
    if ellipses:
        at = next(i for i, p in enumerate(parts) if p is Ellipsis)
        parts = parts[:at] + (slice(None),) * (ndim - len(parts) + 1) + parts[at + 1 :]
    if len(parts) > ndim:
        return None
    return tuple(parts) + (slice(None),) * (ndim - len(parts))


class ClusterArray:
    """An array kept in the memory of a DaskPool's workers (see :mod:`shmpool._cluster_array`).

    Made by a DaskPool's ``empty``, ``zeros``, ``full``, ``empty_like``, ``zeros_like``,
    ``full_like`` and ``asarray``, and mapped over by its ``map`` (and ``map_async``, and
    ``@shmpool.kernel``) where the chunks live. ``chunks`` are the chunk boundaries along
    ``axis``. Reading (``a[key]``, ``np.asarray(a)``, ``gather()``) returns NumPy arrays;
    ``a[key] = v`` writes on the workers. ``name`` names it in errors (settable). Its
    chunks are released when the last reference to it goes, on ``pool.free(a)``, and when
    the pool closes. It does not pickle: it cannot travel inside a task or a keyword.
    """

    def __init__(
        self,
        store: ClusterStore,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,  # type: ignore[type-arg]
        axis: int,
        offsets: Sequence[int],
        futures: list[DaskFuture],
    ):
        self._store = store
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.axis = axis
        self._offsets = tuple(int(o) for o in offsets)
        self._futures = futures
        self._freed = False
        # Where each chunk is, when known: the next map goes there without asking.
        self.homes: list[list[str] | None] | None = None
        self._lock = threading.RLock()  # a write replaces futures: readers see old or new
        store.add(self)

    # ---- what it is ----------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """The bytes its chunks hold on the cluster, in all."""
        return self.size * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk boundaries along ``axis``: ``(0, ..., length)``."""
        return self._offsets

    def belongs_to(self, store: ClusterStore) -> bool:
        """Whether this array is one of ``store``'s (of that pool)."""
        return self._store is store

    def __reduce__(self) -> Any:
        raise TypeError(
            f"cluster array {self.name!r} cannot be pickled: it lives on the cluster, and travels "
            "only as a map's positional argument (chunked, or whole()); gather() it to send its values"
        )

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d cluster array")
        return self.shape[0]

    def __repr__(self) -> str:
        state = "freed" if self._freed else f"{len(self._offsets) - 1} chunks along axis {self.axis}"
        return f"<ClusterArray {self.name!r} shape={self.shape} dtype={self.dtype} {state}>"

    # ---- its chunks, for the map run --------------------------------------------------------

    def bounds(self, index: int) -> tuple[int, int]:
        """``(start, stop)`` of chunk ``index`` along ``axis``."""
        return self._offsets[index], self._offsets[index + 1]

    def chunk_futures(self, what: str, needed: list[int] | None = None) -> list[DaskFuture]:
        """The chunks' futures, after checking that the array is usable and that none of
        the ``needed`` ones (default: all) was lost."""
        with self._lock:
            if self._freed:
                closed = " (its pool was closed)" if self._store.closed else ""
                raise ValueError(f"cluster array {self.name!r} was freed{closed}; {what} needs its chunks")
            futures = list(self._futures)
        check = range(len(futures)) if needed is None else needed
        lost = [i for i in check if futures[i].status in ("lost", "cancelled", "error")]
        if lost:
            raise self.lost_error(lost)
        return futures

    def lost_error(self, lost: list[int]) -> WorkerCrashedError:
        """The error for chunks whose data went with a Dask worker."""
        where = ", ".join(f"{i} (indices {self._offsets[i]}:{self._offsets[i + 1]})" for i in lost)
        return WorkerCrashedError(
            f"cluster array {self.name!r} lost chunk(s) {where} of axis {self.axis} with their Dask "
            "worker: Dask cannot recompute chunks that a map wrote or that came from this "
            "process (asarray, a large a[key] = v); make the array again",
            chunk=lost[0],
        )

    def fetch(self, tasks: list[DaskFuture], chunks: list[int] | None = None) -> list[Any]:
        """Gather ``tasks`` (reads of this array's chunks); if one failed because a chunk
        was lost meanwhile (Dask tried to recompute it and could not), say so."""
        try:
            return list(self._store.client.gather(tasks))
        except Exception:
            futures = self._futures
            check = range(len(futures)) if chunks is None else chunks
            lost = [i for i in check if futures[i].status in ("lost", "cancelled", "error")]
            if lost:
                raise self.lost_error(lost) from None
            raise

    def replace(
        self,
        axis: int,
        offsets: Sequence[int],
        futures: list[DaskFuture],
        *,
        homes: list[list[str] | None] | None = None,
    ) -> None:
        """Hold new chunks (a write's or a map's); the old ones are released. ``homes``:
        the workers the chunks are on, if known (the next map goes there without asking the
        scheduler)."""
        with self._lock:
            freed = self._freed
            if not freed:
                self.axis = axis
                self._offsets = tuple(int(o) for o in offsets)
                self._futures = futures
                self.homes = homes
        if freed:  # freed while the map ran (or the pool closed): drop its output too
            for future in futures:
                try:
                    future.release()
                except Exception:
                    pass  # the client is closing: its keys go with it

    def release(self) -> None:
        """Drop the chunks' futures: Dask frees their memory once no task needs them."""
        with self._lock:
            self._freed = True
            futures, self._futures = self._futures, []
        for future in futures:
            try:
                future.release()
            except Exception:
                pass  # the client is closing: its keys go with it

    @property
    def freed(self) -> bool:
        """Whether the chunks were released (free, or the pool closed)."""
        return self._freed

    # ---- reading and writing ----------------------------------------------------------------

    def gather(self) -> Array:
        """The whole array, fetched from the workers into a NumPy array here."""
        futures = self.chunk_futures("gather()")
        parts = self.fetch(futures)
        self._store.count(received=sum(p.nbytes for p in parts))
        if not parts:
            return np.empty(self.shape, dtype=self.dtype)
        return np.concatenate(parts, axis=self.axis) if len(parts) > 1 else np.asarray(parts[0])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Array:
        a = self.gather()
        return a if dtype is None else a.astype(dtype, copy=False)

    def _touched(self, part: Any) -> tuple[list[int], int, int, range | None]:
        """For the split axis's part of a key: the chunks touched, and the range of indices."""
        length = self.shape[self.axis]
        if isinstance(part, slice):
            rows = range(*part.indices(length))
            if not rows:
                return [], 0, 0, rows
            low, high = min(rows[0], rows[-1]), max(rows[0], rows[-1]) + 1
        else:
            index = int(part)
            if not -length <= index < length:
                raise IndexError(f"index {index} is out of bounds for axis {self.axis} with size {length}")
            low = index % length
            high, rows = low + 1, None
        chunks = [
            i for i in range(len(self._offsets) - 1) if self._offsets[i] < high and self._offsets[i + 1] > low
        ]
        return chunks, low, high, rows

    def __getitem__(self, key: Any) -> Any:
        parts = _normalise(key, self.ndim)
        if parts is None or not self.shape:
            return self.gather()[key]
        split = parts[self.axis]
        chunks, low, high, rows = self._touched(split)
        futures = self.chunk_futures("reading it", chunks)
        position = sum(1 for p in parts[: self.axis] if isinstance(p, slice))
        if not chunks:
            return np.broadcast_to(np.zeros((), self.dtype), self.shape)[key].copy()
        tasks = []
        for i in chunks:
            start, stop = self.bounds(i)
            cut = (*parts[: self.axis], slice(max(low, start) - start, min(high, stop) - start))
            tasks.append(
                self._store.client.submit(read, futures[i], cut + parts[self.axis + 1 :], pure=False)
            )
        pieces = self.fetch(tasks, chunks)
        self._store.count(received=sum(p.nbytes for p in pieces))
        block = np.concatenate(pieces, axis=position) if len(pieces) > 1 else pieces[0]
        if rows is None:
            local: Any = int(split) % self.shape[self.axis] - low
        else:
            first = rows[0] - low
            stop_at = first + rows.step * len(rows)
            local = slice(first, stop_at if stop_at >= 0 else None, rows.step)
        return block[(slice(None),) * position + (local,)]

    def __setitem__(self, key: Any, value: Any) -> None:
        parts = _normalise(key, self.ndim)
        if parts is None:
            raise TypeError(
                "a cluster array is written with ints, slices and Ellipsis only (not index arrays, "
                f"boolean masks or None), got {key!r}; for other keys, gather() it, write, and make "
                "it again with pool.asarray"
            )
        client = self._store.client
        if not self.shape:  # 0-d: one chunk, written whole
            with self._lock:
                (chunk,) = self.chunk_futures("writing to it")
                data = np.asarray(value, dtype=self.dtype)
                np.broadcast_shapes(data.shape, ())
                new = client.submit(assign, chunk, (), data.reshape(()), pure=False)
                self._store.count(sent=data.nbytes)
                self.replace(self.axis, self._offsets, [new], homes=self.homes)
            return
        with self._lock:
            split = parts[self.axis]
            chunks, _low, _high, rows = self._touched(split)
            futures = self.chunk_futures("writing to it", chunks)
            target = np.broadcast_to(np.zeros((), bool), self.shape)[parts].shape
            data = np.asarray(value, dtype=self.dtype)
            np.broadcast_shapes(data.shape, target)  # raises as NumPy would, before any send
            position = sum(1 for p in parts[: self.axis] if isinstance(p, slice))
            # Where the split axis is in the value, if the value has it (else it broadcasts).
            value_axis = position - (len(target) - data.ndim) if rows is not None else -1
            new = list(futures)
            for i in chunks:
                start, stop = self.bounds(i)
                piece = data
                if rows is None:
                    local: Any = int(split) % self.shape[self.axis] - start
                else:
                    inside = [j for j, r in enumerate(rows) if start <= r < stop]
                    first = rows[inside[0]] - start
                    stop_at = first + rows.step * len(inside)
                    local = slice(first, stop_at if stop_at >= 0 else None, rows.step)
                    if value_axis >= 0 and data.shape[value_axis] != 1:
                        cut = slice(inside[0], inside[-1] + 1)
                        piece = data[(slice(None),) * value_axis + (cut,)]
                sent: Any = piece
                if piece.nbytes > EMBED_LIMIT:  # straight to the worker holding the chunk
                    home = self.homes[i] if self.homes is not None else None
                    sent = client.scatter(np.ascontiguousarray(piece), workers=home, hash=False, direct=False)
                new[i] = client.submit(
                    assign,
                    futures[i],
                    (*parts[: self.axis], local, *parts[self.axis + 1 :]),
                    sent,
                    pure=False,
                )
                self._store.count(sent=piece.nbytes)
            self.replace(self.axis, self._offsets, new, homes=self.homes)

    def to_dask(self) -> Any:
        """A ``dask.array.Array`` over the same chunks, on the same workers (nothing moves).

        It sees the array as it is now and shares its memory: a later write or map over this
        array shows in it too, as in a NumPy view.
        """
        import dask.array

        da: Any = dask.array  # untyped: called through Any, as distributed is

        futures = self.chunk_futures("to_dask()")
        blocks = []
        for i, future in enumerate(futures):
            start, stop = self.bounds(i)
            shape = (*self.shape[: self.axis], stop - start, *self.shape[self.axis + 1 :])
            blocks.append(da.from_delayed(future, shape=shape, dtype=self.dtype))
        if not blocks:
            return da.empty(self.shape, dtype=self.dtype)
        return da.concatenate(blocks, axis=self.axis) if len(blocks) > 1 else blocks[0]


accept_arrays(ClusterArray)  # shmpool.halo() marks cluster arrays: their maps build the views
