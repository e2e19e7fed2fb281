"""A SharedPool's blocks in the parent: made, owned by the manager, freed, reused for staging.

Each block is a file in the pool's block folder (see :mod:`shmpool._segments`), mapped here
and registered with :mod:`shmpool._arrays` so that any array on it can be found by address.
The pool's :class:`~shmpool._segments.BlockManager` owns every block from the moment it is
made: it unlinks them on :meth:`BlockStore.free`, at shutdown and when this process dies.

Staging blocks (copies of plain arrays for one map) are kept for reuse by later maps: a
reused block is reserved and mapped already, here and in every worker, so staging the same
plain arrays again costs one memcpy each way instead of page faults.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Callable

import numpy as np

from . import _arrays
from ._segments import BlockManager, create_block, free_bytes, unlink_quietly
from .errors import ManagerError, PoolClosedError, SharedMemoryFullError

__all__ = ["STAGING_CACHE_BLOCKS", "BlockStore"]

# Staging blocks kept for reuse by later maps: enough for a map over a few plain arrays.
# They stay reserved in the block folder until reused, evicted or the pool closes, and are
# never kept when that would take more than the folder's free space.
STAGING_CACHE_BLOCKS = 4

Array = np.ndarray  # type: ignore[type-arg]


class BlockStore:
    """The blocks one pool has made and not freed, in the process that made them."""

    def __init__(self, folder: str, tag: str):
        self.folder = folder
        self.tag = tag
        self.manager: BlockManager | None = None
        # Tells the workers that blocks were freed (the dispatcher's release), once started.
        self.on_release: Callable[[tuple[str, ...]], None] | None = None
        self._lock = threading.Lock()
        self._blocks: dict[str, _arrays.Mapping] = {}
        self._staging_cache: list[_arrays.Mapping] = []
        self._closed = False

    @property
    def paths(self) -> list[str]:
        """The paths of the blocks this store holds now."""
        with self._lock:
            return list(self._blocks)

    def owns(self, a: Array) -> bool:
        """Whether ``a``'s memory lies in one of this store's blocks."""
        found = _arrays.locate(a)
        return found is not None and found[0].path in self._blocks

    def new_array(self, shape: tuple[int, ...], dtype: np.dtype, order: str) -> Array:  # type: ignore[type-arg]
        """An array on a new block, all zeros (a new block reads as zeros)."""
        nbytes = math.prod(shape) * dtype.itemsize
        entry = self._new_block(nbytes)
        try:
            array: Array = np.ndarray(shape, dtype, buffer=entry.mmap, order=order)  # type: ignore[call-overload,arg-type]
        except BaseException:
            self.free(entry.path)
            raise
        return array

    def _new_block(self, nbytes: int) -> _arrays.Mapping:
        if self._closed:
            raise PoolClosedError("this SharedPool is closed")
        try:
            path, mapping = create_block(self.folder, nbytes, self.tag)
        except SharedMemoryFullError:
            # Cached staging blocks are only a speed-up: they give way before the caller is
            # told the folder is full (a small /dev/shm, a Docker container's 64 MB).
            if not self._drop_staging_cache():
                raise
            path, mapping = create_block(self.folder, nbytes, self.tag)
        try:
            assert self.manager is not None
            self.manager.track(path)
        except BaseException as exc:
            mapping.close()
            unlink_quietly(path)
            if isinstance(exc, ManagerError) and self._closed:
                raise PoolClosedError("this SharedPool is closed") from None
            raise
        entry = _arrays.register(path, mapping)
        with self._lock:
            self._blocks[path] = entry
        return entry

    def free_array(self, a: Array) -> None:
        """Free the block that ``a`` lives in."""
        found = _arrays.locate(a)
        if found is not None:
            self.free(found[0].path)

    def free(self, path: str) -> None:
        """Unlink the block at ``path`` (through the manager), tell the workers, forget it."""
        with self._lock:
            if self._blocks.pop(path, None) is None:
                return
        try:
            if self.manager is None:
                raise ManagerError("no manager")
            self.manager.release(path)
        except ManagerError:
            unlink_quietly(path)  # the manager is gone (or shutting down): unlink it here
        if self.on_release is not None:
            self.on_release((path,))
        _arrays.forget(path)

    def staging_array(self, like: Array) -> Array:
        """A C-order array shaped like ``like`` to stage it, on a cached block of the right
        size when one is free (see :meth:`recycle`)."""
        size = max(like.nbytes, 1)
        with self._lock:
            entry = next((e for e in self._staging_cache if e.size == size), None)
            if entry is not None:
                self._staging_cache.remove(entry)
        if entry is None:
            return self.new_array(like.shape, like.dtype, "C")
        array: Array = np.ndarray(like.shape, like.dtype, buffer=entry.mmap)  # type: ignore[call-overload]
        return array

    def recycle(self, path: str, reusable: bool) -> None:
        """Keep a finished map's staging block for the next map, or free it.

        A block that anything still views (a result of the map), or that a run given up on
        may still be writing to (not ``reusable``), is freed instead: a later map can never
        overwrite data a caller holds.
        """
        entry = self._blocks.get(path)
        if entry is None:
            return
        # References: the registry's Mapping and getrefcount's own argument. Any more is
        # an ndarray built on the block that someone still holds.
        if not reusable or self._closed or sys.getrefcount(entry.mmap) > 2:
            self.free(path)
            return
        evicted = []
        with self._lock:
            cache = self._staging_cache
            cache.append(entry)
            room = free_bytes(self.folder)
            while len(cache) > STAGING_CACHE_BLOCKS or sum(e.size for e in cache) > room:
                evicted.append(cache.pop(0))
        for old in evicted:
            self.free(old.path)

    def _drop_staging_cache(self) -> bool:
        """Free every cached staging block now; whether there were any.

        Unlinking alone would not give the space back while workers still map the block
        (they unmap when the release message reaches them). A cached block has no array
        on it anywhere, so nothing touches its pages again: truncating it frees them at once.
        """
        with self._lock:
            cached, self._staging_cache = self._staging_cache, []
        for entry in cached:
            with contextlib.suppress(OSError):
                os.truncate(entry.path, 0)
            self.free(entry.path)
        return bool(cached)

    def close(self) -> list[str]:
        """Stop making blocks; forget every block here and return their paths (the caller
        has the manager unlink them, and unlinks what it could not reach)."""
        with self._lock:
            self._closed = True
            paths = list(self._blocks)
            self._blocks.clear()
            self._staging_cache.clear()
        for path in paths:
            _arrays.forget(path)
        return paths
