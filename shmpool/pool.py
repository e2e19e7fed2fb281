"""SharedPool: persistent worker processes, arrays in shared memory, chunked in-place maps.

:class:`SharedPool` is the front end (:class:`shmpool._frontend.Pool`) over
:class:`ProcessBackend`, which wires the pieces together: the block store and its manager
process (:mod:`shmpool._blocks`, :mod:`shmpool._segments`, :mod:`shmpool._manager`), the workers and their
supervisor (:mod:`shmpool._dispatch`), and the maps and streams (:mod:`shmpool._procmap`).

Teardown (close, terminate, garbage collection of an unclosed pool, interpreter exit) is
one path, :meth:`ProcessBackend.shutdown`: stop the workers, have the manager unlink every
block, and unmap each block once no array uses it: arrays handed out stay valid after the
pool is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._backend import ItemStream, MapRun
from ._block_files import sweep_dead_blocks, unlink_quietly
from ._blocks import BlockStore
from ._cache import default_cache_bytes
from ._checks import ItemRequest, MapRequest, check_callable
from ._control import ControlBlock
from ._dispatch import Dispatcher
from ._frontend import Pool
from ._inner import AUTO, check_inner_threads, controller, thread_env, worker_start
from ._lifeline import forget_in_forked_children
from ._manager import BlockManager
from ._pickling import dumps_or_raise
from ._procmap import ProcessMapRun, ProcessStream
from ._progress import resolve_progress
from ._segments import block_folder, create_block, fallback_for, new_pool_tag, raise_fd_limit
from ._sizing import check_workers, usable_cpus
from ._without_main import without_main
from .errors import PoolClosedError

__all__ = ["START_METHODS", "ProcessBackend", "SharedPool", "default_start_method"]

START_METHODS = ("fork", "spawn", "forkserver")

Array = np.ndarray  # type: ignore[type-arg]


def default_start_method() -> str:
    """forkserver where the platform has it (Linux), else spawn.

    Not fork: forking a process that runs threads (tqdm's monitor, the pool's own
    supervisor, the user's) can deadlock the child, and Python 3.14 makes forkserver the
    default on Linux for that reason. forkserver starts each worker from a clean server
    process that has shmpool and NumPy imported already, so it is nearly as fast as fork.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ProcessBackend:
    """Worker processes and shared blocks (see :class:`shmpool._backend.Backend`)."""

    kind = "SharedPool"
    # imap chunksize="auto": a batch costs one message each way, a few microseconds.
    batch_target_s = 0.01
    no_chunk_timeout: str | None = None  # a chunk's worker is a process, which can be killed

    def __init__(
        self,
        workers: int,
        method: str,
        init_payload: bytes | None,
        folder: str,
        cache_bytes: int,
        fallback: str | None = None,
        worker_env: dict[str, str] | None = None,
    ):
        self._workers = workers
        self.start_method = method
        self.store = BlockStore(folder, new_pool_tag(), cache_bytes, fallback)
        self.dispatcher: Dispatcher | None = None
        self.control: ControlBlock | None = None
        self.control_path: str | None = None
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload_in_forkserver(ctx)
        for where in (folder, fallback):
            if where is not None:
                sweep_dead_blocks(where)
        raise_fd_limit()
        try:
            self.control_path, control_map = create_block(
                folder, ControlBlock.size_for(workers), self.store.tag
            )
            self.control = ControlBlock(control_map, workers)
            manager = self.store.manager = BlockManager(ctx=ctx)
            if method == "fork":
                # Fork the manager before the dispatcher starts its supervisor thread.
                manager.start()
            # Under spawn and forkserver, workers boot while the manager starts.
            self.dispatcher = Dispatcher(
                ctx, workers, self.control, self.control_path, init_payload, worker_env=worker_env
            )
            if method != "fork":
                with without_main():  # the manager runs shmpool's code only
                    manager.start()
            manager_process = getattr(manager, "_process", None)  # no public handle
            if manager_process is not None:
                forget_in_forked_children(manager_process)
            manager.track(self.control_path)
            self.store.on_release = self.dispatcher.release
        except BaseException:
            self.shutdown(kill=True)
            raise

    @property
    def workers(self) -> int:
        return self._workers

    def describe(self) -> str:
        return f"workers={self._workers} start_method={self.start_method!r}"

    def _live_dispatcher(self) -> Dispatcher:
        if self.dispatcher is None or self._shut_down:
            raise PoolClosedError("this SharedPool is closed")
        return self.dispatcher

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any) -> Array:  # type: ignore[type-arg]
        return self.store.new_array(shape, dtype, order, zero)

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray) and self.store.owns(a)

    def release(self, a: Array) -> None:
        self.store.free_array(a)

    def split_own(self, arrays: tuple[Any, ...], axis: object, chunks: object) -> None:
        return None  # its arrays are NumPy arrays: the front end splits them

    def start_map(self, request: MapRequest) -> MapRun:
        return ProcessMapRun(self._live_dispatcher(), self.store, request)

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        return ProcessStream(self._live_dispatcher(), request, star)

    def shutdown(self, *, kill: bool) -> None:
        """The one teardown path: stop workers, unlink blocks, unmap what is unused."""
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        try:
            if self.dispatcher is not None:
                self.dispatcher.shutdown(kill=kill)
        finally:
            paths = self.store.close()
            manager, self.store.manager = self.store.manager, None
            if manager is not None:
                try:
                    manager.shutdown()  # the manager unlinks every block it tracks
                except Exception:
                    pass
                # Dropped now, while multiprocessing can still log its __del__: a closed pool
                # kept until interpreter exit (the default pool) would otherwise print an
                # "Exception ignored" there.
                del manager
            if self.control_path is not None:
                paths.append(self.control_path)
            for path in paths:
                unlink_quietly(path)  # blocks the manager could not reach
            if self.control is not None:
                self.control.release()

    @property
    def manager_pid(self) -> int | None:
        manager = self.store.manager
        process = getattr(manager, "_process", None)  # SharedMemoryManager keeps no public handle
        return None if process is None else process.pid


class SharedPool(Pool[NDArray[Any]]):
    """A pool of persistent worker processes that run NumPy kernels on shared arrays.

    For kernels that hold the GIL (Python loops, many small NumPy calls); kernels that
    release it run as fast on a :class:`~shmpool.ThreadPool`, with no copies at all.

    ``workers``: how many processes (default: the CPUs this process may use).
    ``start_method``: "fork", "spawn" or "forkserver" (default: :func:`default_start_method`).
    ``initializer(*initargs)`` runs once in each worker as it starts. ``progress`` is the
    default of every call's ``progress=`` option. ``temp_folder``: where blocks live
    (default ``$SHMPOOL_TEMP_FOLDER``, else ``/dev/shm``, with blocks that do not fit there
    put in a file-backed folder on disk, :attr:`fallback_folder`, after one warning). ``cache_bytes``: how much memory of arrays that are
    gone the pool keeps mapped for reuse (default: a quarter of the folder, at most an
    eighth of the machine's memory; 0 turns reuse off); see :meth:`trim`. ``inner_threads``:
    how many threads each worker's BLAS and OpenMP pools may use (default "auto":
    ``max(1, usable CPUs // workers)``, so the workers do not oversubscribe the CPUs; None
    leaves the libraries alone).

    Use it as a context manager, or call :meth:`close`. Arrays it allocates stay valid
    after it is closed. Plain arrays passed to ``map`` are copied into shared memory first
    and, when writable, copied back afterwards (counted in :attr:`stats`).
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
        cache_bytes: int | None = None,
        inner_threads: int | str | None = AUTO,
    ):
        count = check_workers(workers)
        inner = check_inner_threads(inner_threads, count, usable_cpus())
        method = default_start_method() if start_method is None else start_method
        if method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS} or None, got {start_method!r}")
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start method {method!r} is not available on this platform")
        init_payload = None
        if initializer is not None:
            check_callable(initializer, "initializer")
        if initializer is not None or inner is not None:
            # The thread limit rides in the initializer: it must run in the worker before
            # any kernel, under every start method (see shmpool._inner).
            init_payload = dumps_or_raise(
                (worker_start, (inner, initializer, tuple(initargs))), "the initializer and its initargs"
            )
        # A spawned worker imports NumPy before the initializer runs: its BLAS reads these.
        worker_env = thread_env(inner) if inner is not None and method == "spawn" else None
        if inner is not None and method == "fork":
            controller()  # made once here, inherited by every forked worker
        folder = block_folder(temp_folder)
        if cache_bytes is None:
            cache_bytes = default_cache_bytes(folder)
        elif not isinstance(cache_bytes, int) or isinstance(cache_bytes, bool) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a number of bytes >= 0 or None, got {cache_bytes!r}")
        resolve_progress(progress, None)  # before any process starts
        self._inner_threads = inner
        self._processes = ProcessBackend(
            count, method, init_payload, folder, cache_bytes, fallback_for(temp_folder), worker_env
        )
        super().__init__(self._processes, progress=progress)

    @property
    def start_method(self) -> str:
        """The start method the workers were started with."""
        return self._processes.start_method

    @property
    def temp_folder(self) -> str:
        """The folder where this pool's blocks live."""
        return self._processes.store.folder

    @property
    def inner_threads(self) -> int | None:
        """The thread limit of each worker's BLAS and OpenMP pools (None: left alone)."""
        return self._inner_threads

    @property
    def fallback_folder(self) -> str | None:
        """The file-backed folder on disk where blocks go when :attr:`temp_folder` is full,
        or None when there is none (a folder chosen with ``temp_folder`` or
        ``$SHMPOOL_TEMP_FOLDER``, or a default folder that is on disk already)."""
        return self._processes.store.fallback

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        dispatcher = self._processes.dispatcher
        return [] if dispatcher is None else dispatcher.pids

    @property
    def manager_pid(self) -> int | None:
        """PID of the pool's SharedMemoryManager process (None once it is gone)."""
        return self._processes.manager_pid

    def trim(self) -> int:
        """Give back every cached block now (unlinked, and unmapped in every process);
        return how many bytes that freed. Arrays in use are not touched."""
        self._check_open()
        return self._processes.store.trim()

    @property
    def cached_bytes(self) -> int:
        """Bytes of memory held for reuse: blocks of arrays that are gone (see ``cache_bytes``)."""
        return self._processes.store.cached_bytes

    @property
    def block_paths(self) -> list[str]:
        """The files that this pool holds now, in :attr:`temp_folder` and in
        :attr:`fallback_folder`: its arrays' blocks, its cached blocks (kept for reuse) and
        its control block."""
        control = self._processes.control_path
        paths = self._processes.store.paths
        return [*paths, control] if control is not None and not self.closed else paths


def _preload_in_forkserver(ctx: Any) -> None:
    # Workers forked from a server that has imported shmpool (and NumPy) start in
    # milliseconds. Keep whatever the application asked to preload too.
    from multiprocessing import forkserver

    current = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    # threadpoolctl too: every worker imports it to limit its thread pools (shmpool._inner).
    missing = [name for name in ("shmpool._worker", "threadpoolctl") if name not in current]
    if missing:
        ctx.set_forkserver_preload([*current, *missing])
