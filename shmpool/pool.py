"""SharedPool: persistent workers, arrays in shared memory, and a chunked in-place map.

The pool's life: RUNNING until close() (wait for calls in flight) or terminate() (stop
now), then CLOSED. Both run the same teardown (:meth:`_Resources.shutdown`), as does
garbage collection of an unclosed pool and interpreter exit. Teardown stops the workers,
has the manager unlink every block, and unmaps each block once no array uses it: arrays
handed out stay valid after the pool is gone.
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import numbers
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from . import _arrays, _tasks
from ._args import check_dtype
from ._control import ControlBlock
from ._dispatch import Dispatcher
from ._kernel import pop_active, push_active
from ._maprun import dumps_or_raise, plan_map
from ._progress import resolve_progress
from ._segments import (
    BlockManager,
    block_folder,
    create_block,
    free_bytes,
    new_pool_tag,
    raise_fd_limit,
    sweep_dead_blocks,
    unlink_quietly,
)
from .errors import ManagerError, PoolClosedError

__all__ = ["START_METHODS", "PoolStats", "SharedPool", "default_start_method", "usable_cpus"]

START_METHODS = ("fork", "spawn", "forkserver")

T = TypeVar("T")

# Staging blocks kept for reuse by later maps: enough for a map over a few plain arrays.
# They stay reserved in the block folder until reused, evicted or the pool closes, and are
# never kept when that would take more than half of the folder's free space.
STAGING_CACHE_BLOCKS = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_start_method() -> str:
    """forkserver where the platform has it (Linux), else spawn.

    Not fork: forking a process that runs threads (tqdm's monitor, the pool's own
    supervisor, the user's) can deadlock the child, and Python 3.14 makes forkserver the
    default on Linux for that reason. forkserver starts each worker from a clean server
    process that has shmpool and NumPy imported already, so it is nearly as fast as fork.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What a pool has done so far: maps run, chunks run, and bytes copied by staging."""

    maps: int = 0
    chunks: int = 0
    bytes_staged_in: int = 0
    bytes_copied_back: int = 0


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Resources:
    """Everything a pool must release, kept apart from the pool object so that the
    garbage collector can finalize an unclosed pool."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = _State.RUNNING
        self.blocks: dict[str, _arrays.Mapping] = {}
        self.manager: BlockManager | None = None
        self.dispatcher: Dispatcher | None = None
        self.control: ControlBlock | None = None
        self.control_path: str | None = None
        self.staging_cache: list[_arrays.Mapping] = []

    def shutdown(self, kill: bool) -> None:
        """The one teardown path: stop workers, unlink blocks, unmap what is unused."""
        with self.lock:
            if self.state is not _State.RUNNING:
                return
            self.state = _State.CLOSING
        try:
            if self.dispatcher is not None:
                self.dispatcher.shutdown(kill=kill)
        finally:
            if self.manager is not None:
                try:
                    self.manager.shutdown()  # the manager unlinks every block it tracks
                except Exception:
                    pass
            with self.lock:
                paths = list(self.blocks)
                self.blocks.clear()
                self.staging_cache.clear()
            if self.control_path is not None:
                paths.append(self.control_path)
            for path in paths:
                unlink_quietly(path)  # blocks the manager could not reach
                _arrays.forget(path)
            if self.control is not None:
                self.control.release()
            with self.lock:
                self.state = _State.CLOSED


class SharedPool:
    """A pool of persistent worker processes that run NumPy kernels on shared arrays.

    ``workers``: how many processes (default: the CPUs this process may use).
    ``start_method``: "fork", "spawn" or "forkserver" (default: :func:`default_start_method`).
    ``initializer(*initargs)`` runs once in each worker as it starts. ``progress`` is the
    default of every call's ``progress=`` option. ``temp_folder``: where blocks live
    (default ``$SHMPOOL_TEMP_FOLDER``, else ``/dev/shm``); a folder on disk is a way out
    when ``/dev/shm`` is too small.

    Use it as a context manager, or call :meth:`close`. Arrays it allocates stay valid
    after it is closed.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        progress: bool | dict[str, Any] = False,
        temp_folder: str | os.PathLike[str] | None = None,
    ):
        if workers is None:
            workers = usable_cpus()
        if not isinstance(workers, numbers.Integral) or isinstance(workers, bool):
            raise TypeError(f"workers must be an int or None, got {workers!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        method = default_start_method() if start_method is None else start_method
        if method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS} or None, got {start_method!r}")
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start method {method!r} is not available on this platform")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        resolve_progress(progress, None)  # validate now, not at the first call
        init_payload = None
        if initializer is not None:
            init_payload = dumps_or_raise((initializer, tuple(initargs)), "the initializer and its initargs")

        self._workers: int = int(workers)
        self._start_method: str = method
        self._progress: bool | dict[str, Any] = progress
        self._folder: str = block_folder(temp_folder)
        self._tag: str = new_pool_tag()
        self._stats: PoolStats = PoolStats()
        res = _Resources()
        self._res: _Resources = res
        self._finalizer: weakref.finalize[..., None] = weakref.finalize(self, res.shutdown, True)
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload_in_forkserver(ctx)
        sweep_dead_blocks(self._folder)
        raise_fd_limit()
        try:
            res.control_path, control_map = create_block(
                self._folder, ControlBlock.size_for(self._workers), self._tag
            )
            res.control = ControlBlock(control_map, self._workers)
            res.manager = BlockManager(ctx=ctx)
            if method == "fork":
                # Fork the manager before the dispatcher starts its supervisor thread.
                res.manager.start()
            # Under spawn and forkserver, workers boot while the manager starts.
            res.dispatcher = Dispatcher(ctx, self._workers, res.control, res.control_path, init_payload)
            if method != "fork":
                res.manager.start()
            res.manager.track(res.control_path)
        except BaseException:
            self._finalizer()
            raise

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """The number of worker processes."""
        return self._workers

    @property
    def start_method(self) -> str:
        """The start method the workers were started with."""
        return self._start_method

    @property
    def temp_folder(self) -> str:
        """The folder where this pool's blocks live."""
        return self._folder

    @property
    def closed(self) -> bool:
        """Whether close() or terminate() was called."""
        return self._res.state is not _State.RUNNING

    @property
    def stats(self) -> PoolStats:
        """Counters of what this pool has done (see :class:`PoolStats`)."""
        return self._stats

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        return [] if self._res.dispatcher is None else self._res.dispatcher.pids

    def close(self) -> None:
        """Wait for the calls in flight, then stop the workers and unlink every block.

        Idempotent. Arrays the pool handed out stay valid.
        """
        self._finalizer.detach()
        self._res.shutdown(kill=False)

    def terminate(self) -> None:
        """Stop the workers now (calls in flight raise PoolClosedError), unlink every block.

        Idempotent.
        """
        self._finalizer.detach()
        self._res.shutdown(kill=True)

    def __enter__(self) -> SharedPool:
        self._check_open()
        push_active(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        pop_active(self)
        if exc_info[0] is None:
            self.close()
        else:
            self.terminate()

    def __repr__(self) -> str:
        state = self._res.state.value
        return f"<SharedPool workers={self._workers} start_method={self._start_method!r} {state}>"

    def _check_open(self) -> None:
        if self._res.state is not _State.RUNNING:
            raise PoolClosedError("this SharedPool is closed")

    # ---- allocation ---------------------------------------------------------------------

    def empty(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array in shared memory."""
        return self._allocate(shape, dtype, order)

    def zeros(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros in shared memory."""
        return self._allocate(shape, dtype, order)  # a new block reads as zeros already

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, order: str = "C"
    ) -> np.ndarray:  # type: ignore[type-arg]
        """A new array in shared memory filled with ``fill_value``."""
        if dtype is None:
            dtype = np.asarray(fill_value).dtype
        out = self._allocate(shape, dtype, order)
        out[...] = fill_value
        return out

    def empty_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised shared array with the shape (and dtype) of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, _order_of(a))

    def zeros_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new shared array of zeros with the shape (and dtype) of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, _order_of(a))

    def asarray(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """``a`` in shared memory: ``a`` itself if it already lives in this pool's blocks
        (and no other dtype is asked for), else a copy."""
        self._check_open()
        if isinstance(a, np.ndarray) and (dtype is None or np.dtype(dtype) == a.dtype) and self.is_shared(a):
            return a
        source = np.asarray(a, dtype=dtype)
        out = self._allocate(source.shape, source.dtype, _order_of(source))
        np.copyto(out, source)
        return out

    def is_shared(self, a: Any) -> bool:
        """Whether ``a`` (or the array it is a view of) lives in one of this pool's blocks."""
        if not isinstance(a, np.ndarray):
            return False
        found = _arrays.locate(a)
        return found is not None and found[0].path in self._res.blocks

    def free(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
        """Give the block holding ``a`` back now instead of at shutdown.

        The whole block goes, whichever view of it ``a`` is. Arrays that still view it stay
        valid (the memory is released when the last one is garbage-collected), but they no
        longer count as shared: passing one to ``map`` copies it.
        """
        self._check_open()
        found = _arrays.locate(a) if isinstance(a, np.ndarray) else None
        if found is None or found[0].path not in self._res.blocks:
            raise ValueError("free() takes an array allocated by this pool that was not freed yet")
        self._free_block(found[0].path)

    def _allocate(self, shape: int | Iterable[int], dtype: Any, order: str) -> np.ndarray:  # type: ignore[type-arg]
        self._check_open()
        dtype = check_dtype(np.dtype(dtype))
        shape = _as_shape(shape)
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', got {order!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        path, mapping = create_block(self._folder, nbytes, self._tag)
        try:
            assert self._res.manager is not None
            self._res.manager.track(path)
        except BaseException as exc:
            mapping.close()
            unlink_quietly(path)
            if isinstance(exc, ManagerError) and self.closed:
                raise PoolClosedError("this SharedPool is closed") from None
            raise
        entry = _arrays.register(path, mapping)
        with self._res.lock:
            self._res.blocks[path] = entry
        array: np.ndarray = np.ndarray(shape, dtype, buffer=mapping, order=order)  # type: ignore[type-arg,arg-type]
        return array

    def _staging_array(self, like: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        """A C-order shared array shaped like ``like`` to stage it, on a cached block when
        one of the right size is free (see :meth:`_recycle_staging`)."""
        size = max(like.nbytes, 1)
        with self._res.lock:
            entry = next((e for e in self._res.staging_cache if e.size == size), None)
            if entry is not None:
                self._res.staging_cache.remove(entry)
        if entry is None:
            return self.empty(like.shape, like.dtype)
        array: np.ndarray = np.ndarray(like.shape, like.dtype, buffer=entry.mmap)  # type: ignore[type-arg]
        return array

    def _recycle_staging(self, path: str) -> None:
        """Keep a finished map's staging block for the next map, or free it.

        A reused block is reserved and mapped already, here and in every worker: staging
        the same plain arrays again costs one memcpy each way instead of page faults. A
        block that anything still views (a result of the map) is freed instead, so a later
        map can never overwrite data a caller holds.
        """
        entry = self._res.blocks.get(path)
        if entry is None:
            return
        # References: the registry's Mapping and getrefcount's own argument. Any more is
        # an ndarray built on the block that someone still holds.
        if self.closed or sys.getrefcount(entry.mmap) > 2:
            self._free_block(path)
            return
        evicted = []
        with self._res.lock:
            cache = self._res.staging_cache
            cache.append(entry)
            room = free_bytes(self._folder)
            while len(cache) > STAGING_CACHE_BLOCKS or sum(e.size for e in cache) > room:
                evicted.append(cache.pop(0))
        for old in evicted:
            self._free_block(old.path)

    def _free_block(self, path: str) -> None:
        with self._res.lock:
            if self._res.blocks.pop(path, None) is None:
                return
        try:
            assert self._res.manager is not None
            self._res.manager.release(path)
        except ManagerError:
            unlink_quietly(path)  # the manager is gone (or shutting down): unlink it here
        if self._res.dispatcher is not None:
            self._res.dispatcher.release((path,))
        _arrays.forget(path)

    # ---- map ----------------------------------------------------------------------------

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
        """Run ``kernel(*chunk_views, **kwargs)`` over chunks of ``arrays`` in the workers.

        Every array is split along ``axis`` into the same chunks; each call gets views of
        one chunk (no copy) and writes its results in place. Arguments wrapped in
        :func:`whole` are passed whole to every call. Returns the kernel's return values
        in chunk order. Arrays not allocated by this pool are copied into shared memory
        first and, when writable, copied back afterwards. ``chunks``: None (automatic), an
        int (indices per chunk) or a sequence of chunk lengths. ``progress``: a tqdm bar
        counting chunks (True, or a dict of tqdm options). ``timeout``: seconds, after
        which the map is stopped, its workers replaced, and TimeoutError raised.
        """
        return plan_map(self, kernel, arrays, axis, chunks, progress, timeout, kwargs).execute()

    def map_async(
        self,
        kernel: Callable[..., Any],
        /,
        *arrays: Any,
        axis: int = 0,
        chunks: int | Iterable[int] | None = None,
        progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[list[Any]]:
        """Like :meth:`map`, but return at once: a Future of the list of results.

        Bad arguments raise here. Several maps may be in flight. ``future.cancel()`` works
        until the map has finished: unstarted chunks are skipped and the future is
        cancelled (plain arrays are still copied back).
        """
        run = plan_map(self, kernel, arrays, axis, chunks, progress, timeout, kwargs)
        return _tasks.map_async(self, run)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; return a Future of its result.

        Shared arrays among the arguments arrive as views of the same memory; other
        arguments are pickled (cloudpickle). ``cancel()`` works until the call has
        finished; a call already running still runs, and its result is dropped.
        """
        return _tasks.submit(self, fn, args, kwargs)

    def imap(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        progress: bool | dict[str, Any] | None = None,
    ) -> Iterator[T]:
        """An iterator of ``fn(item)`` for each item of ``iterable``, run in the workers.

        Results come in input order when ``ordered``, else as they finish. The iterable is
        consumed lazily with a bounded number of items in flight, so an endless generator
        works. ``chunksize`` items travel per message: raise it for small, fast items, or pass
        ``"auto"`` to size batches from the measured throughput (about 10 ms each). An
        exception in ``fn`` is raised from the iterator at that item's position, with the
        remote traceback, and the remaining items are cancelled; so is closing the iterator
        early. ``progress``: a tqdm bar counting items (the total is known when the
        iterable has a length).
        """
        return _tasks.imap(self, fn, iterable, ordered, chunksize, progress)

    def _count_map(self, chunks: int, bytes_in: int, bytes_back: int) -> None:
        with self._res.lock:
            s = self._stats
            self._stats = PoolStats(
                s.maps + 1, s.chunks + chunks, s.bytes_staged_in + bytes_in, s.bytes_copied_back + bytes_back
            )


def _order_of(a: np.ndarray) -> str:  # type: ignore[type-arg]
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def _as_shape(shape: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral):
        shape = (int(shape),)
    try:
        dims = tuple(operator_index(d) for d in shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed, got shape {dims}")
    return dims


def operator_index(value: Any) -> int:
    """``value`` as an int if it is an integer (not a bool); TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(value)
    return int(value)


def _preload_in_forkserver(ctx: Any) -> None:
    # Workers forked from a server that has imported shmpool (and NumPy) start in
    # milliseconds. Keep whatever the application asked to preload too.
    from multiprocessing import forkserver

    current = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    if "shmpool._worker" not in current:
        ctx.set_forkserver_preload([*current, "shmpool._worker"])
