"""What runs on a Dask worker for cluster arrays: make, read, write, re-split and map chunks,
and cut and join the pieces of halo views.

Like :mod:`shmpool._dask_worker`, it holds no state of the caller, and imports no Dask at
import time (``take`` imports it when it runs, on a worker). A
chunk is an ordinary NumPy array held by Dask as the result of a task. Writes happen in
place on that object and the task returns it, so the new key's value is the very same
memory (nothing is copied); the caller then drops the old key. Dask sees every key keep
the value it was computed with, provided nothing else still reads the old key.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from ._dask_worker import Payload, call_kernel, enter_worker
from ._halo import Run, clear_chunk, enter_chunk
from ._protocol import RemoteError
from ._worker import remote_error

__all__ = [
    "HaloFrame",
    "assign",
    "cut",
    "halo_view",
    "make_chunk",
    "outcome_of",
    "pick",
    "read",
    "resplit",
    "run_on_chunks",
    "take",
]

Array = np.ndarray  # type: ignore[type-arg]


def make_chunk(shape: tuple[int, ...], dtype: str, order: str, fill: Any) -> Array:
    """A new chunk, made here: ``fill`` None leaves it uninitialised, else it is filled."""
    if fill is None:
        return np.empty(shape, dtype=np.dtype(dtype), order=order)  # type: ignore[call-overload,no-any-return]
    return np.full(shape, fill, dtype=np.dtype(dtype), order=order)  # type: ignore[call-overload,no-any-return]


def _writable(chunk: Array) -> Array:
    # A chunk that arrived from another worker may sit in a read-only receive buffer.
    return chunk if chunk.flags.writeable else chunk.copy(order="K")


def read(chunk: Array, key: tuple[Any, ...]) -> Array:
    """``chunk[key]``, cut here: only the rows a read touches go back to the caller."""
    return np.ascontiguousarray(chunk[key])


def assign(chunk: Array, key: tuple[Any, ...], value: Any) -> Array:
    """``chunk[key] = value`` in place; the chunk (the same object) is the new key's value."""
    target = _writable(chunk)
    target[key] = value
    return target


def resplit(along: int, keys: list[tuple[Any, ...]], *sources: Array) -> Array:
    """A new chunk: ``source[key]`` of each source chunk, joined along ``along``. This is
    how a map re-splits an array whose chunks differ from the map's: worker to worker."""
    parts: list[Array] = [source[key] for source, key in zip(sources, keys, strict=True)]
    if len(parts) == 1:
        single: Array = parts[0].copy(order="K")
        return single
    joined: Array = np.concatenate(parts, axis=along)
    return joined


def _along(axis: int, part: slice) -> tuple[slice, ...]:
    return (slice(None),) * axis + (part,)


def _source(run: Run) -> slice:
    """The indices a run takes along the axis (one index for a step of 0, broadcast)."""
    _, count, source, step = run
    assert source is not None
    if step == 1:
        return slice(source, source + count)
    if step == -1:
        return slice(source, source - count if source >= count else None, -1)
    return slice(source, source + 1)


def cut(chunk: Array, axis: int, runs: tuple[Run, ...]) -> Array:
    """The part of ``chunk`` a neighbour's halo view needs: the runs' indices along
    ``axis``, one after the other (a step-0 run gives its one index once). Run on the
    worker holding the chunk, so that only this piece moves to the chunk that needs it."""
    return np.concatenate([chunk[_along(axis, _source(run))] for run in runs], axis=axis)


# One halo argument of one chunk (see _cluster_halo): its position, the map's axis, the
# view's shape and dtype, the constant and the runs it fills, and for each piece the
# runs it supplies and, when the array is split along another axis, where along that axis.
HaloFrame = tuple[
    int, int, tuple[int, ...], str, Any, tuple[tuple[int, int], ...],
    tuple[tuple[tuple[int, int, int] | None, tuple[Run, ...]], ...],
]  # fmt: skip


def halo_view(frame: HaloFrame, pieces: tuple[Array, ...]) -> Array:
    """A halo view, read-only, built from its pieces: the chunk itself (when it is this
    array's chunk) and what :func:`cut` took from the others."""
    _, axis, shape, dtype, fill, fills, parts = frame
    first = pieces[0] if pieces else None
    order = "F" if first is not None and first.flags.f_contiguous and not first.flags.c_contiguous else "C"
    view: Array = np.empty(shape, dtype=np.dtype(dtype), order=order)  # type: ignore[call-overload]
    for at, count in fills:
        view[_along(axis, slice(at, at + count))] = fill
    for piece, (other, runs) in zip(pieces, parts, strict=True):
        for run in runs:
            target = [slice(None)] * len(shape)
            target[axis] = slice(run[0], run[0] + run[1])
            if other is not None:  # the array is split along another axis: this chunk's part
                target[other[0]] = slice(other[1], other[2])
            view[tuple(target)] = piece[_along(axis, _source(run))]
    view.flags.writeable = False
    return view


def pick(outputs: tuple[Any, ...], slot: int) -> Any:
    """One chunk of a map task's outputs (the same object: nothing is copied)."""
    return outputs[slot]


def take(key: str, slot: int) -> Any:
    """Output ``slot`` of the map task ``key`` in this worker's memory, as a new root key.

    Not a dependency on purpose (see ``ClusterMapRun._adopt``): the key is read from the
    worker's store directly, so the scheduler keeps no history behind the chunk. Run
    anywhere else, or after the key is gone, it raises: such a chunk cannot be recomputed.
    """
    from distributed import get_worker  # only ever called on a Dask worker

    data = get_worker().data
    if key not in data:
        raise LookupError(f"{key} is not in this worker's memory: the chunk was lost with its worker")
    outputs: Any = data[key]
    return outputs[slot]


def outcome_of(outputs: tuple[Any, ...]) -> tuple[bytes | None, RemoteError | None]:
    """The small part of a map task's outputs, which is all that goes back to the caller."""
    return outputs[0], outputs[1]


def _load(spec: bytes | Payload) -> tuple[Any, ...]:
    raw = spec.raw if isinstance(spec, Payload) else spec
    kernel, arguments, layout, joins = pickle.loads(raw)
    wholes, kwargs = pickle.loads(arguments)
    return pickle.loads(kernel), wholes, kwargs, layout, joins


def _read_only(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.flags.writeable:
        obj = obj.view()
        obj.flags.writeable = False
    return obj


def run_on_chunks(
    spec: bytes | Payload, caller: str, index: int, where: tuple[Any, ...], *chunks: Array
) -> tuple[Any, ...]:
    """Run the kernel on chunk ``index`` of each distinct array, in place.

    ``where``: ``(start, stop, length, margins, frames)``, what :func:`shmpool.chunk_info`
    tells the kernel, and a :data:`HaloFrame` for each halo() argument. ``chunks``: chunk
    ``index`` of each distinct array, then every chunk of each cluster array passed
    ``whole()`` (joined here), then the pieces of each halo view (built here, read-only:
    neighbouring chunks read the same indices). Returns ``(result bytes, error, *chunks)``: the
    chunks are the objects the kernel wrote (the arrived ones, unless they had to be made
    writable). ``whole()`` arrays are read-only here: a write to one would stay on this
    worker and be lost.
    """
    try:
        kernel, wholes, kwargs, layout, joins = _load(spec)
    except Exception as exc:
        return (None, remote_error(exc, None), *chunks)
    enter_worker(caller)
    split = max((slot for slot in layout if slot >= 0), default=-1) + 1
    views = [_writable(c) for c in chunks[:split]]
    joined: list[Array] = []
    at = split
    for along, count, shape, dtype in joins:
        parts = chunks[at : at + count]
        if count == 0:  # a zero-length array has no chunks
            joined.append(np.empty(shape, dtype=np.dtype(dtype)))
        else:
            joined.append(np.concatenate(parts, axis=along) if count > 1 else np.asarray(parts[0]))
        at += count
    start, stop, length, margins, frames = where
    halos: dict[int, Array] = {}
    for frame in frames:
        count = len(frame[6])
        halos[frame[0]] = halo_view(frame, chunks[at : at + count])
        at += count
    args: list[Any] = []
    for position, slot in enumerate(layout):
        if position in halos:
            args.append(halos[position])
        elif slot >= 0:
            args.append(views[slot])
        elif slot == -1:
            args.append(_read_only(wholes[position]))
        else:
            args.append(_read_only(joined[-slot - 2]))
    enter_chunk(index, start, stop, length, margins)
    try:
        packed, error = call_kernel(kernel, args, kwargs, index)
    finally:
        clear_chunk()
    return (packed, error, *views)
