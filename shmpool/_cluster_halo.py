"""Halo maps over cluster arrays: each chunk's task gets its margins, and nothing more.

A chunk of a cluster array lives on one worker, and its halo view needs indices that live
on others: the ``depth`` indices before and after it along the split axis (from one
neighbour, or several when chunks are shorter than the depth) and, at the ends of the
array, what the boundary rule takes (the far end for ``"periodic"``, the edge for
``"reflect"`` and ``"nearest"``). So for chunk *i* of the map, per halo() argument::

    cut(chunk_s, axis, runs)     on the worker holding chunk s, for each other chunk s
                                 that holds an index of the view: only those indices
    run_on_chunks(..., chunk_i, pieces)   builds the view from its own chunk and the
                                 pieces (Dask moves the pieces worker to worker)

Nothing passes through the caller but the tasks and their few numbers (the runs of
:meth:`shmpool._halo.HaloSpec.runs`). A halo array is only read, so it keeps its own
chunks: when they are not the map's (other boundaries, or another split axis), the cuts
take from each chunk the part of the view it holds, the chunk's own indices included, and
that part moves worker to worker every map (an array passed chunked is re-split once,
and keeps the map's chunks after it; a halo array is not).
"""

from __future__ import annotations

import bisect
import pickle
from dataclasses import dataclass
from typing import Any

from ._cluster_array import ClusterArray, ClusterStore
from ._cluster_worker import HaloFrame, cut
from ._halo import HaloSpec, Run

__all__ = ["HaloArg", "HaloPieces"]

DaskFuture = Any


@dataclass(frozen=True)
class HaloArg:
    """A halo() argument of a map over cluster arrays: its position, array, the map's
    (non-negative) axis, and how far its views reach."""

    position: int
    array: ClusterArray
    axis: int
    spec: HaloSpec


def _split_run(run: Run, offsets: tuple[int, ...]) -> list[tuple[int, Run]]:
    """``run`` (in the array's indices) cut where the chunks end: ``(chunk, run)`` pairs,
    each run in its chunk's own indices."""
    at, count, source, step = run
    assert source is not None
    found: list[tuple[int, Run]] = []
    while count:
        chunk = bisect.bisect_right(offsets, source) - 1
        low, high = offsets[chunk], offsets[chunk + 1]
        take = (
            min(count, high - source) if step == 1 else min(count, source - low + 1) if step == -1 else count
        )
        found.append((chunk, (at, take, source - low, step)))
        at, count, source = at + take, count - take, source + take * step
    return found


def _packed(runs: list[Run]) -> tuple[Run, ...]:
    """The runs of a piece that :func:`cut` made: its indices one after the other."""
    packed: list[Run] = []
    offset = 0
    for at, count, _, step in runs:
        packed.append((at, count, offset, 1 if step else 0))
        offset += count if step else 1
    return tuple(packed)


class HaloPieces:
    """The halo views of one map over cluster arrays: for each chunk, the pieces its task
    gets (submitting the cuts) and how it builds each view from them."""

    def __init__(
        self, store: ClusterStore, prefix: str, halos: list[HaloArg], offsets: list[int], where: str
    ):
        self._client = store.client
        self._prefix = prefix
        self._halos = halos
        self._offsets = offsets
        self.sources = [h.array.chunk_futures(where) for h in halos]
        self._homes = [
            h.array.homes if h.array.homes is not None else store.homes(sources)
            for h, sources in zip(halos, self.sources, strict=True)
        ]

    def aligned(self, k: int) -> bool:
        """Whether halo array ``k`` is split as the map is (its chunk *i* is the map's)."""
        array = self._halos[k].array
        return array.axis == self._halos[k].axis and list(array.chunks) == self._offsets

    def homes(self, k: int) -> list[list[str] | None]:
        """Where the chunks of halo array ``k`` are."""
        return self._homes[k]

    def chunk(
        self, index: int
    ) -> tuple[dict[int, tuple[int, int]], tuple[HaloFrame, ...], list[DaskFuture], int]:
        """For chunk ``index`` of the map: each halo argument's margin (by position), the
        frames its task builds the views by, the pieces (futures) it gets, and the bytes of
        numbers the caller sends for them (the frames and the cuts' runs)."""
        start, stop = self._offsets[index], self._offsets[index + 1]
        margins: dict[int, tuple[int, int]] = {}
        frames: list[HaloFrame] = []
        pieces: list[DaskFuture] = []
        sent = 0
        for k, arg in enumerate(self._halos):
            array, axis = arg.array, arg.axis
            length = array.shape[axis]
            runs, margins[arg.position] = arg.spec.runs(start, stop, length)
            shape = list(array.shape)
            shape[axis] = sum(run[1] for run in runs)
            fills = tuple((at, count) for at, count, source, _ in runs if source is None)
            taken = [run for run in runs if run[2] is not None]
            # Each chunk holding an index of the view, and the runs it supplies.
            supply: dict[int, list[Run]] = {}
            if array.axis == axis:
                for run in taken:
                    for chunk, part in _split_run(run, array.chunks):
                        supply.setdefault(chunk, []).append(part)
            elif taken:  # split along another axis: every chunk holds a slab of the view
                supply = {
                    s: list(taken)
                    for s in range(len(self.sources[k]))
                    if array.bounds(s)[0] < array.bounds(s)[1]
                }
            own = self.aligned(k) and index in supply
            order = ([index] if own else []) + [s for s in supply if not (own and s == index)]
            parts = []
            for s in order:
                other = None if array.axis == axis else (array.axis, *array.bounds(s))
                if own and s == index:  # this chunk itself, on this worker: no copy moves
                    pieces.append(self.sources[k][s])
                    parts.append((other, tuple(supply[s])))
                    continue
                home = self._homes[k][s]
                task = self._client.submit(
                    cut, self.sources[k][s], axis, tuple(supply[s]),
                    key=(f"{self._prefix}-halo-{arg.position}-{index}", s), workers=home,
                    allow_other_workers=home is not None, pure=False,
                )  # fmt: skip
                pieces.append(task)
                parts.append((other, _packed(supply[s])))
                sent += len(pickle.dumps(supply[s], protocol=5))
            frame: HaloFrame = (
                arg.position,
                axis,
                tuple(shape),
                array.dtype.str,
                arg.spec.fill,
                fills,
                tuple(parts),
            )
            frames.append(frame)
            sent += len(pickle.dumps(frame, protocol=5))
        return margins, tuple(frames), pieces, sent
