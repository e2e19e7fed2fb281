"""SharedPool: persistent worker processes, arrays in shared memory, chunked in-place maps.

:class:`SharedPool` is the front end (:class:`shmpool._frontend.Pool`) over
:class:`shmpool._process_backend.ProcessBackend`, which wires the block store, the workers
and the maps together and owns the one teardown path. That module is imported when the
first pool is made, not with this one, and under forkserver only after the fork server has
started booting (:mod:`shmpool._forkserver`): the server's interpreter and the parent's
imports, the two longest steps of a first pool's start, then overlap.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from numpy.typing import NDArray

from ._cache import default_cache_bytes
from ._checks import check_callable
from ._forkserver import boot_forkserver
from ._frontend import Pool
from ._inner import AUTO, check_inner_threads, controller, thread_env, worker_start
from ._pickling import dumps_or_raise
from ._progress import resolve_progress
from ._segments import block_folder, fallback_for
from ._sizing import check_workers, usable_cpus

if TYPE_CHECKING:
    from ._process_backend import ProcessBackend

__all__ = ["START_METHODS", "SharedPool", "default_start_method"]

START_METHODS = ("fork", "spawn", "forkserver")


def default_start_method() -> str:
    """forkserver where the platform has it (Linux), else spawn.

    Not fork: forking a process that runs threads (tqdm's monitor, the pool's own
    supervisor, the user's) can deadlock the child, and Python 3.14 makes forkserver the
    default on Linux for that reason. forkserver starts each worker from a clean server
    process that has shmpool and NumPy imported already, so it is nearly as fast as fork.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


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
        if method == "forkserver":
            boot_forkserver()  # it boots (about 100 ms) while the import below runs
        from ._process_backend import ProcessBackend  # most of the pool's import time

        self._processes: ProcessBackend = ProcessBackend(
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
