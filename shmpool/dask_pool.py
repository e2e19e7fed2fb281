"""DaskPool: SharedPool's API on a Dask distributed cluster, for work beyond one machine.

The pool's own arrays (``empty``, ``zeros``, ``full``, ``*_like``, ``asarray``) are cluster
arrays (:class:`shmpool.ClusterArray`): their chunks live on the workers, and a map over
them runs each chunk where it is and moves nothing but tasks and small results (see
:mod:`shmpool._cluster_array` and :mod:`shmpool._cluster_map`).

NumPy arrays passed to ``map`` live in the caller, and nothing is shared between the caller
and a Dask worker, so such a map moves data: each chunk's views travel to a worker inside
the chunk's task, the kernel runs in place on the worker's copy, and only the chunks that
it changed come back to be written into the caller's arrays. Change is detected by
comparing bytes on the worker (before and after the kernel), never assumed; arrays that
are read-only in the caller are never compared nor sent back.

What one map over NumPy arrays sends::

    caller                           scheduler                  worker(s)
    spec task: kernel, kwargs,  ──>  run once, held in    ──>  fetched by each worker
      whole() args (bytes)           worker memory             that runs chunks (usually
                                                               once), unpickled once there
    chunk tasks, a window of    ──>  placed on idle       ──>  copy -> kernel -> compare
      them at a time, each with      workers                   changed chunks only
      its chunk's array data    <────────────────────────────  (and whole() diffs)

Chunk data travels inside its task rather than by ``client.scatter``: the scheduler keeps
each task's arguments, so a task whose worker died is simply run again elsewhere, as Dask's
``distributed.scheduler.allowed-failures`` allows; scattered data would be lost with its
worker. The spec is the result of a task for the same reason.

The NumPy map run is :mod:`shmpool._dask_map`; the worker side is :mod:`shmpool._dask_worker`. Dask is optional: this module imports it,
and ``shmpool`` imports this module only when ``shmpool.DaskPool`` is first used.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

try:
    import distributed
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'shmpool.DaskPool needs Dask distributed; install it with: pip install "shmpool[dask]"'
    ) from exc

from . import _pickling
from ._backend import BatchOutcome, ItemBatch, ItemStream, MapRun
from ._checks import ItemRequest, MapRequest, SplitArgs
from ._chunks import ChunkPlan
from ._cluster_api import ClusterArrays
from ._cluster_array import ClusterArray, ClusterStore
from ._cluster_map import ClusterMapRun, ClusterSplit
from ._dask_map import DaskMapRun, crash_error, dumps, failure_of, task_name
from ._dask_worker import Payload, origin, run_call, run_items
from ._frontend import Pool, PoolStats
from ._progress import resolve_progress
from ._sizing import usable_cpus
from ._without_main import hold_for_name
from .errors import PoolClosedError

__all__ = ["DaskBackend", "DaskPool"]

Array = np.ndarray  # type: ignore[type-arg]
# distributed's Client and Future have methods without annotations, which mypy --strict
# refuses to call: they are held as Any here, and called through an Any module.
DaskClient = Any
DaskFuture = Any
_dask: Any = distributed

# The name distributed's Nanny gives the worker process it starts (distributed/nanny.py).
# A LocalCluster's workers need nothing of the caller's __main__ (tasks travel by value),
# so the pool's own cluster starts them without it: a script needs no __main__ guard.
NANNY_PROCESS_NAME = "Dask Worker process (from Nanny)"


class _DaskBatch:
    def __init__(self, stream: _DaskStream, count: int):
        self._stream = stream
        self.count = count
        self.task: DaskFuture | None = None

    def outcome(self) -> BatchOutcome:
        return self._stream.outcome_of(self)


class _DaskStream:
    """Batches of items as Dask tasks (see :class:`shmpool._backend.ItemStream`).

    An imap's function travels once, as the result of a task that every batch depends on;
    a submit sends its function inside its one task.
    """

    def __init__(self, backend: DaskBackend, request: ItemRequest, star: bool):
        self._backend = backend
        self._client = backend.client
        self._request = request
        self._star = star
        self._fn_bytes = dumps(request.fn, f"function {request.name!r}")
        self._prefix = (
            f"shmpool-{'call' if star else 'imap'}-{task_name(request.name)}-{uuid.uuid4().hex[:12]}"
        )
        self._fn_task: DaskFuture | None = None
        self._tasks: set[DaskFuture] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        batch = _DaskBatch(self, len(items))
        if self._star:
            (args, kwargs) = items[0]
            payload = dumps((args, kwargs), f"the arguments of {self._request.name!r}")
            task = self._client.submit(
                run_call, self._fn_bytes, payload, self._backend.origin, key=self._prefix, pure=False,
                retries=self._request.retries,
            )  # fmt: skip
        else:
            payload = dumps(items, f"imap items {first} to {first + len(items) - 1}")
            if self._fn_task is None:
                self._fn_task = self._client.submit(
                    Payload, self._fn_bytes, self._backend.origin, False, key=f"{self._prefix}-fn", pure=False
                )
            task = self._client.submit(
                run_items, self._fn_task, first, payload, key=(self._prefix, first), pure=False,
                retries=self._request.retries,
            )  # fmt: skip
        batch.task = task
        with self._lock:
            self._tasks.add(task)

        def landed(done: DaskFuture) -> None:
            with self._lock:
                self._tasks.discard(done)
            on_landed(batch)

        task.add_done_callback(landed)
        return batch

    def outcome_of(self, batch: _DaskBatch) -> BatchOutcome:
        task: DaskFuture = batch.task
        where = f"{self._request.name!r}"
        if task.status == "cancelled":
            if self._backend.closed:
                return BatchOutcome(
                    [], failure=PoolClosedError("the DaskPool was closed while this call ran")
                )
            return BatchOutcome(
                [], failure=CancelledError(f"a batch of {where} was cancelled on the Dask cluster")
            )
        if task.status == "error":
            return BatchOutcome([], failure=crash_error(task.exception(), f"a call of {where}", None))
        if self._star:
            packed, error = task.result()
            if error is not None:
                return BatchOutcome([], failure_of(error))
            return BatchOutcome([_pickling.loads(packed)])
        packed, error, _work = task.result()
        results: list[Any] = _pickling.loads(packed)
        return BatchOutcome(results, None if error is None else failure_of(error))

    def cancel(self) -> None:
        self._cancelled = True
        with self._lock:
            tasks = list(self._tasks)
        if tasks:
            try:
                self._client.cancel(tasks)
            except Exception:
                pass  # the client is closing (terminate): its tasks go with it

    def close(self) -> None:
        if self._fn_task is not None:
            try:
                self._fn_task.release()
            except Exception:
                pass


class DaskBackend:
    """A Dask distributed cluster (see :class:`shmpool._backend.Backend`); the pool's own
    arrays are cluster arrays, whose chunks live on the workers."""

    kind = "DaskPool"
    # imap chunksize="auto": a Dask task costs milliseconds of scheduling, so a batch should
    # carry ten times more work than a SharedPool's to make that cost small.
    batch_target_s = 0.1
    no_chunk_timeout: str | None = (
        "Dask cannot stop one running task; use timeout= for the whole map (its running "
        "tasks then finish on their workers, their results dropped)"
    )

    def __init__(self, client: DaskClient | None, address: str | None):
        self.origin = origin()
        self.closed = False
        self._own_client: DaskClient | None = None
        self.cluster: Any = None
        self._last_workers = 1
        self._release_main: Callable[[], None] | None = None
        if client is None:
            try:
                if address is None:
                    # Held while the cluster is open: the Nanny restarts workers that die.
                    self._release_main = hold_for_name(NANNY_PROCESS_NAME)
                    self.cluster = _dask.LocalCluster(
                        n_workers=usable_cpus(),
                        threads_per_worker=1,  # kernels often hold the GIL: one per process
                        processes=True,
                        dashboard_address=":0",  # a free port: never a clash
                    )
                    client = self._own_client = _dask.Client(self.cluster, set_as_default=False)
                else:
                    client = self._own_client = _dask.Client(address, set_as_default=False)
            except BaseException:
                self.shutdown(kill=True)
                raise
        self.client: DaskClient = client
        self.store = ClusterStore(client, self.origin)
        self.arrays = ClusterArrays(self.store, lambda: self.workers)

    @property
    def workers(self) -> int:
        """The worker threads of the cluster now (at least 1); after close, the last seen."""
        if not self.closed:
            try:
                self._last_workers = max(1, sum(self.client.nthreads().values()))
            except Exception:
                pass  # a scheduler that is restarting: keep the last count
        return self._last_workers

    def describe(self) -> str:
        try:
            where = self.client.scheduler.address if self.client.scheduler is not None else None
        except Exception:
            where = None
        return f"scheduler={where!r}"

    def allocate(
        self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any
    ) -> ClusterArray:  # type: ignore[type-arg]
        return self.arrays.make(shape, dtype, order, zero, like)

    def owns(self, a: Any) -> bool:
        return self.arrays.owns(a)

    def release(self, a: ClusterArray) -> None:
        a.release()

    def split_own(
        self, arrays: tuple[Any, ...], axis: object, chunks: object
    ) -> tuple[SplitArgs, ChunkPlan] | None:
        return self.arrays.split(arrays, axis, chunks)

    def start_map(self, request: MapRequest) -> MapRun:
        if isinstance(request.split, ClusterSplit):
            return ClusterMapRun(self.store, request)
        return DaskMapRun(self.client, self.origin, self.workers, request)

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        return _DaskStream(self, request, star)

    def shutdown(self, *, kill: bool) -> None:
        self.closed = True
        store = getattr(self, "store", None)
        if store is not None:  # None: the client never started
            store.release_all()
        client, cluster = self._own_client, self.cluster
        self._own_client = None
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        if self._release_main is not None:
            self._release_main()


class DaskPool(Pool[ClusterArray]):
    """The pool API on a Dask distributed cluster, for work beyond one machine.

    ``client``: a ``distributed.Client`` to use (the pool never closes it). ``address``: a
    scheduler address to connect to instead (the pool closes its client). Neither: a
    ``LocalCluster`` of worker processes (one per usable CPU, one thread each) that the
    pool starts and closes. ``progress`` is the default of every call's ``progress=``.

    The pool's arrays (``empty``, ``zeros``, ``full``, ``*_like``, ``asarray``) are
    :class:`shmpool.ClusterArray` s, whose chunks live on the workers; a map over them runs
    chunk *i* where chunk *i* is and writes there, and only the kernel, its arguments and
    its return values move. NumPy arrays passed to ``map`` stay in the caller: each chunk
    is sent to a worker and the chunks the kernel changed are written back (read-only
    arrays are never sent back); a writable whole() array is copied per chunk on the worker
    and the elements a chunk changed come back (chunks must write different elements, as
    races would make it in shared memory). One map does not mix the two kinds of array.
    ``stats.bytes_staged_in`` counts the bytes sent to the cluster, ``bytes_copied_back``
    those received from it. On ``timeout``, cancel or terminate, chunk tasks are
    cancelled; one already running finishes on its worker and its result is dropped.
    """

    def __init__(
        self,
        client: distributed.Client | None = None,
        *,
        address: str | None = None,
        progress: bool | dict[str, Any] = False,
    ):
        if client is not None and address is not None:
            raise ValueError("pass a client or an address, not both")
        if client is not None and not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {client!r}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string, got {address!r}")
        resolve_progress(progress, None)  # before a cluster starts
        self._dask = DaskBackend(client, address)
        super().__init__(self._dask, progress=progress)

    @property
    def stats(self) -> PoolStats:
        """Counters of what this pool has done: the bytes are those the client sent to and
        received from the cluster, by maps and by making, reading and writing its arrays."""
        s, store = super().stats, self._dask.store
        return PoolStats(
            s.maps, s.chunks, s.bytes_staged_in + store.sent, s.bytes_copied_back + store.received
        )

    @property
    def client(self) -> DaskClient:
        """The ``distributed.Client`` this pool submits to."""
        return self._dask.client

    @property
    def cluster(self) -> Any:
        """The ``LocalCluster`` this pool started (and closes), or None."""
        return self._dask.cluster
