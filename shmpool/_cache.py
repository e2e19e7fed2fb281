"""The cache of a SharedPool's returned blocks: which one a new allocation may take.

A returned block is mapped and faulted already, in the parent and in every worker that
used it, so refilling it costs a memcpy where a fresh block costs a reservation and a page
fault per page in each process. The cache only chooses; the block store (which holds the
lock) maps, frees and truncates.

Fit: a request of ``n`` bytes takes the smallest cached block of at least ``n`` bytes and
at most ``n + max(n // 4, one page)``, so at most a fifth of any block handed out is
wasted (a quarter of the request), or less than a page, which tmpfs rounds up to anyway.

Bound: ``limit`` bytes and :data:`MAX_BLOCKS` blocks; past either, the least recently
returned blocks go first.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict

from ._sizing import memory_limit

__all__ = ["MAX_BLOCKS", "BlockCache", "default_cache_bytes", "fits"]

# Each cached block costs a mapping in every process that used it and, before Python
# 3.13, a descriptor in each: a few dozen keep a loop of several arrays fed.
MAX_BLOCKS = 64


def fits(size: int, need: int) -> bool:
    """Whether a block of ``size`` bytes may hold a request of ``need`` bytes."""
    return need <= size <= need + max(need // 4, mmap.PAGESIZE)


def default_cache_bytes(folder: str) -> int:
    """A quarter of the folder's size, and at most an eighth of the machine's memory (or
    of the memory cgroup's limit, when that is smaller).

    The cache holds memory the program has let go of; it gives way whenever an allocation
    needs the room, so its bound matters to the other users of the folder. A quarter of
    ``/dev/shm`` (itself half the memory by default) keeps several large arrays of an
    iterative job warm and leaves most of the folder to everyone else.
    """
    st = os.statvfs(folder)
    quarter = st.f_blocks * st.f_frsize // 4
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on Linux
        return quarter
    # In a container the machine's memory is not ours: its memory cgroup limit is.
    limit = memory_limit().limit
    if limit is not None:
        memory = min(memory, limit)
    return min(quarter, memory // 8)


class BlockCache:
    """Returned blocks by path, least recently returned first. Not thread-safe: the
    block store calls it under its lock."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self.bytes = 0

    def __contains__(self, path: object) -> bool:
        return path in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, path: str, size: int) -> list[str]:
        """Cache a returned block; return the paths that no longer fit (to be freed)."""
        self._sizes[path] = size
        self.bytes += size
        return self.over_limit()

    def over_limit(self) -> list[str]:
        """Take out the oldest blocks until the bound holds again; return them."""
        evicted = []
        while self._sizes and (self.bytes > self.limit or len(self._sizes) > MAX_BLOCKS):
            evicted.append(self.pop_oldest())
        return evicted

    def take(self, need: int) -> str | None:
        """Take out the best-fitting block for ``need`` bytes, if any fits."""
        best: str | None = None
        best_size = 0
        for path, size in self._sizes.items():
            if fits(size, need) and (best is None or size <= best_size):
                best, best_size = path, size  # the later of equal sizes: the most recent
        if best is not None:
            self.remove(best)
        return best

    def remove(self, path: str) -> None:
        """Take ``path`` out (it is in use again, or being freed)."""
        size = self._sizes.pop(path, None)
        if size is not None:
            self.bytes -= size

    def pop_oldest(self) -> str:
        """Take out the least recently returned block."""
        path, size = self._sizes.popitem(last=False)
        self.bytes -= size
        return path

    def bytes_under(self, prefix: str) -> int:
        """The bytes of the cached blocks whose paths start with ``prefix`` (one folder's)."""
        return sum(size for path, size in self._sizes.items() if path.startswith(prefix))

    def pop_oldest_under(self, prefix: str) -> str | None:
        """Take out the least recently returned block under ``prefix``, if there is one."""
        path = next((p for p in self._sizes if p.startswith(prefix)), None)
        if path is not None:
            self.remove(path)
        return path

    def clear(self) -> list[str]:
        """Take out every block; return them."""
        paths = list(self._sizes)
        self._sizes.clear()
        self.bytes = 0
        return paths
