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

Dask is optional: this module imports it, and ``shmpool`` imports this module only when
``shmpool.DaskPool`` is first used.
"""

from __future__ import annotations

import enum
import functools
import itertools
import os
import pickle
import queue
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Literal, TypeVar

import cloudpickle
import numpy as np

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'shmpool.DaskPool needs Dask distributed; install it with: pip install "shmpool[dask]"'
    ) from exc

from . import _pickling, _worker
from ._args import check_dtype
from ._chunks import ChunkPlan
from ._kernel import pop_active, push_active
from ._maprun import check_map, kernel_name
from ._progress import TICK_S, open_bar, resolve_progress
from ._protocol import RemoteError
from ._remote import rebuild_error
from ._tasks import AUTO_BATCH_MAX, PendingFuture, check_imap
from .errors import PoolClosedError, WorkerCrashedError
from .pool import PoolStats, _as_shape, _order_of, usable_cpus

__all__ = ["DaskPool"]

T = TypeVar("T")
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
# imap batches in flight per Dask worker thread (SharedPool keeps 4 per worker too).
IMAP_BATCHES_PER_THREAD = 4
# imap chunksize="auto": seconds of the function's work per batch, ten times SharedPool's
# target, since a Dask task costs milliseconds where a SharedPool message costs microseconds.
AUTO_BATCH_WORK_S = 0.1


# ---- the worker side ----------------------------------------------------------------------
#
# These functions run in Dask worker processes, which import this module by name.


class _Payload:
    """Bytes pickled once in the caller, unpickled at most once per Dask worker process.

    It is the result of a task, so every task of a map on one worker gets the same object
    (Dask hands a task its dependencies without copying). It pickles as its bytes, so a
    transfer to another worker costs no re-pickling, and it is rebuilt fresh there.
    """

    __slots__ = ("_loaded", "_lock", "is_spec", "origin", "raw")

    def __init__(self, raw: bytes, origin: str, is_spec: bool):
        self.raw = raw
        self.origin = origin  # "host:pid" of the caller
        self.is_spec = is_spec  # a map's spec (see DaskPool._plan), else one function
        self._lock = threading.Lock()
        self._loaded: tuple[Any, RemoteError | None] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Payload, (self.raw, self.origin, self.is_spec))

    def __sizeof__(self) -> int:  # Dask's memory accounting (sizeof) uses it
        return object.__sizeof__(self) + len(self.raw)

    def load(self) -> Any:
        """The unpickled value; raises :class:`_LoadFailed` when it cannot be unpickled
        here (a module the caller has that this worker lacks)."""
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = (_load_spec(self.raw) if self.is_spec else pickle.loads(self.raw), None)
                except Exception as exc:
                    self._loaded = (None, _worker.remote_error(exc, None))
        value, error = self._loaded
        if error is not None:
            raise _LoadFailed(error)
        return value


def _load_spec(raw: bytes) -> tuple[Any, ...]:
    kernel, arguments, layout, writable, read_only_wholes = pickle.loads(raw)
    wholes, kwargs = pickle.loads(arguments)
    return pickle.loads(kernel), kwargs, wholes, layout, writable, read_only_wholes


class _LoadFailed(Exception):
    def __init__(self, error: RemoteError):
        super().__init__(error.message)
        self.error = error


def _origin() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _enter_worker(origin: str) -> None:
    # A decorated kernel called by a kernel must run in place, as in a SharedPool worker,
    # not start a pool of its own. Only in a separate process: a Dask worker thread in the
    # caller's own process (LocalCluster(processes=False)) must leave the caller alone.
    if _origin() != origin:
        _worker.IN_WORKER = True


def _raw_bytes(a: Array) -> Array:
    """``a``'s bytes in C order, as a flat uint8 array (a view when ``a`` is C-contiguous)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _same_bytes(a: Array, b: Array) -> bool:
    # Bytes, not values: NaN == NaN here, and -0.0 != 0.0, as a write would leave them.
    if a.nbytes == 0:
        return True
    x, y = _raw_bytes(a), _raw_bytes(b)
    if a.nbytes % 8 == 0:  # compare 8-byte words: an eighth of the elements to visit
        x, y = x.view(np.uint64), y.view(np.uint64)
    return bool(np.array_equal(x, y))


def _element_diff(pristine: Array, private: Array) -> tuple[Array, Array] | None:
    """The C-order flat indices of the elements whose bytes differ, and their new values."""
    if pristine.nbytes == 0 or _same_bytes(pristine, private):
        return None
    rows = pristine.size
    before = _raw_bytes(pristine).reshape(rows, -1)
    after = _raw_bytes(private).reshape(rows, -1)
    changed = np.flatnonzero((before != after).any(axis=1))
    return changed, np.ascontiguousarray(private).reshape(-1)[changed]


def _run_chunk(payload: _Payload, index: int, arrays: tuple[Array, ...]) -> tuple[Any, ...]:
    """Run the kernel on one chunk: ``(result bytes, changed chunks, whole() diffs, error)``.

    ``arrays`` are this chunk of each distinct chunked array. A changed chunk is reported as
    ``(slot, array)``; a changed writable whole() array as ``(position, indices, values)``.
    """
    try:
        kernel, kwargs, wholes, layout, writable, read_only_wholes = payload.load()
    except _LoadFailed as failed:
        return None, (), (), failed.error
    _enter_worker(payload.origin)
    views: list[Array] = []
    before: dict[int, Array] = {}
    for slot, arrived in enumerate(arrays):
        view = arrived
        if writable[slot]:
            if not view.flags.writeable:  # a buffer that arrived read-only
                view = view.copy()
            before[slot] = view.copy()
        elif view.flags.writeable:
            view = view.view()
            view.flags.writeable = False  # as in SharedPool: writes to it raise
        views.append(view)
    private: dict[int, Array] = {}
    args: list[Any] = []
    for position, slot in enumerate(layout):
        if slot >= 0:
            args.append(views[slot])
            continue
        obj = wholes[position]
        if isinstance(obj, np.ndarray) and position not in read_only_wholes and not obj.dtype.hasobject:
            # Every chunk writes to its own copy, so a chunk's writes can be told apart
            # from the spec's pristine copy, which chunks on this worker share.
            obj = private[position] = obj.copy(order="K")
        elif isinstance(obj, np.ndarray) and obj.flags.writeable and position in read_only_wholes:
            obj.flags.writeable = False
        args.append(obj)
    error: RemoteError | None = None
    packed: bytes | None = None
    try:
        value = kernel(*args, **kwargs)
    except Exception as exc:
        error = _worker.remote_error(exc, index)
    else:
        if value is not None:
            try:
                packed = _pickling.dumps(value)
            except Exception:
                error = _worker._first_unpicklable([(index, value)], "chunk")[1]
    del args
    # Changes are sent back after an error too: SharedPool keeps what a failing chunk wrote.
    changed = tuple((slot, views[slot]) for slot, old in before.items() if not _same_bytes(old, views[slot]))
    diffs = []
    for position, copy in private.items():
        diff = _element_diff(wholes[position], copy)
        if diff is not None:
            diffs.append((position, *diff))
    return packed, changed, tuple(diffs), error


def _run_items(payload: _Payload, first: int, items: bytes) -> tuple[bytes, RemoteError | None, float]:
    """Call the payload's function on each item of an imap batch (numbered from ``first``):
    the pickled results of the items that ran, the error that stopped the batch, and the
    seconds the function took (what ``chunksize="auto"`` sizes batches from)."""
    try:
        fn = payload.load()
    except _LoadFailed as failed:
        return _pickling.dumps([]), failed.error, 0.0
    _enter_worker(payload.origin)
    results: list[Any] = []
    error: RemoteError | None = None
    start = time.perf_counter()
    try:
        for item in pickle.loads(items):
            results.append(fn(item))
    except Exception as exc:
        error = _worker.remote_error(exc, first + len(results))
    work = time.perf_counter() - start
    try:
        return _pickling.dumps(results), error, work
    except Exception:
        good, error = _worker._first_unpicklable(list(enumerate(results, first)), "item")
        return _pickling.dumps(results[:good]), error, work


def _run_call(fn: bytes, args: bytes, origin: str) -> tuple[bytes | None, RemoteError | None]:
    """``fn(*args, **kwargs)`` for ``submit``: its pickled result, or the error it raised."""
    try:
        function = pickle.loads(fn)
        positional, keywords = pickle.loads(args)
    except Exception as exc:
        return None, _worker.remote_error(exc, None)
    _enter_worker(origin)
    try:
        value = function(*positional, **keywords)
    except Exception as exc:
        return None, _worker.remote_error(exc, None)
    try:
        return _pickling.dumps(value), None
    except Exception:
        return None, _worker._first_unpicklable([(0, value)], "call")[1]


# ---- the caller side ---------------------------------------------------------------------


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


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Owned:
    """What a DaskPool made and must close; kept apart from the pool so that the garbage
    collector can finalize an unclosed pool."""

    def __init__(self, client: DaskClient | None, cluster: Any):
        self.client = client
        self.cluster = cluster

    def release(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass


class _MapRun:
    """One map on a DaskPool: plan checked in the caller's thread, then :meth:`execute`."""

    def __init__(
        self,
        pool: DaskPool,
        name: str,
        spec: bytes,
        unique: list[Array],
        axes: list[int],
        wholes: dict[int, Any],
        plan: ChunkPlan,
        workers: int,
        bar_options: dict[str, Any] | None,
        timeout: float | None,
    ):
        self.pool = pool
        self.workers = workers
        self.name = name
        self.spec = spec
        self.unique = unique
        self.axes = axes
        self.wholes = wholes
        self.plan = plan
        self.bar_options = bar_options
        self.timeout = timeout
        self.token = uuid.uuid4().hex[:12]
        self.bytes_in = self.bytes_back = self.chunks_done = 0
        self._wake: queue.SimpleQueue[DaskFuture | None] = queue.SimpleQueue()
        self._stop: BaseException | None = None
        self._lock = threading.Lock()

    def abort(self, error: BaseException) -> None:
        """Stop the run from any thread; it raises ``error`` (unless it finished first)."""
        with self._lock:
            if self._stop is None:
                self._stop = error
        self._wake.put(None)

    def cancel(self) -> None:
        """Stop the run from any thread: it ends with CancelledError."""
        self.abort(CancelledError(f"map of kernel {self.name!r} was cancelled"))

    def _chunk(self, array: Array, axis: int, index: int) -> Array:
        low, high = self.plan.bounds(index)
        return array[(slice(None),) * axis + (slice(low, high),)]

    def _where(self, index: int) -> str:
        low, high = self.plan.bounds(index)
        return f"kernel {self.name!r} on chunk {index} (indices {low}:{high} of the split axis)"

    def execute(self) -> list[Any]:
        """Run the map and return the kernel's return values in chunk order."""
        pool = self.pool
        count = len(self.plan)
        if count == 0:
            return []
        client = pool._client
        self.bytes_in = len(self.spec)
        self.bytes_back = 0
        self.chunks_done = 0
        results: list[Any] = [None] * count
        inflight: dict[DaskFuture, int] = {}
        window = CHUNKS_IN_FLIGHT_PER_THREAD * self.workers
        prefix = f"shmpool-{_task_name(self.name)}-{self.token}"
        bar = open_bar(count, self.bar_options, "chunk", self.name) if self.bar_options is not None else None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        spec = client.submit(_Payload, self.spec, pool._origin, True, key=f"{prefix}-spec", pure=False)
        submitted = 0
        try:
            while self.chunks_done < count:
                while submitted < count and len(inflight) < window:
                    chunk = tuple(
                        self._chunk(a, axis, submitted)
                        for a, axis in zip(self.unique, self.axes, strict=True)
                    )
                    future = client.submit(
                        _run_chunk, spec, submitted, chunk, key=(prefix, submitted), pure=False
                    )
                    self.bytes_in += sum(c.nbytes for c in chunk)
                    inflight[future] = submitted
                    future.add_done_callback(self._wake.put)
                    submitted += 1
                landed = self._next_landed(deadline)
                if self._stop is not None:
                    raise self._stop
                failure = self._take(client, [f for f in landed if f in inflight], inflight, results)
                if bar is not None:
                    bar.update(self.chunks_done - bar.n)
                if failure is not None:
                    raise failure
            return results
        except Exception:
            if self._stop is not None:  # terminate() closed the client under a gather
                raise self._stop from None
            raise
        finally:
            try:
                if inflight:
                    client.cancel(list(inflight))
                spec.release()
            except Exception:
                pass  # the client is closing (terminate): its tasks go with it
            inflight.clear()
            if bar is not None:
                bar.close()
            pool._count_map(self.chunks_done, self.bytes_in, self.bytes_back)

    def _take(
        self,
        client: DaskClient,
        landed: list[DaskFuture],
        inflight: dict[DaskFuture, int],
        results: list[Any],
    ) -> BaseException | None:
        """Write back what the landed tasks changed, store their results, and return the
        error that must stop the map, if any (a kernel's error of the lowest chunk first)."""
        finished = [f for f in landed if f.status == "finished"]
        errors: list[tuple[int, BaseException]] = []
        for future, outcome in zip(finished, client.gather(finished) if finished else [], strict=True):
            index = inflight.pop(future)
            packed, changed, diffs, error = outcome
            self.bytes_back += self._write_back(index, changed, diffs)
            self.chunks_done += 1
            if error is not None:
                where = f"kernel {self.name!r}" if error.chunk is None else self._where(index)
                errors.append((index, rebuild_error(error, where)))
            elif packed is not None:
                results[index] = _pickling.loads(packed)
        for future in landed:
            if future not in inflight:
                continue
            if future.status in ("error", "cancelled"):
                index = inflight.pop(future)
                errors.append((index, self._task_failure(future, index)))
            elif future.status != "finished":
                # Lost after it finished (its worker died): Dask runs it again; wait again.
                future.add_done_callback(self._wake.put)
        return min(errors, key=lambda e: e[0])[1] if errors else None

    def _next_landed(self, deadline: float | None) -> list[DaskFuture]:
        """Wait for at least one task (or a stop), then take every task that has landed."""
        while True:
            step = TICK_S if self.bar_options is not None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.abort(
                        TimeoutError(f"map of kernel {self.name!r} did not finish within {self.timeout} s")
                    )
                    return []
                step = left if step is None else min(step, left)
            try:
                first = self._wake.get(timeout=step)
            except queue.Empty:
                if self.bar_options is not None:
                    return []  # a tick: let the caller refresh the bar
                continue
            landed = [] if first is None else [first]
            while True:
                try:
                    more = self._wake.get_nowait()
                except queue.Empty:
                    return landed
                if more is not None:
                    landed.append(more)

    def _task_failure(self, future: DaskFuture, index: int) -> BaseException:
        where = self._where(index)
        if future.status == "cancelled":
            if self.pool.closed:
                return PoolClosedError("the DaskPool was closed while a map ran")
            return CancelledError(f"{where} was cancelled on the Dask cluster")
        try:
            exc = future.exception()
        except BaseException as fetch_error:  # the scheduler went away meanwhile
            exc = fetch_error
        return _crash(exc, where, index)

    def _write_back(self, index: int, changed: tuple[Any, ...], diffs: tuple[Any, ...]) -> int:
        moved = 0
        for slot, data in changed:
            np.copyto(self._chunk(self.unique[slot], self.axes[slot], index), data)
            moved += data.nbytes
        for position, rows, values in diffs:
            target = self.wholes[position]
            if target.ndim == 0:
                target[()] = values[0]
            else:
                target[np.unravel_index(rows, target.shape)] = values
            moved += rows.nbytes + values.nbytes
        return moved


class DaskPool:
    """SharedPool's API on a Dask distributed cluster.

    ``client``: a ``distributed.Client`` to use (the pool never closes it). ``address``: a
    scheduler address to connect to instead (the pool closes its client). Neither: a
    ``LocalCluster`` of worker processes (one per usable CPU, one thread each) that the
    pool starts and closes. ``progress`` is the default of every call's ``progress=``.

    Arrays are ordinary NumPy arrays in the caller's process; a map sends each chunk to a
    worker and writes back the chunks the kernel changed. Use it as a context manager (it
    is then the active pool of ``@shmpool.kernel``), or call :meth:`close`.
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
        resolve_progress(progress, None)  # validate now, not at the first call
        self._progress: bool | dict[str, Any] = progress
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = _State.RUNNING
        self._calls: set[Any] = set()  # runs and calls in flight: each has abort()
        self._owned_arrays: weakref.WeakValueDictionary[int, Array] = weakref.WeakValueDictionary()
        self._stats = PoolStats()
        self._origin = _origin()
        owned = _Owned(None, None)
        self._owned = owned
        self._finalizer = weakref.finalize(self, owned.release)
        if client is None:
            try:
                if address is None:
                    owned.cluster = _dask.LocalCluster(
                        n_workers=usable_cpus(),
                        threads_per_worker=1,  # kernels often hold the GIL: one per process
                        processes=True,
                        dashboard_address=":0",  # a free port: never a clash
                    )
                    client = owned.client = _dask.Client(owned.cluster, set_as_default=False)
                else:
                    client = owned.client = _dask.Client(address, set_as_default=False)
            except BaseException:
                self._finalizer()
                raise
        self._client: DaskClient = client
        self._last_workers = 1

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def client(self) -> DaskClient:
        """The ``distributed.Client`` this pool submits to."""
        return self._client

    @property
    def workers(self) -> int:
        """The worker threads of the cluster now (at least 1): what automatic chunking
        plans for. After close, the last count seen."""
        if self._state is _State.RUNNING:
            try:
                self._last_workers = max(1, sum(self._client.nthreads().values()))
            except Exception:
                pass  # a scheduler that is restarting: keep the last count
        return self._last_workers

    @property
    def closed(self) -> bool:
        """Whether close() or terminate() was called."""
        return self._state is not _State.RUNNING

    @property
    def stats(self) -> PoolStats:
        """Counters of what this pool has done. ``bytes_staged_in``: array bytes sent to the
        cluster (chunks, and the pickled kernel, keywords and whole() arguments, once per
        map); ``bytes_copied_back``: array bytes that came back and were written."""
        return self._stats

    def close(self) -> None:
        """Wait for the maps and calls in flight, then close what the pool started.

        Idempotent. A client passed in stays open; its cluster is left running.
        """
        with self._lock:
            if self._state is not _State.RUNNING:
                return
            self._state = _State.CLOSING
            streams = [c for c in self._calls if isinstance(c, _Stream)]
        for stream in streams:  # an unfinished imap iterator would wait forever
            stream.abort(PoolClosedError("the DaskPool was closed"))
        with self._lock:
            while self._calls - set(streams):
                self._idle.wait()
        self._shutdown()

    def terminate(self) -> None:
        """Stop now: maps and calls in flight raise PoolClosedError; close what the pool
        started. Tasks already running on workers finish there, and their results are
        dropped. Idempotent."""
        with self._lock:
            if self._state is not _State.RUNNING:
                return
            self._state = _State.CLOSING
            calls = list(self._calls)
        for call in calls:
            call.abort(PoolClosedError("the DaskPool was terminated"))
        self._shutdown()

    def _shutdown(self) -> None:
        self._finalizer.detach()
        try:
            self._owned.release()
        finally:
            with self._lock:
                self._owned_arrays.clear()
                self._state = _State.CLOSED

    def __enter__(self) -> DaskPool:
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
        try:
            where = self._client.scheduler.address if self._client.scheduler is not None else None
        except Exception:
            where = None
        return f"<DaskPool scheduler={where!r} {self._state.value}>"

    def _check_open(self) -> None:
        if self._state is not _State.RUNNING:
            raise PoolClosedError("this DaskPool is closed")

    def _register(self, call: Any) -> None:
        with self._lock:
            if self._state is not _State.RUNNING:
                raise PoolClosedError("this DaskPool is closed")
            self._calls.add(call)

    def _unregister(self, call: Any) -> None:
        with self._lock:
            self._calls.discard(call)
            self._idle.notify_all()

    def _count_map(self, chunks: int, bytes_in: int, bytes_back: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = PoolStats(
                s.maps + 1, s.chunks + chunks, s.bytes_staged_in + bytes_in, s.bytes_copied_back + bytes_back
            )

    # ---- allocation ---------------------------------------------------------------------
    #
    # Ordinary arrays in the caller's process. The pool remembers the ones it made, so that
    # is_shared(), free() and asarray() mean what they mean on a SharedPool: "made by this
    # pool and not freed yet", and asarray() of such an array is the array itself.

    def empty(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array."""
        return self._allocate(shape, dtype, order, np.empty)

    def zeros(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros."""
        return self._allocate(shape, dtype, order, np.zeros)

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, order: str = "C"
    ) -> np.ndarray:  # type: ignore[type-arg]
        """A new array filled with ``fill_value``; the dtype defaults to ``fill_value``'s."""
        if dtype is None:
            dtype = np.asarray(fill_value).dtype
        out = self._allocate(shape, dtype, order, np.empty)
        out[...] = fill_value
        return out

    def empty_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array with the shape (and dtype, and C/F order) of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, _order_of(a), np.empty)

    def zeros_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros with the shape (and dtype, and C/F order) of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, _order_of(a), np.zeros)

    def asarray(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A copy of ``a`` made by this pool; ``a`` itself if this pool made it (and no other
        dtype is asked for)."""
        self._check_open()
        if isinstance(a, np.ndarray) and (dtype is None or np.dtype(dtype) == a.dtype) and self.is_shared(a):
            return a
        source = np.asarray(a, dtype=dtype)
        out = self._allocate(source.shape, source.dtype, _order_of(source), np.empty)
        np.copyto(out, source)
        return out

    def is_shared(self, a: Any) -> bool:
        """Whether ``a`` (or the array it is a view of) was made by this pool and not freed."""
        if not isinstance(a, np.ndarray):
            return False
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        return self._owned_arrays.get(id(root)) is root

    def free(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
        """Forget that this pool made ``a``: it stays a valid array, no longer counted as the
        pool's (the memory goes when the last view of it is garbage-collected)."""
        self._check_open()
        if not self.is_shared(a):
            raise ValueError("free() takes an array allocated by this pool that was not freed yet")
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        del self._owned_arrays[id(root)]

    def _allocate(
        self, shape: int | Iterable[int], dtype: Any, order: str, make: Callable[..., Array]
    ) -> np.ndarray:  # type: ignore[type-arg]
        self._check_open()
        dtype = check_dtype(np.dtype(dtype))  # the same arrays SharedPool accepts
        dims = _as_shape(shape)
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', got {order!r}")
        array: Array = make(dims, dtype=dtype, order=order)
        self._owned_arrays[id(array)] = array
        return array

    # ---- map ------------------------------------------------------------------------

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
        """Run ``kernel(*chunk_views, **kwargs)`` over chunks of ``arrays`` on the cluster.

        As :meth:`SharedPool.map`: every array is split along ``axis`` into the same chunks,
        :func:`whole` arguments go to every call whole, and the kernel's return values come
        back in chunk order. Each chunk travels to a worker; the chunks the kernel changed
        come back and are written into ``arrays`` (read-only arrays are never sent back).
        A writable whole() array is copied per chunk on the worker and the elements a chunk
        changed come back (chunks must write different elements, as races would make it in
        shared memory). The kernel, ``kwargs`` and whole() arguments travel once per map.
        ``timeout``: seconds, after which the map's tasks are cancelled (running ones finish
        on their workers, results dropped) and TimeoutError is raised.
        """
        run = self._plan(kernel, arrays, axis, chunks, progress, timeout, kwargs)
        self._register(run)
        try:
            return run.execute()
        finally:
            self._unregister(run)

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

        Bad arguments raise here. ``future.cancel()`` works until the map has finished:
        unsent chunks are never sent, sent ones are cancelled on the cluster, and chunks
        already written back stay written.
        """
        run = self._plan(kernel, arrays, axis, chunks, progress, timeout, kwargs)
        self._register(run)
        future: PendingFuture[list[Any]] = PendingFuture(on_cancel=run.cancel)

        def execute() -> None:
            try:
                future.settle(run.execute)
            finally:
                self._unregister(run)

        threading.Thread(target=execute, name="shmpool-dask-map-async", daemon=True).start()
        return future

    def _plan(
        self,
        kernel: Callable[..., Any],
        arrays: tuple[Any, ...],
        axis: object,
        chunks: int | Iterable[int] | None,
        progress: object,
        timeout: float | None,
        kwargs: dict[str, Any],
    ) -> _MapRun:
        """Check every argument of a map and pickle what travels once; raise on bad input."""
        self._check_open()
        workers = self.workers
        checked = check_map(kernel, arrays, axis, chunks, progress, self._progress, timeout, workers)
        name, split, plan, bar_options = checked.name, checked.split, checked.plan, checked.bar_options
        kernel_bytes = _dumps(kernel, f"kernel {name!r}")
        # The same array passed twice travels once, and the kernel gets one array for both
        # positions, as SharedPool stages it once.
        slots: dict[int, int] = {}
        unique: list[Array] = []
        axes: list[int] = []
        layout: list[int] = []
        for position in range(len(arrays)):
            array = split.chunked.get(position)
            if array is None:
                layout.append(-1)
                continue
            if id(array) not in slots:
                slots[id(array)] = len(unique)
                unique.append(array)
                axes.append(split.axes[position])
            layout.append(slots[id(array)])
        writable = tuple(bool(a.flags.writeable) for a in unique)
        read_only_wholes = frozenset(
            i for i, obj in split.wholes.items() if isinstance(obj, np.ndarray) and not obj.flags.writeable
        )
        arguments = _dumps((split.wholes, kwargs), "the whole() and keyword arguments")
        spec = pickle.dumps((kernel_bytes, arguments, tuple(layout), writable, read_only_wholes), protocol=5)
        wholes = {
            i: obj
            for i, obj in split.wholes.items()
            if isinstance(obj, np.ndarray) and obj.flags.writeable and not obj.dtype.hasobject
        }
        return _MapRun(self, name, spec, unique, axes, wholes, plan, workers, bar_options, timeout)

    # ---- submit and imap ------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a Dask worker; a Future of its result.

        Arguments are pickled (cloudpickle) and travel by value: writes to an array argument
        stay on the worker. ``cancel()`` works until the call has finished (a call already
        running still runs; its result is dropped).
        """
        self._check_open()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        name = kernel_name(fn)
        fn_bytes = _dumps(fn, f"function {name!r}")
        arg_bytes = _dumps((args, kwargs), f"the arguments of {name!r}")
        call = _Call(self, name)
        self._register(call)
        try:
            task = self._client.submit(
                _run_call,
                fn_bytes,
                arg_bytes,
                self._origin,
                key=f"shmpool-call-{_task_name(name)}-{uuid.uuid4().hex}",
                pure=False,
            )
        except BaseException:
            self._unregister(call)
            raise
        call.start(task)
        return call.future

    def imap(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        progress: bool | dict[str, Any] | None = None,
    ) -> Iterator[T]:
        """An iterator of ``fn(item)`` for each item of ``iterable``, run on the cluster.

        As :meth:`SharedPool.imap`: results in input order when ``ordered``, else as they
        finish; the iterable is consumed lazily with a bounded number of batches in flight;
        ``chunksize`` items travel per task, or ``"auto"`` sizes batches from the measured
        throughput; an exception in ``fn`` is raised at that item's position and the
        remaining items are cancelled, as is closing the iterator early. ``fn`` travels
        once per imap.
        """
        self._check_open()
        checked = check_imap(fn, iterable, chunksize, progress, self._progress)
        fn_bytes = _dumps(fn, f"function {checked.name!r}")
        stream = _Stream(self, checked.name, fn_bytes)
        sizer = _BatchSizer(checked.chunksize)
        return stream.run(iter(iterable), ordered, sizer, self.workers, checked.bar_options, checked.total)


class _BatchSizer:
    """How many items the next imap batch takes: fixed, or with ``chunksize="auto"`` enough
    for about ``AUTO_BATCH_WORK_S`` of the function's work.

    SharedPool sizes auto batches from the rate at which they land; a Dask task costs
    milliseconds of scheduling, often more than the work in a small batch, so that rate
    would keep batches small. Here the workers time the function itself, and a batch grows
    (at most doubling, as SharedPool's) until its work outweighs the task's overhead.
    """

    def __init__(self, fixed: int | None):
        self._fixed = fixed
        self._size = 1
        self._per_item: float | None = None  # seconds of work per item, smoothed

    def next_size(self) -> int:
        return self._fixed if self._fixed is not None else self._size

    def landed(self, items: int, work_s: float) -> None:
        if self._fixed is not None or items == 0:
            return
        per_item = work_s / items
        self._per_item = per_item if self._per_item is None else 0.5 * (self._per_item + per_item)
        wanted = AUTO_BATCH_WORK_S / max(self._per_item, 1e-9)
        self._size = max(1, int(min(wanted, 2 * self._size + 1, AUTO_BATCH_MAX)))


class _Call:
    """A ``submit`` in flight: a PendingFuture settled from the Dask task's outcome."""

    def __init__(self, pool: DaskPool, name: str):
        self.pool = pool
        self.name = name
        self.task: DaskFuture | None = None
        self.future: PendingFuture[Any] = PendingFuture(on_cancel=self._cancel_task)
        self._stop: BaseException | None = None

    def start(self, task: DaskFuture) -> None:
        self.task = task  # holding the Dask future keeps its task alive
        task.add_done_callback(self._finished)

    def _cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def abort(self, error: BaseException) -> None:
        self._stop = error
        self._cancel_task()

    def _finished(self, task: DaskFuture) -> None:
        try:
            self.future.settle(lambda: self._outcome(task))
        finally:
            self.task = None
            self.pool._unregister(self)

    def _outcome(self, task: DaskFuture) -> Any:
        if self._stop is not None:
            raise self._stop
        where = f"{self.name!r}"
        if task.status == "cancelled":
            raise CancelledError(f"the call of {where} was cancelled")
        if task.status == "error":
            raise _crash(task.exception(), f"the call of {where}", None)
        packed, error = task.result()
        if error is not None:
            raise rebuild_error(error, where)
        return _pickling.loads(packed)


class _Stream:
    """One ``imap``: batches submitted lazily, results yielded as SharedPool's imap does."""

    def __init__(self, pool: DaskPool, name: str, fn_bytes: bytes):
        self.pool = pool
        self.name = name
        self.fn_bytes = fn_bytes
        self.prefix = f"shmpool-imap-{_task_name(name)}-{uuid.uuid4().hex[:12]}"
        self._arrived: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._stop: BaseException | None = None

    def abort(self, error: BaseException) -> None:
        """Stop the stream from any thread: its iterator raises ``error``."""
        self._stop = error
        self._arrived.put(None)

    def _landed(self, number: int, task: DaskFuture) -> None:
        self._arrived.put(number)

    def run(
        self,
        items: Iterator[Any],
        ordered: bool,
        sizer: _BatchSizer,
        workers: int,
        bar_options: dict[str, Any] | None,
        total: int | None,
    ) -> Iterator[Any]:
        pool = self.pool
        pool._register(self)
        client = pool._client
        in_flight: dict[int, DaskFuture] = {}
        landed: dict[int, DaskFuture] = {}
        numbers = itertools.count()
        next_to_yield = 0
        position = 0
        exhausted = False
        fn = None
        bar = open_bar(total, bar_options, "item", self.name) if bar_options is not None else None
        try:
            window = IMAP_BATCHES_PER_THREAD * workers
            fn = client.submit(
                _Payload, self.fn_bytes, pool._origin, False, key=f"{self.prefix}-fn", pure=False
            )
            while True:
                while not exhausted and len(in_flight) + len(landed) < window:
                    batch = list(itertools.islice(items, sizer.next_size()))
                    if not batch:
                        exhausted = True
                        break
                    payload = _dumps(batch, f"imap items {position} to {position + len(batch) - 1}")
                    number = next(numbers)
                    task = client.submit(
                        _run_items, fn, position, payload, key=(self.prefix, number), pure=False
                    )
                    in_flight[number] = task
                    task.add_done_callback(functools.partial(self._landed, number))
                    position += len(batch)
                if not in_flight and not landed:
                    return
                while next_to_yield not in landed if ordered else not landed:
                    got = self._arrived.get()
                    if self._stop is not None:
                        raise self._stop
                    if got is not None and got in in_flight:
                        landed[got] = in_flight.pop(got)
                if ordered:
                    task = landed.pop(next_to_yield)
                    next_to_yield += 1
                else:
                    task = landed.pop(next(iter(landed)))
                results, error, work = self._outcome(task)
                sizer.landed(len(results), work)
                for value in results:
                    yield value
                    if bar is not None:
                        bar.update(1)
                if error is not None:
                    raise error
        finally:
            pending = [*in_flight.values(), *landed.values()]
            try:
                if pending:
                    client.cancel(pending)
                if fn is not None:
                    fn.release()
            except Exception:
                pass  # the client is closing (terminate): its tasks go with it
            pool._unregister(self)
            if bar is not None:
                bar.close()

    def _outcome(self, task: DaskFuture) -> tuple[list[Any], BaseException | None, float]:
        where = f"{self.name!r}"
        if task.status == "cancelled":
            if self.pool.closed:
                raise PoolClosedError("the DaskPool was closed while an imap ran")
            raise CancelledError(f"an imap batch of {where} was cancelled on the Dask cluster")
        if task.status == "error":
            raise _crash(task.exception(), f"an imap batch of {where}", None)
        packed, error, work = task.result()
        results: list[Any] = _pickling.loads(packed)
        if error is None:
            return results, None, work
        at = where if error.chunk is None else f"{where} on item {error.chunk}"
        return results, rebuild_error(error, at), work
