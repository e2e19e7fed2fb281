"""A SharedPool's blocks in the parent: made, handed out, returned, reused and freed.

Each block is a file in the pool's block folder (see :mod:`shmpool._segments`), mapped here
and registered with :mod:`shmpool._arrays` so that any array on it can be found by address.
The pool's :class:`~shmpool._manager.BlockManager` owns every block from the moment it is
made: it unlinks them on :meth:`BlockStore.free`, at shutdown and when this process dies.

Lifetime. Every array handed out is built on a *lease*: a small buffer object over the
block's mmap (:func:`shmpool._arrays.make_lease`), made per allocation. NumPy keeps it as
the array's ``base``, and each view holds the array it views, so every view (slices,
transposes, views rebuilt from an ArrayRef, in any thread) holds the lease, and the lease dies exactly when the last view does. A
``weakref.finalize`` on it then queues the block as returned. The finalizer only queues
(an atomic ``deque.append``): it may run inside garbage collection, in any thread, with
any lock held, so the work (caching, evicting) is done by the next call on the store.

Reuse. A returned block joins the cache (:mod:`shmpool._cache`): it stays mapped here and
in the workers that used it, with its pages faulted, and the next allocation or staging
copy of a fitting size takes it. The cache gives way (its blocks truncated, unlinked and
unmapped everywhere) before a full folder is reported, and is bounded.

Fallback. When the default folder (``/dev/shm``) cannot hold a block even after the cache
gave way, and the user chose no folder, the block goes to a file-backed folder on disk
(:func:`shmpool._segments.fallback_for`), with one warning per pool. Later allocations try
the default folder first again, so a pool may hold blocks in both; the manager owns
blocks by path, wherever they are.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import threading
import types
import warnings
import weakref
from collections.abc import Callable

import numpy as np

from . import _arrays
from ._block_files import unlink_quietly
from ._cache import BlockCache
from ._detach import detach
from ._manager import BlockManager
from ._segments import create_block, free_bytes, map_fd
from .errors import ManagerError, PoolClosedError, SharedMemoryFallbackWarning, SharedMemoryFullError

__all__ = ["BlockStore"]

Array = np.ndarray  # type: ignore[type-arg]


class BlockStore:
    """The blocks one pool holds (handed out, returned and cached), in the process that
    made them."""

    def __init__(self, folder: str, tag: str, cache_bytes: int, fallback: str | None = None):
        self.folder = folder
        # Where blocks that do not fit in ``folder`` go (None: nowhere, a full folder raises).
        self.fallback = fallback
        self._fell_back = False  # warned already
        self.tag = tag
        self.manager: BlockManager | None = None
        # Tells the workers that blocks were freed (the dispatcher's release), once started.
        self.on_release: Callable[[tuple[str, ...]], None] | None = None
        self._lock = threading.Lock()
        self._blocks: dict[str, _arrays.Mapping] = {}
        # The live lease of each block handed out, and the token its finalizer will report.
        self._leases: dict[str, tuple[weakref.ref[object], int]] = {}
        self._tokens = itertools.count()
        self._returned: collections.deque[tuple[str, int]] = collections.deque()
        # Blocks a run given up on may still be writing: freed, never reused, once returned.
        self._tainted: set[str] = set()
        self._cache = BlockCache(cache_bytes)
        # Blocks handed out from the cache: free() gives them back to it, not to the folder.
        self._from_cache: set[str] = set()
        self._closed = False

    @property
    def paths(self) -> list[str]:
        """The paths of the blocks this store holds now, cached ones included."""
        with self._lock:
            return list(self._blocks)

    @property
    def cached_bytes(self) -> int:
        """The bytes of the blocks in the cache now."""
        self._collect()
        with self._lock:
            return self._cache.bytes

    def owns(self, a: Array) -> bool:
        """Whether ``a``'s memory lies in one of this store's blocks."""
        return self.locate(a) is not None

    def locate(self, a: Array) -> tuple[_arrays.Mapping, int] | None:
        """Where ``a`` lies (:func:`shmpool._arrays.locate`), if in one of this store's
        blocks; else None."""
        found = _arrays.locate(a)
        return found if found is not None and found[0].path in self._blocks else None

    # ---- handing out --------------------------------------------------------------------

    def new_array(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool) -> Array:  # type: ignore[type-arg]
        """An array on a cached block of a fitting size, else on a new block; all zeros
        when ``zero`` (a new block reads as zeros; a reused one is cleared)."""
        nbytes = max(math.prod(shape) * dtype.itemsize, 1)
        if self._closed:
            raise PoolClosedError("this SharedPool is closed")
        self._collect()
        with self._lock:
            path = self._cache.take(nbytes)
            entry = None if path is None else self._blocks[path]
            if path is not None:
                self._from_cache.add(path)
        reused = entry is not None
        if entry is None:
            entry = self._new_block(nbytes)
        try:
            lease = self._lease(entry)
            array: Array = np.ndarray(shape, dtype, buffer=lease, order=order)  # type: ignore[call-overload,arg-type]
            if zero and reused:
                np.frombuffer(lease, np.uint8, count=nbytes)[...] = 0  # type: ignore[call-overload]
        except BaseException:
            self.free(entry.path)
            raise
        return array

    def staging_array(self, like: Array) -> Array:
        """A C-order array shaped like ``like`` to stage it (a cached block when one fits)."""
        return self.new_array(like.shape, like.dtype, "C", zero=False)

    def _new_block(self, nbytes: int) -> _arrays.Mapping:
        folder = self.folder
        first: SharedMemoryFullError | None = None  # the default folder's, once fallen back
        while True:
            try:
                path, mapping = create_block(folder, nbytes, self.tag)
                break
            except SharedMemoryFullError as exc:
                # Cached blocks are only a speed-up: they give way before the caller is told
                # the folder is full (a small /dev/shm, a Docker container's 64 MB).
                if self._give_way(nbytes, folder):
                    continue
                if first is not None:
                    raise exc from first  # both full: the traceback shows both
                if self.fallback is None:
                    raise
                first, folder = exc, self.fallback
                self._warn_fallback(exc)
        try:
            if self.manager is None:
                raise ManagerError("no manager")
            self.manager.track(path)
        except BaseException as exc:
            mapping.close()
            unlink_quietly(path)
            if isinstance(exc, ManagerError) and self._closed:
                raise PoolClosedError("this SharedPool is closed") from None
            raise
        entry = _arrays.register(path, mapping, self._lease)
        with self._lock:
            self._blocks[path] = entry
        return entry

    def _lease(self, entry: _arrays.Mapping) -> object:
        """The buffer that arrays on ``entry``'s block are built on now (see the module
        docstring): the live lease, or a new one when the block has none."""
        with self._lock:
            if entry.path not in self._blocks:
                return entry.mmap  # freed or closed: a plain view, owned by nobody
            held = self._leases.get(entry.path)
            lease = None if held is None else held[0]()
            if lease is None:
                # A view rebuilt from a ref of a block just returned takes it back.
                self._cache.remove(entry.path)
                lease = _arrays.make_lease(entry)
                token = next(self._tokens)
                self._leases[entry.path] = (weakref.ref(lease), token)
                finalizer = weakref.finalize(lease, self._returned.append, (entry.path, token))
                finalizer.atexit = False  # at exit the manager unlinks everything anyway
        return lease

    # ---- taking back --------------------------------------------------------------------

    def _collect(self) -> None:
        """Cache (or free) the blocks whose last view has gone since the last call."""
        evict: list[str] = []
        with self._lock:
            while self._returned:
                path, token = self._returned.popleft()
                held = self._leases.get(path)
                if held is None or held[1] != token or path not in self._blocks:
                    continue  # freed meanwhile, or taken back by a rebuilt view
                del self._leases[path]
                if path in self._tainted or self._closed:
                    evict.append(path)
                else:
                    self._from_cache.discard(path)
                    evict.extend(self._cache.add(path, self._blocks[path].size))
        for path in evict:
            self.free(path)

    def taint(self, path: str) -> None:
        """Never reuse the block at ``path``: a run given up on may still write to it."""
        with self._lock:
            if path in self._blocks:
                self._tainted.add(path)
                self._cache.remove(path)

    def _warn_fallback(self, exc: SharedMemoryFullError) -> None:
        if self._fell_back:
            return
        self._fell_back = True
        # Point the warning at the user's call, past shmpool's own frames.
        import inspect  # only here: a fallback happens at most once per pool

        level = 1
        frame: types.FrameType | None = inspect.currentframe()
        while frame is not None and frame.f_globals.get("__name__", "").startswith("shmpool."):
            frame, level = frame.f_back, level + 1
        warnings.warn(
            f"shared memory is short, so this pool puts the blocks that do not fit in "
            f"{exc.folder} in {self.fallback}, a file-backed folder on disk, from now on: slower "
            "(its pages are written back to the disk), but no process is killed. Why: "
            f"{exc} (A folder you choose is never fallen back from: a full one raises.)",
            SharedMemoryFallbackWarning,
            stacklevel=level,
        )

    def _give_way(self, need: int, folder: str) -> bool:
        """Free cached blocks of ``folder``, oldest first, until ``need`` bytes are free
        there or none are left; whether any were freed. When even all of them would not
        make room, none is freed: the allocation fails either way, and the cache stays warm."""
        self._collect()
        prefix = os.path.join(folder, "")
        with self._lock:
            cached = self._cache.bytes_under(prefix)
        if free_bytes(folder) + cached < need:
            return False
        freed = False
        while free_bytes(folder) < need:
            with self._lock:
                path = self._cache.pop_oldest_under(prefix)
            if path is None:
                break
            self.free(path)
            freed = True
        return freed

    def trim(self) -> int:
        """Free every cached block now; return the bytes given back."""
        self._collect()
        with self._lock:
            size = self._cache.bytes
            paths = self._cache.clear()
        for path in paths:
            self.free(path)
        return size

    # ---- freeing ------------------------------------------------------------------------

    def free_array(self, a: Array) -> None:
        """Give back the block that ``a`` lives in, now: to the cache if the allocation
        came from there (so a failed allocation leaves the pool as it found it), else to
        the folder (:meth:`free`). Views that remain keep their data either way."""
        found = _arrays.locate(a)
        if found is None:
            return
        path = found[0].path
        del a, found  # our own references are views too
        if not self._requeue(path):
            self.free(path)

    def _requeue(self, path: str) -> bool:
        """Put a block handed out from the cache back into it; whether it was done."""
        evict: list[str] = []
        with self._lock:
            entry = self._blocks.get(path)
            if entry is None or path not in self._from_cache or path in self._tainted or self._closed:
                return False
            held = self._leases.get(path)
            if held is not None and held[0]() is not None:
                # Views remain: move them onto private memory, and map the block afresh for
                # the cache (it stays mapped and faulted in the workers).
                if not detach(entry.mmap, entry.address):
                    return False
                fd = os.open(path, os.O_RDWR)
                try:
                    mapping = map_fd(fd, entry.size)
                finally:
                    os.close(fd)
                _arrays.forget(path)
                self._blocks[path] = _arrays.register(path, mapping, self._lease)
            self._leases.pop(path, None)
            self._from_cache.discard(path)
            evict = self._cache.add(path, entry.size)
        for old in evict:
            self.free(old)
        return True

    def free(self, path: str) -> None:
        """Give the block at ``path`` back to the folder now, and forget it.

        Unlinking alone would not free the space while any process maps the block (the
        workers unmap when the release message reaches them). Truncating the file frees it
        at once; first, views that remain here are moved onto private memory holding the
        same data (:mod:`shmpool._detach`), so they stay valid. A tainted block (a run given
        up on may still write it in a worker) is not truncated: that would kill the worker.
        """
        with self._lock:
            entry = self._blocks.pop(path, None)
            if entry is None:
                return
            held = self._leases.pop(path, None)
            tainted = path in self._tainted
            self._tainted.discard(path)
            self._from_cache.discard(path)
            self._cache.remove(path)
        viewed = held is not None and held[0]() is not None
        if not tainted and (not viewed or detach(entry.mmap, entry.address)):
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
        try:
            if self.manager is None:
                raise ManagerError("no manager")
            self.manager.release(path)
        except ManagerError:
            unlink_quietly(path)  # the manager is gone (or shutting down): unlink it here
        if self.on_release is not None:
            self.on_release((path,))
        _arrays.forget(path)

    def close(self) -> list[str]:
        """Stop making blocks; forget every block here and return their paths (the caller
        has the manager unlink them, and unlinks what it could not reach)."""
        with self._lock:
            self._closed = True
            paths = list(self._blocks)
            self._blocks.clear()
            self._leases.clear()
            self._cache.clear()
            self._tainted.clear()
            self._from_cache.clear()
        for path in paths:
            _arrays.forget(path)
        return paths
