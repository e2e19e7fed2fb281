"""A map over NumPy arrays on a DaskPool: each chunk travels inside its task, and only the
chunks the kernel changed come back (see :mod:`shmpool.dask_pool` for the picture).

Also the helpers every DaskPool run shares: pickling for the cluster, task names, and the
errors for tasks that Dask (not the kernel) failed.
"""

from __future__ import annotations

import functools
import io
import pickle
import queue
import re
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
from distributed.scheduler import KilledWorker

from . import _pickling
from ._backend import Failure, MapOutcome
from ._checks import MapRequest
from ._dask_worker import Payload, run_chunk
from ._halo import HaloSpec
from ._protocol import RemoteError
from ._remote import rebuild_error
from ._source import SourcePickler
from .errors import WorkerCrashedError

__all__ = [
    "CHUNKS_IN_FLIGHT_PER_THREAD",
    "DaskMapRun",
    "crash_error",
    "dumps",
    "failure_of",
    "next_landed",
    "task_failure",
    "task_name",
]

Array = np.ndarray  # type: ignore[type-arg]
DaskClient = Any
DaskFuture = Any

# Chunks in flight per Dask worker thread: one running, one or two queued behind it so the
# worker never waits for the caller, and a bounded amount of the caller's data in the
# cluster at once (a map over more data than the cluster's memory still runs).
CHUNKS_IN_FLIGHT_PER_THREAD = 3


def dumps(obj: object, what: str) -> bytes:
    # cloudpickle (keeping code's file names), not shmpool._pickling: a SharedPool array
    # must travel by value to another machine, not as a reference to a block there is no
    # way to reach.
    buffer = io.BytesIO()
    try:
        SourcePickler(buffer, protocol=5).dump(obj)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled to send to the workers: {exc}") from exc
    return buffer.getvalue()


def task_name(name: str) -> str:
    # Task keys show on the Dask dashboard: keep them readable and valid.
    return re.sub(r"[^\w.]+", "_", name).strip("_") or "kernel"


def failure_of(error: RemoteError) -> Failure:
    return Failure(error.chunk, functools.partial(rebuild_error, error))


def crash_error(exc: BaseException, what: str, chunk: int | None) -> BaseException:
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


def task_failure(task: Any, where: str, index: int) -> BaseException:
    """Why the Dask task of chunk ``index`` (named ``where``) did not finish: cancelled, or
    the error it raised (a crash: :func:`crash_error`)."""
    if task.status == "cancelled":
        return CancelledError(f"{where} was cancelled on the Dask cluster")
    try:
        exc = task.exception()
    except BaseException as fetch_error:  # the scheduler went away meanwhile
        exc = fetch_error
    return crash_error(exc, where, index)


def next_landed(landed: queue.SimpleQueue[Any], deadline: float | None) -> list[Any] | None:
    """The next task to land on ``landed`` (waiting until ``deadline``, a monotonic time, or
    for ever) and every one that landed with it; None when the deadline passed first."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        return None
    try:
        batch = [landed.get(timeout=left)]
    except queue.Empty:
        return None
    while True:
        try:
            batch.append(landed.get_nowait())
        except queue.Empty:
            return batch


class DaskMapRun:
    """One map on a DaskPool (see :class:`shmpool._backend.MapRun`).

    The caller's thread drives it from :meth:`wait`: it sends chunk tasks within a window,
    writes back what landed, and sends more, until every chunk is in or the run stopped.
    """

    def __init__(self, client: DaskClient, origin: str, workers: int, request: MapRequest):
        self._request = request
        self._client = client
        split = request.split
        kernel_bytes = dumps(request.kernel, f"kernel {request.name!r}")
        # The same array passed twice travels once, and the kernel gets one array for both
        # positions, as SharedPool stages it once.
        slots: dict[int, int] = {}
        self._unique: list[Array] = []
        self._axes: list[int] = []
        layout: list[int] = []
        # A halo() argument's chunk travels with its margin (padded at the ends as its
        # boundary says): the worker has no neighbours to read it from. Its view is a
        # distinct read-only array, so it has a slot of its own and never comes back.
        self._halos: dict[int, tuple[int, HaloSpec]] = {}  # slot -> (position, spec)
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
            if position in split.halos:
                self._halos[slots[id(array)]] = (position, split.halos[position])
        writable = tuple(bool(a.flags.writeable) for a in self._unique)
        read_only_wholes = frozenset(
            i for i, obj in split.wholes.items() if isinstance(obj, np.ndarray) and not obj.flags.writeable
        )
        arguments = dumps((split.wholes, request.kwargs), "the whole() and keyword arguments")
        spec = pickle.dumps((kernel_bytes, arguments, tuple(layout), writable, read_only_wholes), protocol=5)
        self._wholes = {
            i: obj for i, obj in split.wholes.items() if isinstance(obj, np.ndarray) and obj.flags.writeable
        }
        self._count = len(request.plan)
        self._window = CHUNKS_IN_FLIGHT_PER_THREAD * workers
        self._prefix = f"shmpool-{task_name(request.name)}-{uuid.uuid4().hex[:12]}"
        self._outcome = MapOutcome([None] * self._count, bytes_in=len(spec))
        self._inflight: dict[DaskFuture, int] = {}
        self._landed: queue.SimpleQueue[DaskFuture | None] = queue.SimpleQueue()
        self._submitted = 0
        self._indices = 0
        self._stopped = False
        self._failed_at = self._count
        self._spec = None
        if self._count:
            self._spec = self._client.submit(
                Payload, spec, origin, True, key=f"{self._prefix}-spec", pure=False
            )
            self._send_more()

    def _chunk(self, array: Array, axis: int, index: int) -> Array:
        low, high = self._request.plan.bounds(index)
        return array[(slice(None),) * axis + (slice(low, high),)]

    def _send_more(self) -> None:
        while not self._stopped and self._submitted < self._count and len(self._inflight) < self._window:
            index = self._submitted
            low, high = self._request.plan.bounds(index)
            pieces: list[Array] = []
            margins: dict[int, tuple[int, int]] = {}
            for slot, (array, axis) in enumerate(zip(self._unique, self._axes, strict=True)):
                halo = self._halos.get(slot)
                if halo is None:
                    pieces.append(self._chunk(array, axis, index))
                    continue
                view, margins[halo[0]] = halo[1].view(array, axis, low, high)
                pieces.append(view)
            chunk = tuple(pieces)
            where = (low, high, self._request.plan.length, margins)
            # retries: Dask runs a task again when it failed other than by the kernel's own
            # exception (run_chunk returns those); a worker's death is rescheduled by the
            # scheduler itself (distributed.scheduler.allowed-failures).
            task = self._client.submit(
                run_chunk, self._spec, index, chunk, where, key=(self._prefix, index), pure=False,
                retries=self._request.retries,
            )  # fmt: skip
            self._outcome.bytes_in += sum(c.nbytes for c in chunk)
            self._inflight[task] = index
            task.add_done_callback(self._landed.put)
            self._submitted += 1

    def _over(self) -> bool:
        return not self._inflight and (self._stopped or self._submitted == self._count)

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._over():
            landed = next_landed(self._landed, deadline)
            if landed is None:
                return False
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
            low, high = self._request.plan.bounds(index)
            self._indices += high - low
            if error is not None:
                outcome.errors.append(failure_of(error))
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
        return task_failure(task, self._request.where(index), index)

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

    def indices_done(self) -> int:
        # Kernels run on the cluster, out of reach of shmpool.advance(): whole chunks only.
        return self._indices

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
