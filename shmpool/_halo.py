"""Halo (ghost-cell) maps: a chunked argument whose view reaches ``depth`` indices past its
chunk along the split axis, and :func:`chunk_info`, which tells a kernel where it is.

The margin is read from the array itself, where it already is: every backend hands the
worker the whole array (a shared block's view in a SharedPool worker, the caller's array
in a ThreadPool thread) and :meth:`HaloSpec.view` slices ``start - before : stop + after``
out of it, a view, so an interior chunk costs no copy at all. Only a chunk whose margin
runs past an end of the array, with a boundary other than ``"none"``, is built as a new
array of its own size: the part inside the array copied once, the part outside filled by
the boundary rule (``np.pad``'s ``symmetric``, ``wrap``, ``edge`` or ``constant``).

Halo views are read-only: chunks read each other's indices, so a write through a margin
would race with the neighbour that owns it. For the same reason a halo array must not share
memory with an array the same map may write (:func:`check_halos`).

This module is the front end's and the backends' both; it imports only NumPy.
"""

from __future__ import annotations

import numbers
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "BOUNDARIES",
    "ChunkInfo",
    "Halo",
    "HaloSpec",
    "HaloViews",
    "NO_MARGINS",
    "Run",
    "accept_arrays",
    "check_halos",
    "chunk_info",
    "chunk_slot",
    "clear_chunk",
    "current_chunk",
    "enter_chunk",
    "halo",
    "written_halo_error",
]

Array = np.ndarray  # type: ignore[type-arg]

BOUNDARIES = ("none", "reflect", "periodic", "nearest")


@dataclass(frozen=True, slots=True)
class HaloSpec:
    """How far a halo argument's views reach, and what fills them past the array's ends.

    ``fill`` is the constant (already of the array's dtype) when ``boundary`` is
    ``"constant"``, else None. Small and plain: it travels inside a SharedPool's MapJob.
    """

    before: int
    after: int
    boundary: str  # one of BOUNDARIES, or "constant"
    fill: Any = None

    def __reduce__(self) -> tuple[object, ...]:
        # Explicit: slotted frozen dataclasses pickle unreliably on Python 3.10.
        return (HaloSpec, (self.before, self.after, self.boundary, self.fill))

    def view(self, array: Array, axis: int, start: int, stop: int) -> tuple[Array, tuple[int, int]]:
        """The view of chunk ``start:stop`` of ``array`` along ``axis`` with its margin, and
        the margin ``(before, after)`` it got. A view of ``array`` when the margin lies
        inside it (always with ``"none"``, which clips); else a padded copy of its own size.
        """
        length = array.shape[axis]
        low, high = start - self.before, stop + self.after
        inner_low, inner_high = max(low, 0), min(high, length)
        inside = array[_along(axis, inner_low, inner_high)]
        if self.boundary == "none" or (low >= 0 and high <= length):
            return _read_only(inside), (start - inner_low, inner_high - stop)
        shape = list(array.shape)
        shape[axis] = high - low
        order: Literal["C", "F"] = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        padded = np.empty(shape, array.dtype, order=order)
        padded[_along(axis, inner_low - low, inner_high - low)] = inside
        for first, last in ((low, inner_low), (inner_high, high)):
            if first == last:
                continue
            target = _along(axis, first - low, last - low)
            if self.boundary == "constant":
                padded[target] = self.fill
            else:
                padded[target] = np.take(array, self._source(np.arange(first, last), length), axis=axis)
        padded.flags.writeable = False
        return padded, (self.before, self.after)

    def runs(self, start: int, stop: int, length: int) -> tuple[list[Run], tuple[int, int]]:
        """What the view of chunk ``start:stop`` holds, as runs, and its margin: for a backend
        that builds the view from pieces of the array (a DaskPool's cluster arrays).

        A run ``(at, count, source, step)`` puts ``count`` indices at ``at:at + count`` of the
        view, taken from the array's indices ``source, source + step, ...`` (``step`` is 1,
        -1 where ``"reflect"`` reverses, or 0 where ``"nearest"`` repeats one index);
        ``source`` is None for a run of the constant fill. The runs cover the view in order.
        """
        low, high = start - self.before, stop + self.after
        inner_low, inner_high = max(low, 0), min(high, length)
        if self.boundary == "none":
            low, high = inner_low, inner_high
        found: list[Run] = []
        for first, last, inside in (
            (low, inner_low, False),
            (inner_low, inner_high, True),
            (inner_high, high, False),
        ):
            if first >= last:
                continue
            if inside:  # one run
                found.append((first - low, last - first, first, 1))
            elif self.boundary == "constant":
                found.append((first - low, last - first, None, 0))
            else:
                found.extend(_runs_of(first - low, self._source(np.arange(first, last), length)))
        margin = (start - low, high - stop) if self.boundary == "none" else (self.before, self.after)
        return found, margin

    def _source(self, indices: Array, length: int) -> Array:
        """Where in the array each index outside it takes its value from."""
        source: Array
        if self.boundary == "periodic":
            source = indices % length
        elif self.boundary == "nearest":
            source = np.clip(indices, 0, length - 1)
        else:  # reflect: the edge element repeats (d c b a | a b c d | d c b a), a period of 2n
            folded = indices % (2 * length)
            source = np.where(folded < length, folded, 2 * length - 1 - folded)
        return source


# (at, count, source, step): see HaloSpec.runs.
Run = tuple[int, int, "int | None", int]


def _runs_of(at: int, sources: Array) -> list[Run]:
    """``sources`` (the array index for each view index from ``at`` on) as runs of step 1,
    -1 or 0. A margin holds at most ``depth`` indices, and the boundary rules give a few
    runs each (a reflection that wraps more than once gives one per pass)."""
    runs: list[Run] = []
    i, n = 0, len(sources)
    while i < n:
        first = int(sources[i])
        step = int(sources[i + 1]) - first if i + 1 < n else 1
        if step not in (-1, 0, 1):
            step = 1
        j = i + 1
        while j < n and int(sources[j]) == first + (j - i) * step:
            j += 1
        runs.append((at + i, j - i, first, step))
        i = j
    return runs


def _along(axis: int, low: int, high: int) -> tuple[slice, ...]:
    """The index of ``low:high`` along ``axis``, everything along the axes before it."""
    return (slice(None),) * axis + (slice(low, high),)


def _read_only(view: Array) -> Array:
    if view.flags.writeable:
        view = view.view()
        view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True)
class Halo:
    """Marks a chunked argument read with a margin (see :func:`halo`)."""

    array: Any  # a NumPy array, or an array type of accept_arrays (a DaskPool's own)
    spec: HaloSpec


# What halo() marks: NumPy arrays, and the array types a backend builds halo views of
# itself (a DaskPool's ClusterArray adds itself as its module loads: this module imports
# only NumPy, and the cluster modules import it).
_ARRAY_TYPES: list[type] = [np.ndarray]


def accept_arrays(kind: type) -> None:
    """Let :func:`halo` mark arrays of ``kind`` too: a backend's own arrays, whose maps
    build the views from pieces of the array (see :meth:`HaloSpec.runs`)."""
    if kind not in _ARRAY_TYPES:
        _ARRAY_TYPES.append(kind)


def _depth_pair(depth: object) -> tuple[int, int]:
    def one(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"halo depth must be an int or a pair of ints, got {depth!r}")
        if int(value) < 0:
            raise ValueError(f"halo depth must not be negative, got {depth!r}")
        return int(value)

    if isinstance(depth, tuple | list):
        if len(depth) != 2:
            raise TypeError(f"halo depth must be an int or a pair (before, after), got {depth!r}")
        return one(depth[0]), one(depth[1])
    return one(depth), one(depth)


def halo(array: Any, depth: int | tuple[int, int], boundary: str | float = "none") -> Halo:
    """Mark ``array`` as a chunked argument of ``map`` whose view reaches ``depth`` indices
    past its chunk on both sides along the split axis (``depth`` may be a pair
    ``(before, after)``), for stencils, filters and sliding windows.

    ``boundary`` says what the views hold past the ends of the array: ``"none"`` (nothing:
    the views of the first and last chunks are clipped to the array), ``"reflect"`` (the
    edge element repeats: NumPy's ``np.pad`` mode ``"symmetric"``), ``"periodic"`` (wraps
    around), ``"nearest"`` (the edge element, repeated) or a number (that constant). With
    any boundary but ``"none"`` every view has exactly ``depth`` extra indices on each side.
    Views are read-only, and interior chunks are views of ``array`` itself (no copy); only
    a chunk whose margin runs past an end, with a boundary other than ``"none"``, gets a
    padded copy of its own size. :func:`chunk_info` tells the kernel its chunk and margin.

    On a DaskPool, ``array`` may also be one of the pool's cluster arrays: each chunk runs
    where it lives, only the margins move to it (worker to worker), and every view is a
    read-only copy of its own size, built there.
    """
    if not any(isinstance(array, kind) for kind in _ARRAY_TYPES):  # (no narrowing to object)
        raise TypeError(
            f"halo() takes a NumPy array (or a DaskPool's cluster array), got {type(array).__name__}"
        )
    before, after = _depth_pair(depth)
    fill = None
    if isinstance(boundary, str):
        if boundary not in BOUNDARIES:
            raise ValueError(
                f"halo boundary must be one of {', '.join(BOUNDARIES)} or a number, got {boundary!r}"
            )
        kind = boundary
    elif isinstance(boundary, numbers.Number):
        kind = "constant"
        try:
            fill = np.array(boundary).astype(array.dtype, casting="unsafe")[()]
            exact = bool(fill == boundary)
        except (TypeError, ValueError, OverflowError):
            exact = False
        if not exact:
            raise ValueError(f"halo boundary {boundary!r} cannot be held exactly by dtype {array.dtype}")
    else:
        raise TypeError(f"halo boundary must be a string or a number, got {boundary!r}")
    return Halo(array, HaloSpec(before, after, kind, fill))


def check_halos(
    halos: dict[int, HaloSpec], arrays: dict[int, Array], others: dict[int, Any], length: int
) -> None:
    """Refuse, before anything runs, a depth beyond the array's length and a halo array
    that shares memory with an array of the map that is writable (``arrays``: the halo
    arrays by position; ``others``: every other positional argument by position)."""
    for i, spec in halos.items():
        if max(spec.before, spec.after) > length:
            raise ValueError(
                f"halo depth ({spec.before}, {spec.after}) of argument {i} is larger than its length "
                f"{length} along the split axis"
            )
        for j, other in others.items():
            if isinstance(other, np.ndarray) and other.flags.writeable and _may_share(arrays[i], other):
                raise written_halo_error(i, j)


def written_halo_error(halo_at: int, writer_at: int) -> ValueError:
    """The error for a halo() argument whose array another argument of the map may write."""
    return ValueError(
        f"argument {halo_at} of map is a halo() of an array that argument {writer_at} may write (they "
        "share memory); neighbouring chunks read each other's margins, so a halo input must not be "
        "written by the same map: write into another array (two buffers, swapped between maps), or "
        "pass the other argument read-only"
    )


# np.shares_memory solves a small integer program; past this much work it gives up and the
# pair is taken to overlap (refused, never silently wrong), as for the staging check.
_OVERLAP_MAX_WORK = 100_000
_TOO_HARD: type[Exception] = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)  # NumPy < 1.25


def _may_share(a: Array, b: Array) -> bool:
    try:
        return bool(np.shares_memory(a, b, max_work=_OVERLAP_MAX_WORK))
    except _TOO_HARD:
        return True


# ---- where a kernel is --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Where the running kernel call is (see :func:`chunk_info`).

    ``index``: the chunk's number; ``start``, ``stop``: its indices along the split axis;
    ``length``: the arrays' length along that axis; ``margins``: for each halo argument
    (by position), the ``(before, after)`` indices its view holds beyond the chunk;
    ``margin``: the first halo argument's, ``(0, 0)`` in a map without one.
    """

    index: int
    start: int
    stop: int
    length: int
    margins: Mapping[int, tuple[int, int]]

    @property
    def margin(self) -> tuple[int, int]:
        """The margin of the first halo argument, ``(0, 0)`` when there is none."""
        return next(iter(self.margins.values()), (0, 0))


# The chunk each thread is running: set by the backends' chunk loops, read by chunk_info.
# Each thread has a one-element list, which a loop fetches once per map and stores a plain
# tuple into per chunk (tens of nanoseconds; a call per chunk costs ten times that on the
# W1 hot path); chunk_info builds the ChunkInfo only when asked.
_where = threading.local()
_Where = tuple[int, int, int, int, Mapping[int, tuple[int, int]]]

# The margins of every chunk of a map without halo arguments: one shared, read-only mapping.
NO_MARGINS: Mapping[int, tuple[int, int]] = types.MappingProxyType({})


def chunk_slot() -> list[_Where | None]:
    """This thread's holder of its running chunk: ``slot[0] = (index, start, stop, length,
    margins)`` before a kernel call, None when no chunk runs."""
    slot: list[_Where | None] | None = getattr(_where, "slot", None)
    if slot is None:
        slot = _where.slot = [None]
    return slot


def enter_chunk(
    index: int, start: int, stop: int, length: int, margins: Mapping[int, tuple[int, int]]
) -> None:
    """Record, for this thread, the chunk its kernel call is about to run."""
    chunk_slot()[0] = (index, start, stop, length, margins)


def current_chunk() -> _Where | None:
    """This thread's recorded chunk, or None."""
    return chunk_slot()[0]


def clear_chunk() -> None:
    """This thread runs no chunk any more."""
    chunk_slot()[0] = None


def chunk_info() -> ChunkInfo | None:
    """Inside a kernel called by ``map`` (or ``map_async``, or a decorated kernel): where
    its chunk is, as a :class:`ChunkInfo` (index, ``start:stop``, the margins its halo
    arguments got). Outside a map, and in threads the kernel started itself: None.
    """
    value = current_chunk()
    return None if value is None else ChunkInfo(*value)


class HaloViews:
    """A backend's per-map helper: the halo views of one chunk, and :func:`enter_chunk`."""

    def __init__(self, halos: dict[int, HaloSpec], axes: dict[int, int], length: int):
        self._items = [(i, spec, axes[i]) for i, spec in halos.items()]
        self._length = length

    def place(
        self,
        args: list[Any],
        arrays: list[Any],
        index: int,
        start: int,
        stop: int,
        where: list[_Where | None],
    ) -> None:
        """Put chunk ``index``'s halo views into ``args`` (from the whole ``arrays``) and
        record the chunk for :func:`chunk_info` in ``where``, the running thread's
        :func:`chunk_slot`."""
        margins: dict[int, tuple[int, int]] = {}
        for i, spec, axis in self._items:
            args[i], margins[i] = spec.view(arrays[i], axis, start, stop)
        where[0] = (index, start, stop, self._length, margins)

    def views(
        self, arrays: dict[int, Array], start: int, stop: int
    ) -> dict[int, tuple[Array, tuple[int, int]]]:
        """Each halo argument's view of chunk ``start:stop`` and its margin (DaskPool ships them)."""
        return {i: spec.view(arrays[i], axis, start, stop) for i, spec, axis in self._items}
