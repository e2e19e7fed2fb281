"""DaskPool: SharedPool's API on a Dask distributed cluster, for work beyond one machine.

Nothing is shared between the caller and a Dask worker, so a map moves data: each chunk's
views travel to a worker inside the chunk's task, the kernel runs in place on the worker's
copy, and only the chunks that it changed come back to be written into the caller's arrays.
Change is detected by comparing bytes on the worker (before and after the kernel), never
assumed; arrays that are read-only in the caller are never compared nor sent back.

What one map sends (see :meth:`DaskPool.map`)::

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

The worker side is :mod:`shmpool._dask_worker`. Dask is optional: this module imports it,
and ``shmpool`` imports this module only when ``shmpool.DaskPool`` is first used.
"""

from __future__ import annotations

import functools
import pickle
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import cloudpickle
import numpy as np

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'shmpool.DaskPool needs Dask distributed; install it with: pip install "shmpool[dask]"'
    ) from exc

from . import _pickling
from ._backend import BatchOutcome, Failure, ItemBatch, ItemStream, MapOutcome, MapRun
from ._checks import ItemRequest, MapRequest
from ._dask_worker import Payload, origin, run_call, run_chunk, run_items
from ._frontend import Pool
from ._owned import OwnedArrays
from ._progress import resolve_progress
from ._protocol import RemoteError
from ._remote import rebuild_error
from ._sizing import usable_cpus
from .errors import PoolClosedError, WorkerCrashedError

__all__ = ["DaskBackend", "DaskPool"]

Array = np.ndarray  # type: ignore[type-arg]
# distributed's Client and Future have methods without annotations, which mypy --strict
# refuses to call: they are held as Any here, and called through an Any module.
DaskClient = Any
DaskFuture = Any
_dask: Any = distributed

# Chunks in flight per Dask worker thread: one running, one or two queued behind it so the
# worker never waits for the caller, and a bounded amount of the caller's data in the
# cluster at once (a map over more data than the cluster's memory still runs).
CHUNKS_IN_FLIGHT_PER_THREAD = 3


def _dumps(obj: object, what: str) -> bytes:
    # Plain cloudpickle, not shmpool._pickling: a SharedPool array must travel by value to
    # another machine, not as a reference to a block there is no way to reach.
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled to send to the workers: {exc}") from exc
    return data


def _task_name(name: str) -> str:
    # Task keys show on the Dask dashboard: keep them readable and valid.
    return re.sub(r"[^\w.]+", "_", name).strip("_") or "kernel"


def _failure(error: RemoteError) -> Failure:
    return Failure(error.chunk, functools.partial(rebuild_error, error))


def _crash(exc: BaseException, what: str, chunk: int | None) -> BaseException:
    """The error for a task that ended with ``exc`` (a Dask-side error, not the kernel's)."""
    if isinstance(exc, KilledWorker):
        # KilledWorker's attributes vary across Dask versions; its args hold the same.
        allowed = f" ({exc.args[2]})" if len(exc.args) > 2 else ""
        crashed = WorkerCrashedError(
            f"{what}: the Dask workers running it died more often than Dask's "
            f"distributed.scheduler.allowed-failures{allowed} allows",
            chunk=chunk,
        )
        crashed.__cause__ = exc
        return crashed
    return exc


class _DaskMapRun:
    """One map on a DaskPool (see :class:`shmpool._backend.MapRun`).

    The caller's thread drives it from :meth:`wait`: it sends chunk tasks within a window,
    writes back what landed, and sends more, until every chunk is in or the run stopped.
    """

    def __init__(self, backend: DaskBackend, request: MapRequest):
        self._backend = backend
        self._request = request
        self._client = backend.client
        split = request.split
        kernel_bytes = _dumps(request.kernel, f"kernel {request.name!r}")
        # The same array passed twice travels once, and the kernel gets one array for both
        # positions, as SharedPool stages it once.
        slots: dict[int, int] = {}
        self._unique: list[Array] = []
        self._axes: list[int] = []
        layout: list[int] = []
        for position in range(split.count):
            array = split.chunked.get(position)
            if array is None:
                layout.append(-1)
                continue
            if id(array) not in slots:
                slots[id(array)] = len(self._unique)
                self._unique.append(array)
                self._axes.append(split.axes[position])
            layout.append(slots[id(array)])
        writable = tuple(bool(a.flags.writeable) for a in self._unique)
        read_only_wholes = frozenset(
            i for i, obj in split.wholes.items() if isinstance(obj, np.ndarray) and not obj.flags.writeable
        )
        arguments = _dumps((split.wholes, request.kwargs), "the whole() and keyword arguments")
        spec = pickle.dumps((kernel_bytes, arguments, tuple(layout), writable, read_only_wholes), protocol=5)
        self._wholes = {
            i: obj for i, obj in split.wholes.items() if isinstance(obj, np.ndarray) and obj.flags.writeable
        }
        self._count = len(request.plan)
        self._window = CHUNKS_IN_FLIGHT_PER_THREAD * backend.workers
        self._prefix = f"shmpool-{_task_name(request.name)}-{uuid.uuid4().hex[:12]}"
        self._outcome = MapOutcome([None] * self._count, bytes_in=len(spec))
        self._inflight: dict[DaskFuture, int] = {}
        self._landed: queue.SimpleQueue[DaskFuture | None] = queue.SimpleQueue()
        self._submitted = 0
        self._stopped = False
        self._failed_at = self._count
        self._spec = None
        if self._count:
            self._spec = self._client.submit(
                Payload, spec, backend.origin, True, key=f"{self._prefix}-spec", pure=False
            )
            self._send_more()

    def _chunk(self, array: Array, axis: int, index: int) -> Array:
        low, high = self._request.plan.bounds(index)
        return array[(slice(None),) * axis + (slice(low, high),)]

    def _send_more(self) -> None:
        while not self._stopped and self._submitted < self._count and len(self._inflight) < self._window:
            index = self._submitted
            chunk = tuple(
                self._chunk(a, axis, index) for a, axis in zip(self._unique, self._axes, strict=True)
            )
            task = self._client.submit(
                run_chunk, self._spec, index, chunk, key=(self._prefix, index), pure=False
            )
            self._outcome.bytes_in += sum(c.nbytes for c in chunk)
            self._inflight[task] = index
            task.add_done_callback(self._landed.put)
            self._submitted += 1

    def _over(self) -> bool:
        return not self._inflight and (self._stopped or self._submitted == self._count)

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._over():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                first = self._landed.get(timeout=left)
            except queue.Empty:
                return False
            landed = [first]
            while True:
                try:
                    landed.append(self._landed.get_nowait())
                except queue.Empty:
                    break
            try:
                self._take([t for t in landed if t is not None and t in self._inflight])
            except Exception as exc:  # the client closed under a gather (terminate)
                if not self._stopped:
                    self._outcome.failure = exc
                self._stop()
            if self._stopped:
                self._stop()
            else:
                self._send_more()
        return True

    def _take(self, landed: list[DaskFuture]) -> None:
        """Write back what the landed tasks changed and keep their results; stop the run at
        the first error."""
        outcome = self._outcome
        finished = [t for t in landed if t.status == "finished"]
        for task, result in zip(finished, self._client.gather(finished) if finished else [], strict=True):
            index = self._inflight.pop(task)
            packed, changed, diffs, error = result
            outcome.bytes_back += self._write_back(index, changed, diffs)
            outcome.chunks_run += 1
            if error is not None:
                outcome.errors.append(_failure(error))
                self._stopped = True
            elif packed is not None:
                outcome.results[index] = _pickling.loads(packed)
        for task in landed:
            if task not in self._inflight:
                continue
            if task.status in ("error", "cancelled"):
                index = self._inflight.pop(task)
                if not self._stopped or index < self._failed_at:
                    # The lowest chunk's failure is raised, as for kernel errors.
                    outcome.failure = self._task_failure(task, index)
                    self._failed_at = index
                self._stopped = True
            elif task.status != "finished":
                # Lost after it finished (its worker died): Dask runs it again; wait again.
                task.add_done_callback(self._landed.put)

    def _task_failure(self, task: DaskFuture, index: int) -> BaseException:
        where = self._request.where(index)
        if task.status == "cancelled":
            return CancelledError(f"{where} was cancelled on the Dask cluster")
        try:
            exc = task.exception()
        except BaseException as fetch_error:  # the scheduler went away meanwhile
            exc = fetch_error
        return _crash(exc, where, index)

    def _write_back(self, index: int, changed: tuple[Any, ...], diffs: tuple[Any, ...]) -> int:
        moved = 0
        for slot, data in changed:
            np.copyto(self._chunk(self._unique[slot], self._axes[slot], index), data)
            moved += data.nbytes
        for position, rows, values in diffs:
            target = self._wholes[position]
            if target.ndim == 0:
                target[()] = values[0]
            else:
                target[np.unravel_index(rows, target.shape)] = values
            moved += rows.nbytes + values.nbytes
        return moved

    def _stop(self) -> None:
        """Cancel what is in flight (called by the driving thread, or by finish)."""
        self._stopped = True
        tasks, self._inflight = list(self._inflight), {}
        if tasks:
            try:
                self._client.cancel(tasks)
            except Exception:
                pass  # the client is closing (terminate): its tasks go with it

    def chunks_done(self) -> int:
        return self._outcome.chunks_run

    def cancel(self) -> None:
        # Any thread: the driving thread sees the flag when it wakes, and cancels the tasks.
        self._stopped = True
        self._landed.put(None)

    def kill(self) -> None:
        self.cancel()  # a task running on a Dask worker finishes there; its result is dropped

    def finish(self) -> MapOutcome:
        self._stop()
        if self._spec is not None:
            try:
                self._spec.release()
            except Exception:
                pass
        if (
            self._outcome.failure is None
            and not self._outcome.errors
            and self._outcome.chunks_run < self._count
        ):
            self._outcome.failure = CancelledError(f"map of kernel {self._request.name!r} was stopped")
        return self._outcome


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
        self._fn_bytes = _dumps(request.fn, f"function {request.name!r}")
        self._prefix = (
            f"shmpool-{'call' if star else 'imap'}-{_task_name(request.name)}-{uuid.uuid4().hex[:12]}"
        )
        self._fn_task: DaskFuture | None = None
        self._tasks: set[DaskFuture] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        batch = _DaskBatch(self, len(items))
        if self._star:
            (args, kwargs) = items[0]
            payload = _dumps((args, kwargs), f"the arguments of {self._request.name!r}")
            task = self._client.submit(
                run_call, self._fn_bytes, payload, self._backend.origin, key=self._prefix, pure=False
            )
        else:
            payload = _dumps(items, f"imap items {first} to {first + len(items) - 1}")
            if self._fn_task is None:
                self._fn_task = self._client.submit(
                    Payload, self._fn_bytes, self._backend.origin, False, key=f"{self._prefix}-fn", pure=False
                )
            task = self._client.submit(
                run_items, self._fn_task, first, payload, key=(self._prefix, first), pure=False
            )
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
            return BatchOutcome([], failure=_crash(task.exception(), f"a call of {where}", None))
        if self._star:
            packed, error = task.result()
            if error is not None:
                return BatchOutcome([], _failure(error))
            return BatchOutcome([_pickling.loads(packed)])
        packed, error, _work = task.result()
        results: list[Any] = _pickling.loads(packed)
        return BatchOutcome(results, None if error is None else _failure(error))

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
    """A Dask distributed cluster (see :class:`shmpool._backend.Backend`)."""

    kind = "DaskPool"
    # imap chunksize="auto": a Dask task costs milliseconds of scheduling, so a batch should
    # carry ten times more work than a SharedPool's to make that cost small.
    batch_target_s = 0.1

    def __init__(self, client: DaskClient | None, address: str | None):
        self.origin = origin()
        self.closed = False
        self._owned = OwnedArrays()
        self._own_client: DaskClient | None = None
        self.cluster: Any = None
        self._last_workers = 1
        if client is None:
            try:
                if address is None:
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

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool) -> Array:  # type: ignore[type-arg]
        array: Array = (np.zeros if zero else np.empty)(shape, dtype=dtype, order=order)  # type: ignore[call-overload]
        return self._owned.add(array)

    def owns(self, a: Array) -> bool:
        return self._owned.owns(a)

    def release(self, a: Array) -> None:
        self._owned.drop(a)

    def start_map(self, request: MapRequest) -> MapRun:
        return _DaskMapRun(self, request)

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        return _DaskStream(self, request, star)

    def shutdown(self, *, kill: bool) -> None:
        self.closed = True
        self._owned.clear()
        client, cluster = self._own_client, self.cluster
        self._own_client = None
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass


class DaskPool(Pool):
    """The pool API on a Dask distributed cluster, for work beyond one machine.

    ``client``: a ``distributed.Client`` to use (the pool never closes it). ``address``: a
    scheduler address to connect to instead (the pool closes its client). Neither: a
    ``LocalCluster`` of worker processes (one per usable CPU, one thread each) that the
    pool starts and closes. ``progress`` is the default of every call's ``progress=``.

    Arrays are ordinary NumPy arrays in the caller's process; a map sends each chunk to a
    worker and writes back the chunks the kernel changed (read-only arrays are never sent
    back). A writable whole() array is copied per chunk on the worker and the elements a
    chunk changed come back (chunks must write different elements, as races would make it
    in shared memory). The kernel, keywords and whole() arguments travel once per map.
    ``stats.bytes_staged_in`` counts the bytes sent to the cluster, ``bytes_copied_back``
    those that came back and were written. On ``timeout``, cancel or terminate, chunk tasks
    are cancelled; one already running finishes on its worker and its result is dropped.
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
    def client(self) -> DaskClient:
        """The ``distributed.Client`` this pool submits to."""
        return self._dask.client

    @property
    def cluster(self) -> Any:
        """The ``LocalCluster`` this pool started (and closes), or None."""
        return self._dask.cluster
