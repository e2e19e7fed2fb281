"""A SharedPool's maps and item streams: staging, pickling, sending, and collecting replies.

:class:`ProcessMapRun` is one map: plain arrays staged into shared memory, the kernel and
arguments pickled once, one job sent to every worker through the dispatcher; when it is over,
results are unpickled, staged copies copied back and their blocks recycled.
:class:`ProcessStream` sends batches of items (imap, submit) to the least busy worker.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

from . import _arrays, _pickling
from ._backend import CANCEL_GRACE_S, BatchOutcome, Failure, ItemBatch, MapOutcome
from ._blocks import BlockStore
from ._checks import ItemRequest, MapRequest, SplitArgs, find_overlap
from ._copying import copy_into
from ._dispatch import Dispatcher, MapCall, TaskCall
from ._protocol import MapJob, RemoteError
from ._remote import rebuild_error
from ._retries import RetryState

__all__ = ["ProcessMapRun", "ProcessStream"]

Array = np.ndarray  # type: ignore[type-arg]

# How often a map with a chunk_timeout looks for overdue chunks: a tenth of the limit,
# within these bounds (more often costs the waiting thread wake-ups, less lets a chunk
# overrun its limit by that much more).
_MIN_TIMEOUT_CHECK_S = 0.01
_MAX_TIMEOUT_CHECK_S = 0.5


def _failure(error: RemoteError) -> Failure:
    return Failure(error.chunk, functools.partial(rebuild_error, error))


class _Staging:
    """Copies of plain arrays in shared memory for one map, copied back and freed after.

    The same array passed twice is staged once. Read-only arrays are copied in only.
    """

    def __init__(self, store: BlockStore):
        self._store = store
        self._copies: dict[int, tuple[Array, Array]] = {}
        self.bytes_in = 0
        self.bytes_back = 0
        self._shared_paths: set[str] = set()  # the blocks of the pool arrays passed

    def _shared(self, array: Array, found: tuple[_arrays.Mapping, int] | None) -> Array:
        """``array`` if it lives in the pool (``found`` where), else its staged copy."""
        if found is None:
            return self._copy_of(array)
        self._shared_paths.add(found[0].path)
        return array

    def _ref(self, array: Array, found: tuple[_arrays.Mapping, int] | None) -> _arrays.ArrayRef:
        """The reference of ``array``, which lives in the pool at ``found`` or is staged
        first when ``found`` is None."""
        if found is None:
            array = self._copy_of(array)
        else:
            self._shared_paths.add(found[0].path)
        ref = _arrays.ref_of(array, found)
        assert ref is not None
        return ref

    def _copy_of(self, array: Array) -> Array:
        found = self._copies.get(id(array))
        if found is None:
            copy = self._store.staging_array(array)
            copy_into(copy, array)
            if not array.flags.writeable:
                copy.flags.writeable = False
            self.bytes_in += array.nbytes
            found = self._copies[id(array)] = (array, copy)
        return found[1]

    def stage(self, split: SplitArgs) -> tuple[tuple[_arrays.ArrayRef | None, ...], dict[int, Any]]:
        """The refs of the chunked arrays (by position) and the whole objects, staged.

        Plain arrays that overlap (``x`` and ``x[::-1]``) are refused before anything is
        copied: each would get its own copy, and copying the untouched one back would undo
        the kernel's writes through the other.
        """
        arrays = {
            i: a for i, a in [*split.chunked.items(), *split.wholes.items()] if isinstance(a, np.ndarray)
        }
        # Where each array argument lies in the pool, looked up once (None: a plain array).
        found = {i: self._store.locate(a) for i, a in arrays.items()}
        overlap = find_overlap({i: a for i, a in arrays.items() if found[i] is None})
        if overlap is not None:
            raise ValueError(
                f"arguments {overlap[0]} and {overlap[1]} of map are plain arrays that share memory; "
                "a SharedPool copies each plain array into shared memory on its own, so writes "
                "through one would be lost: pass the array once, or make it with pool.asarray() "
                "so that every view of it is shared without copies"
            )
        refs: list[_arrays.ArrayRef | None] = [None] * split.count
        for i, array in split.chunked.items():
            refs[i] = self._ref(array, found[i])
        wholes = {i: self._shared(obj, found[i]) if i in found else obj for i, obj in split.wholes.items()}
        return tuple(refs), wholes

    def finish(self, *, copy_back: bool, reusable: bool) -> None:
        """Copy writable originals back (when ``copy_back``), then drop the copies: each
        block goes back to the store's cache when its last view does (a result of the map
        may still view one). When not ``reusable`` (a run given up on, which a worker may
        still be writing), the copies' blocks and the pool arrays the run was given are
        marked never to be reused."""
        paths = [self._copy_back(original, copy, copy_back) for original, copy in self._copies.values()]
        self._copies.clear()  # our own references would keep the blocks from being reused
        if not reusable:
            for path in [*paths, *self._shared_paths]:
                self._store.taint(path)

    def _copy_back(self, original: Array, copy: Array, copy_back: bool) -> str:
        # A function of its own: a loop variable left bound to the copy would keep its
        # block referenced, and so never reused.
        if copy_back and original.flags.writeable:
            copy_into(original, copy)
            self.bytes_back += original.nbytes
        ref = _arrays.ref_of(copy)
        assert ref is not None
        return ref.path


class ProcessMapRun:
    """One map on a SharedPool (see :class:`shmpool._backend.MapRun`)."""

    def __init__(self, dispatcher: Dispatcher, store: BlockStore, request: MapRequest):
        """Stage, pickle and send ``request``; on any failure, undo and raise."""
        self._dispatcher = dispatcher
        self._request = request
        self._call: MapCall | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._finished = False
        kernel = _pickling.dumps_kernel(request.kernel, f"kernel {request.name!r}")
        kwargs = _pickling.dumps_or_raise(request.kwargs, "the keyword arguments")
        self._staging = _Staging(store)
        self._store = store
        self._marks: Array | None = None
        self._indices = 0  # the bar's last reading
        try:
            refs, wholes = self._staging.stage(request.split)
            wholes_bytes = _pickling.dumps_or_raise(wholes, "the whole() arguments")
            if len(request.plan) == 0:
                return
            axes = tuple(request.split.axes.get(i, -1) for i in range(request.split.count))
            plan, halos = request.plan, request.split.halos
            marks_ref = None
            if request.retries:
                self._marks = store.new_array((len(plan),), np.dtype(np.int64), "C", zero=True)
                marks_ref = _arrays.ref_of(self._marks)
            progress, timed = request.bar_options is not None, request.chunk_timeout is not None
            self._call = dispatcher.submit_map(
                lambda job_id, slot: MapJob(
                    job_id,
                    slot,
                    kernel,
                    wholes_bytes,
                    kwargs,
                    refs,
                    axes,
                    plan,
                    halos,
                    progress,
                    marks_ref,
                    timed,
                ),
                len(plan),
                RetryState(request.retries, self._marks, plan),
            )
        except BaseException:
            self._staging.finish(copy_back=False, reusable=True)  # nothing was sent
            self._marks = None
            raise

    def wait(self, timeout: float | None) -> bool:
        call = self._call
        if call is None:
            return True
        limit = self._request.chunk_timeout
        if limit is None:
            return call.done.wait(timeout)
        # A chunk_timeout is kept here, by whoever waits for the map (the front end always
        # does): wake often enough to stop an overdue chunk within a tenth of the limit.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = min(max(limit / 10, _MIN_TIMEOUT_CHECK_S), _MAX_TIMEOUT_CHECK_S)
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0.0))
            if call.done.wait(step):
                return True
            self._dispatcher.stop_overdue(call, limit)
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def indices_done(self) -> int:
        call = self._call
        if call is None:
            return 0
        if call.done.is_set():
            if call.chunks_run >= len(self._request.plan) and not call.errors and call.failure is None:
                return self._request.plan.length
            return self._indices  # its slot is gone: keep the bar where it was
        # After a retried crash the re-run chunks count twice: never past the end.
        self._indices = min(self._dispatcher.control.indices_done(call.slot), self._request.plan.length)
        return self._indices

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
        if self._call is not None:
            self._dispatcher.cancel(self._call)

    def kill(self) -> None:
        if self._call is not None:
            self._dispatcher.kill_workers_of(self._call)

    def finish(self) -> MapOutcome:
        assert not self._finished, "a map run is finished once"
        self._finished = True
        call = self._call
        outcome = MapOutcome([None] * len(self._request.plan))
        over = call is None or call.done.is_set()
        try:
            if call is not None:
                outcome.chunks_run = call.chunks_run
                outcome.errors = [_failure(e) for e in call.errors]
                outcome.failure = call.failure
                # Results may be views of staged copies: rebuild them before the copies go.
                if over and not call.errors and call.failure is None:
                    for reply in call.replies:
                        if reply.results is not None:
                            for index, value in _pickling.loads(reply.results):
                                outcome.results[index] = value
        finally:
            # A run given up on (not over) may still be written by a worker: its copies are
            # still copied back (what its chunks wrote so far), but never lent again.
            self._staging.finish(copy_back=True, reusable=over)
            if self._marks is not None:
                if not over:
                    marks = _arrays.ref_of(self._marks)
                    assert marks is not None
                    self._store.taint(marks.path)
                self._marks = None  # its block goes back to the store when the call's view goes
        outcome.bytes_in, outcome.bytes_back = self._staging.bytes_in, self._staging.bytes_back
        return outcome


class _ProcessBatch:
    """One batch of items sent to a worker."""

    def __init__(
        self, name: str, count: int, in_flight: set[TaskCall], on_landed: Callable[[ItemBatch], None]
    ):
        self.name = name
        self.count = count
        self.call: TaskCall | None = None
        self._in_flight = in_flight
        self._on_landed = on_landed

    def landed(self, call: Any) -> None:
        """The dispatcher's ``on_done`` for the batch's call: hand the batch on."""
        self.call = call
        self._in_flight.discard(call)
        self._on_landed(self)

    def outcome(self) -> BatchOutcome:
        call = self.call
        assert call is not None
        if call.reply is None:
            return BatchOutcome([], failure=call.failure)
        results: list[Any] = _pickling.loads(call.reply.results)
        error = call.reply.error
        if error is not None:
            return BatchOutcome(results, _failure(error))
        if len(results) < self.count:
            return BatchOutcome(results, failure=CancelledError(f"the call of {self.name!r} was cancelled"))
        return BatchOutcome(results)


class ProcessStream:
    """Batches of items for one function (see :class:`shmpool._backend.ItemStream`).

    An imap's batches share a control slot, whose cancel flag stops their unstarted items;
    the slot is taken at the first batch, so an iterator never started holds nothing.
    """

    def __init__(self, dispatcher: Dispatcher, request: ItemRequest, star: bool):
        self._dispatcher = dispatcher
        self._request = request
        self._star = star
        self._fn = _pickling.dumps_or_raise(request.fn, f"function {request.name!r}")
        self._slot: int | None = None
        # Added by the caller, discarded by the supervisor: single set operations, which
        # are atomic (under the GIL, and per object in free-threaded builds), so no lock.
        self._in_flight: set[TaskCall] = set()
        self._closed = False

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        name = self._request.name
        if self._star:
            payload = _pickling.dumps_or_raise(items[0], f"the arguments of {name!r}")
        else:
            payload = _pickling.dumps_or_raise(items, f"imap items {first} to {first + len(items) - 1}")
            if self._slot is None:
                self._slot = self._dispatcher.acquire_slot()
        batch = _ProcessBatch(name, len(items), self._in_flight, on_landed)
        call = self._dispatcher.submit_tasks(
            self._fn,
            payload,
            count=len(items),
            first=first,
            star=self._star,
            slot=-1 if self._slot is None else self._slot,
            on_done=batch.landed,
            # imap's on_landed only puts the batch's number on a queue; a submit's settles
            # a future, whose done-callbacks are user code.
            inline=not self._star,
            retries=self._request.retries,
        )
        self._in_flight.add(call)
        if call.done.is_set():  # it landed before the add: its discard came first
            self._in_flight.discard(call)
        return batch

    def cancel(self) -> None:
        if self._slot is not None and not self._closed:
            self._dispatcher.control.cancel(self._slot)

    def close(self) -> None:
        """Wait for the batches in flight (cancelled first) and give the slot back."""
        if self._closed:
            return
        self._closed = True
        calls = list(self._in_flight)
        if self._slot is not None:
            self._dispatcher.control.cancel(self._slot)
        for call in calls:
            if not call.done.wait(CANCEL_GRACE_S):
                self._dispatcher.kill_workers_of(call)
                call.done.wait()
        if self._slot is not None:
            self._dispatcher.release_slot(self._slot)
