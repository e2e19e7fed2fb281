"""Chunk planning: how ``map`` splits a length along an axis.

The automatic rule (``chunks=None``): enough chunks that every worker gets about
``CHUNKS_PER_WORKER`` of them (so a slow chunk does not leave the others idle), more when
the arrays are big so no chunk holds much over ``TARGET_CHUNK_BYTES`` (progress stays
smooth and a chunk stays cache-friendly), never more than ``MAX_AUTO_CHUNKS`` (per-chunk
overhead is a few microseconds; this bounds it) and never more than the length.
"""

from __future__ import annotations

import math
import numbers
from array import array
from collections.abc import Sequence

from ._records import record

__all__ = ["CHUNKS_PER_WORKER", "MAX_AUTO_CHUNKS", "TARGET_CHUNK_BYTES", "ChunkPlan", "plan_chunks"]

CHUNKS_PER_WORKER = 4
TARGET_CHUNK_BYTES = 4 << 20
MAX_AUTO_CHUNKS = 4096


@record
class ChunkPlan:
    """Chunk boundaries along one axis: uniform ``size`` chunks, or explicit ``offsets``.

    ``offsets`` (when given) holds the start of every chunk followed by ``length``.
    """

    length: int
    size: int
    offsets: array | None = None  # type: ignore[type-arg]

    def __reduce__(self) -> tuple[object, ...]:
        return (ChunkPlan, (self.length, self.size, self.offsets))

    def __len__(self) -> int:
        if self.offsets is not None:
            return len(self.offsets) - 1
        return -(-self.length // self.size) if self.length else 0

    def bounds(self, index: int) -> tuple[int, int]:
        """``(start, stop)`` of chunk ``index``."""
        if self.offsets is not None:
            return self.offsets[index], self.offsets[index + 1]
        start = index * self.size
        return start, min(start + self.size, self.length)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def plan_chunks(length: int, chunks: object, workers: int, bytes_per_index: int) -> ChunkPlan:
    """Plan the chunks of a map over ``length`` indices (see the module docstring).

    ``chunks`` is None (automatic), an int (indices per chunk; the last may be shorter) or
    a sequence of positive ints summing to ``length``. Anything else raises ValueError.
    """
    if chunks is None:
        wanted = max(CHUNKS_PER_WORKER * workers, math.ceil(length * bytes_per_index / TARGET_CHUNK_BYTES))
        count = max(1, min(wanted, MAX_AUTO_CHUNKS, length))
        return ChunkPlan(length, max(1, -(-length // count)))
    if _is_int(chunks):
        size = int(chunks)  # type: ignore[call-overload]
        if size <= 0:
            raise ValueError(f"chunks must be a positive number of indices per chunk, got {size}")
        return ChunkPlan(length, size)
    if (isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes))) or _is_array_like(chunks):
        sizes = list(chunks)  # type: ignore[call-overload]
        if not all(_is_int(s) for s in sizes):
            raise ValueError(f"chunks must be a sequence of ints, got {chunks!r}")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every chunk length must be positive, got {sizes}")
        if sum(sizes) != length:
            raise ValueError(f"chunk lengths sum to {sum(sizes)} but the length along the axis is {length}")
        offsets = array("q", [0])
        for s in sizes:
            offsets.append(offsets[-1] + int(s))
        return ChunkPlan(length, 0, offsets)
    raise ValueError(f"chunks must be None, a positive int or a sequence of positive ints, got {chunks!r}")


def _is_array_like(value: object) -> bool:
    return hasattr(value, "__array__") and getattr(value, "ndim", None) == 1
