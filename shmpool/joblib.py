"""joblib on shmpool's workers: importing this module registers the ``"shmpool"`` backend.

    import joblib
    import shmpool.joblib  # registers backend="shmpool"

    with shmpool.SharedPool() as pool, joblib.parallel_config(backend="shmpool"):
        results = joblib.Parallel()(joblib.delayed(f)(i) for i in range(100))

joblib calls (and scikit-learn's ``n_jobs``) then run on the active pool (see
:func:`shmpool.active_pool`), or on the pool given as
``parallel_config(backend="shmpool", pool=pool)``. Batches go through
:meth:`Pool.executor`, so shared arrays in the arguments travel as references and joblib's
callbacks never run in the pool's own threads. joblib itself stays optional: only this
module imports it (``pip install "shmpool[joblib]"``).

Registration happens here, on first import, and not through an entry point: joblib looks
for no plugins, and registering from ``import shmpool`` would make every user pay for
importing joblib.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from ._kernel import active_pool

if TYPE_CHECKING:
    from ._executor import PoolExecutor
    from ._frontend import Pool

__all__ = ["BACKEND_NAME", "ShmpoolBackend"]

BACKEND_NAME = "shmpool"


class ShmpoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib parallel backend that runs batches on a shmpool pool's workers.

    ``pool``: the pool to use; None (the default) means the active pool when each
    ``Parallel`` call starts. ``n_jobs`` is capped at the pool's worker count; -1 (and
    None) mean all of them, -2 all but one, and so on.
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    # Batches run in other processes (SharedPool, DaskPool): joblib must not assume that
    # they see the caller's Python objects. require="sharedmem" falls back to threads.
    supports_sharedmem = False
    default_n_jobs = -1

    def __init__(self, pool: Pool[Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._given = pool
        self._executor: PoolExecutor | None = None
        self._lock = threading.Lock()
        self._in_flight: set[Future[Any]] = set()

    def _pool(self) -> Pool[Any]:
        return self._given if self._given is not None else active_pool()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches can run at once: ``n_jobs``, capped at the pool's workers."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        workers = self._pool().workers
        if n_jobs is None:
            return workers
        if n_jobs < 0:
            return max(workers + 1 + n_jobs, 1)
        return min(n_jobs, workers)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Start a Parallel call: choose the pool, open an executor on it."""
        pool = self._pool()
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if self._executor is None or self._executor.pool is not pool:
            self._shut_executor()
            self._executor = pool.executor()
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        """Run one batch (``func()``) on the pool; ``callback(future)`` when it is done."""
        if self._executor is None:  # joblib configures first; be safe if it did not
            self._executor = self._pool().executor()
        future = self._executor.submit(func)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # joblib before 1.4 called apply_async instead of submit.
    apply_async = submit

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results, or its exception raised (joblib's callback calls this)."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed: cancel the batches not started yet (running ones finish)."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.cancel()
        self._shut_executor()
        if ensure_ready:
            self._executor = self._pool().executor()

    def terminate(self) -> None:
        """The Parallel call is over: shut its executor down (never the pool)."""
        self._shut_executor()

    def _shut_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


register_parallel_backend(BACKEND_NAME, ShmpoolBackend)
