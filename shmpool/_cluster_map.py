"""A map over cluster arrays: chunk *i* runs where chunk *i* lives, and only results move.

Per chunk, three kinds of task (nothing else goes through the caller)::

    run_on_chunks(spec, i, chunk_i of each array)   on the worker holding chunk i
      -> outcome_of(...)   (result bytes, error): the only thing gathered by the caller
      -> pick(..., k)      chunk i of array k, the same memory the kernel wrote in place

When the run is over, each array holds the picks as its chunks (see
:mod:`shmpool._cluster_array` for why a write makes a new key), and the map returns only
once they are in place: until then the scheduler still holds the run's lineage, and would
recompute a lost chunk by running the kernel again instead of reporting it lost. A halo()
argument's view is built in the chunk's task from its own chunk and the margins, cut on
the workers holding them (see :mod:`shmpool._cluster_halo`). An array whose chunks
differ from the map's (other boundaries, or another axis) is first re-split by
``resplit`` tasks placed on the workers that will run the chunks: worker to worker. After
the map, that array keeps the map's chunks.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import field
from typing import Any

from . import _pickling
from ._backend import MapOutcome
from ._checks import MapRequest, SplitArgs
from ._cluster_array import ClusterArray, ClusterStore
from ._cluster_halo import HaloArg, HaloPieces
from ._cluster_worker import outcome_of, pick, resplit, run_on_chunks, take
from ._dask_map import dumps, failure_of, next_landed, task_failure, task_name
from ._dask_worker import Payload
from ._records import record

__all__ = ["SETTLE_S", "SPEC_IN_TASK_LIMIT", "ClusterMapRun", "ClusterSplit", "MapArrays"]

DaskFuture = Any
# How long a finished map waits for its written chunks to be taken as new keys (a task on
# the worker that holds each, normally milliseconds) before returning anyway.
SETTLE_S = 30.0
# A spec (kernel, keywords, whole() arguments) up to this size travels inside every chunk
# task: one task fewer per map. A bigger one is a task of its own, fetched once per worker.
SPEC_IN_TASK_LIMIT = 64 * 1024


class MapArrays:
    """The distinct cluster arrays of a map, the argument layout, and the target chunks.

    ``layout[position]``: the array's index in ``arrays``; -1 for a ``whole()`` object of
    the caller's; ``-1 - j`` for ``joined[j - 1]``, a cluster array passed ``whole()``; -1
    too for a halo() argument, which is in ``halos`` (read only, so not in ``arrays``).
    """

    def __init__(
        self, arrays: list[ClusterArray], axes: list[int], layout: tuple[int, ...], offsets: list[int],
        joined: list[ClusterArray], halos: list[HaloArg] | None = None,
    ):  # fmt: skip
        self.arrays = arrays
        self.axes = axes
        self.layout = layout
        self.offsets = offsets
        self.joined = joined
        self.halos = halos or []


@record
class ClusterSplit(SplitArgs):
    """The split of a map over cluster arrays (``chunked`` is empty: the arrays are here)."""

    cluster: MapArrays = field(kw_only=True)  # after SplitArgs's fields with defaults


class ClusterMapRun:
    """One map over cluster arrays (see :class:`shmpool._backend.MapRun`)."""

    def __init__(self, store: ClusterStore, request: MapRequest):
        assert isinstance(request.split, ClusterSplit)
        plan = request.split.cluster
        self._store = store
        self._client = store.client
        self._request = request
        self._plan = plan
        count = len(plan.offsets) - 1
        self._count = count
        self._indices = 0  # for the bar: the lengths of the chunks that ran
        self._prefix = f"shmpool-{task_name(request.name)}-{uuid.uuid4().hex[:12]}"
        self._outcome = MapOutcome([None] * count)
        self._landed: queue.SimpleQueue[DaskFuture | None] = queue.SimpleQueue()
        self._stopped = False
        self._failed_at = count
        self._ran: dict[int, DaskFuture] = {}  # chunk -> its run task, once it finished
        self._pending: dict[DaskFuture, int] = {}  # outcome task -> chunk
        self._runs: dict[int, DaskFuture] = {}
        where = f"a map of kernel {request.name!r}"
        self._sources = [a.chunk_futures(where) for a in plan.arrays]
        # Halo arrays are only read: each chunk's task gets its margins cut from the
        # chunks that hold them (see _cluster_halo).
        self._halos = HaloPieces(store, self._prefix, plan.halos, plan.offsets, where) if plan.halos else None
        self._homes = self._place()
        self._inputs = [self._aligned(k) for k in range(len(plan.arrays))]
        # A whole() cluster array: every chunk task depends on all its chunks, so each
        # worker fetches them (worker to worker) and joins them once per task.
        joined = [a.chunk_futures(where) for a in plan.joined]
        self._joined = [f for futures in joined for f in futures]
        joins = tuple(
            (a.axis, len(f), a.shape, a.dtype.str) for a, f in zip(plan.joined, joined, strict=True)
        )
        kernel = dumps(request.kernel, f"kernel {request.name!r}")
        arguments = dumps((request.split.wholes, request.kwargs), "the whole() and keyword arguments")
        spec = pickle.dumps((kernel, arguments, plan.layout, joins), protocol=5)
        self._spec: Any = spec
        self._spec_task: DaskFuture | None = None
        if len(spec) > SPEC_IN_TASK_LIMIT:
            self._spec = self._spec_task = self._client.submit(
                Payload, spec, store.origin, False, key=f"{self._prefix}-spec", pure=False
            )
            self._outcome.bytes_in = len(spec)
        else:
            self._outcome.bytes_in = len(spec) * count
        for i in range(count):
            chunks = [inputs[i] for inputs in self._inputs]
            margins: dict[int, tuple[int, int]] = {}
            frames: tuple[Any, ...] = ()
            pieces: list[DaskFuture] = []
            if self._halos is not None:
                margins, frames, pieces, sent = self._halos.chunk(i)
                self._outcome.bytes_in += sent
            where_i = (*self._bounds(i), request.plan.length, margins, frames)
            # The pieces are not held here: the scheduler keeps each until its run has it.
            run = self._client.submit(
                run_on_chunks, self._spec, store.origin, i, where_i, *chunks, *self._joined, *pieces,
                key=f"{self._prefix}-{i}", workers=self._homes[i], allow_other_workers=self._homes[i] is not None, pure=False,
                retries=self._request.retries,  # as for a map over NumPy arrays (_dask_map)
            )  # fmt: skip
            # Pinned with its run: elsewhere, it would fetch the run's outputs, chunks and all.
            result = self._client.submit(
                outcome_of, run, key=(f"{self._prefix}-outcome", i), workers=self._homes[i],
                allow_other_workers=self._homes[i] is not None, pure=False,
            )  # fmt: skip
            self._runs[i] = run
            self._pending[result] = i
            result.add_done_callback(self._landed.put)

    def _bounds(self, i: int) -> tuple[int, int]:
        return self._plan.offsets[i], self._plan.offsets[i + 1]

    def _is_aligned(self, k: int) -> bool:
        array = self._plan.arrays[k]
        return array.axis == self._plan.axes[k] and list(array.chunks) == self._plan.offsets

    def _place(self) -> list[list[str] | None]:
        """Where each chunk should run: where chunk i of the first aligned array is, else
        spread over the workers in order."""
        for k in range(len(self._plan.arrays)):
            if self._is_aligned(k):
                known = self._plan.arrays[k].homes
                return known if known is not None else self._store.homes(self._sources[k])
        for k in range(len(self._plan.halos)):  # else where a halo array's chunks are
            if self._halos is not None and self._halos.aligned(k):
                return self._halos.homes(k)
        return self._store.spread(self._count)

    def _aligned(self, k: int) -> list[DaskFuture]:
        """Chunk i of array k for each chunk of the map: its own, or a re-split copy."""
        if self._is_aligned(k):
            return self._sources[k]
        array, axis = self._plan.arrays[k], self._plan.axes[k]
        made = []
        for i in range(self._count):
            low, high = self._bounds(i)
            keys, sources = [], []
            for s, future in enumerate(self._sources[k]):
                start, stop = array.bounds(s)
                if array.axis != axis:
                    keys.append((slice(None),) * axis + (slice(low, high),))
                elif start < high and stop > low:
                    keys.append(
                        (slice(None),) * axis + (slice(max(low, start) - start, min(high, stop) - start),)
                    )
                else:
                    continue
                sources.append(future)
            made.append(
                self._client.submit(
                    resplit,
                    array.axis if array.axis != axis else axis,
                    keys,
                    *sources,
                    key=(f"{self._prefix}-resplit-{k}", i),
                    workers=self._homes[i],
                    allow_other_workers=self._homes[i] is not None,
                    pure=False,
                )
            )
        return made

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending and not self._stopped:
            landed = next_landed(self._landed, deadline)
            if landed is None:
                return False
            try:
                self._take([t for t in landed if t is not None and t in self._pending])
            except Exception as exc:  # the client closed under a gather (terminate)
                if not self._stopped:
                    self._outcome.failure = exc
                self._stopped = True
        return True

    def _take(self, landed: list[DaskFuture]) -> None:
        outcome = self._outcome
        finished = [t for t in landed if t.status == "finished"]
        results = self._client.gather(finished) if finished else []
        for task, (packed, error) in zip(finished, results, strict=True):
            index = self._pending.pop(task)
            self._ran[index] = self._runs[index]
            outcome.chunks_run += 1
            low, high = self._request.plan.bounds(index)
            self._indices += high - low
            outcome.bytes_back += len(packed) if packed is not None else 0
            if error is not None:
                outcome.errors.append(failure_of(error))
                self._stopped = True
            elif packed is not None:
                outcome.results[index] = _pickling.loads(packed)
        for task in landed:
            if task in self._pending and task.status in ("error", "cancelled", "lost"):
                index = self._pending.pop(task)
                if not self._stopped or index < self._failed_at:
                    outcome.failure = self._task_failure(task, index)
                    self._failed_at = index
                self._stopped = True

    def _task_failure(self, task: DaskFuture, index: int) -> BaseException:
        halos = (
            ([h.array for h in self._plan.halos], self._halos.sources)
            if self._halos is not None
            else ([], [])
        )
        for array, sources in zip([*self._plan.arrays, *halos[0]], [*self._sources, *halos[1]], strict=True):
            lost = [i for i, f in enumerate(sources) if f.status in ("lost", "cancelled", "error")]
            if lost:
                return array.lost_error(lost)
        return task_failure(task, self._request.where(index), index)

    def indices_done(self) -> int:
        return self._indices  # whole chunks: shmpool.advance() does nothing on a cluster

    def cancel(self) -> None:
        self._stopped = True
        self._landed.put(None)

    def kill(self) -> None:
        self.cancel()  # a task running on a Dask worker finishes there; its result is dropped

    def finish(self) -> MapOutcome:
        self._stopped = True
        left = [self._runs[i] for i in range(self._count) if i not in self._ran] + list(self._pending)
        if left:
            try:
                self._client.cancel(left)
            except Exception:
                pass  # the client is closing (terminate): its tasks go with it
        self._pending.clear()
        try:
            self._adopt()
        except Exception as exc:  # the client closed meanwhile (terminate)
            if self._outcome.failure is None:
                self._outcome.failure = exc
        if self._spec_task is not None:
            try:
                self._spec_task.release()
            except Exception:
                pass
        # A finished run holds no futures: an exception's traceback (and so this run) can
        # outlive the map, and must not keep chunks alive on the workers.
        self._sources, self._inputs, self._joined, self._spec, self._spec_task = [], [], [], None, None
        self._halos = None
        outcome = self._outcome
        if outcome.failure is None and not outcome.errors and outcome.chunks_run < self._count:
            outcome.failure = CancelledError(f"map of kernel {self._request.name!r} was stopped")
        return outcome

    def _adopt(self) -> None:
        """Each array takes the chunks the map wrote, else the chunk it would have run on
        (its own, or the re-split copy).

        A written chunk becomes a new *root* key: a ``take`` task, pinned to the worker that
        ran the chunk, that takes the chunk from the run's result in that worker's memory.
        Were it a task depending on the run (which depends on the chunks before it, and so
        on), the scheduler would keep every map's tasks for as long as the array lives, to
        be able to recompute them: an iterative job would grow the scheduler without end.
        The run's own key is released once every take of it has landed, so the take always
        finds it, and the worker does not count the chunk twice (in the run's result and
        in the take's) for longer than that: Dask would spill to disk what it thinks is
        over its memory budget. The cost: a written chunk cannot be recomputed.
        """
        if not self._ran and all(self._is_aligned(k) for k in range(len(self._plan.arrays))):
            return
        ran = sorted(self._ran)
        holders = self._client.who_has([self._ran[i] for i in ran]) if ran else {}
        homes: list[list[str] | None] = list(self._homes)
        for i in ran:
            homes[i] = sorted(holders.get(self._ran[i].key, ())) or None
        made: list[list[DaskFuture]] = []
        for k, array in enumerate(self._plan.arrays):
            chunks = []
            for i in range(self._count):
                run = self._ran.get(i)
                if run is None:
                    chunks.append(self._inputs[k][i])
                elif homes[i] is None:  # not in memory anywhere (lost meanwhile): depend on it
                    chunks.append(self._client.submit(pick, run, 2 + k, pure=False))
                else:
                    chunks.append(
                        self._client.submit(
                            take,
                            run.key,
                            2 + k,
                            key=(f"{self._prefix}-{array.name}", i),
                            workers=homes[i],
                            allow_other_workers=True,  # strict would wait forever for a dead worker
                            pure=False,
                        )
                    )
            made.append(chunks)
        # Wait for the takes before releasing the runs (a take reads its run's key on its
        # worker) and before returning: while a run's key is held, the scheduler would
        # recompute a chunk lost with its worker by running the kernel again on the chunks
        # before the map, and a later read would get either that or the error, by timing.
        takes = [chunks[i] for chunks in made for i in ran]
        _wait_for(takes, SETTLE_S)
        landed = self._client.who_has(takes) if takes else {}
        for k, array in enumerate(self._plan.arrays):
            where = list(homes)
            for i in ran:  # where each chunk is now, exactly: the next map goes there
                where[i] = sorted(landed.get(made[k][i].key, ())) or homes[i]
            array.replace(self._plan.axes[k], self._plan.offsets, made[k], homes=where)
        for i in ran:
            self._ran[i].release()
        self._runs.clear()
        self._ran.clear()


def _wait_for(futures: list[DaskFuture], timeout: float) -> None:
    """Wait until every future is done, however it ended (a worker lost meanwhile leaves
    its chunks to raise the lost-chunk error), or ``timeout`` seconds have passed."""
    left = [len(futures)]
    lock, done = threading.Lock(), threading.Event()

    def landed(_: DaskFuture) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    if not futures:
        return
    for future in futures:
        future.add_done_callback(landed)
    done.wait(timeout)
