"""The public pool API, written once over a :class:`~shmpool._backend.Backend`.

:class:`Pool` is what users call: SharedPool, ThreadPool and DaskPool are this class over
their backends. Every call goes the same way down::

    check the arguments (_checks)  ->  open the bar  ->  backend.start_map / open_stream
    ->  wait (deadline, bar tick, Ctrl-C grace)  ->  run.finish()  ->  choose the error, or
    assemble the results  ->  count

so that a bad argument fails before anything is allocated or sent, and whatever fails
after the send (an interrupt, a timeout) first stops the run and waits for the backend to
say it is over. The pool's life: RUNNING until close() (wait for calls in flight) or
terminate() (stop now), then CLOSED. Only the process that created a pool may use or tear
it down: a forked child that inherits one gets a clear error from every call.
"""

from __future__ import annotations

import collections
import enum
import functools
import itertools
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from ._active import pop_active, push_active
from ._backend import CANCEL_GRACE_S, Backend, BatchOutcome, ItemBatch, ItemStream, MapOutcome, MapRun
from ._checks import (
    ItemRequest,
    MapRequest,
    check_callable,
    check_dtype,
    check_imap,
    check_map,
    check_order,
    check_shape,
    kernel_name,
    order_of,
)
from ._futures import PendingFuture
from ._progress import TICK_S, open_bar, resolve_progress
from .errors import PoolClosedError

__all__ = [
    "AUTO_BATCH_MAX",
    "IMAP_BATCHES_PER_WORKER",
    "KILL_GRACE_S",
    "Pool",
    "PoolStats",
]

T = TypeVar("T")
Array = np.ndarray  # type: ignore[type-arg]

# After a kill, how long the backend gets to report the run over before the caller stops
# waiting. A run given up on this way never lends its memory to a later call.
KILL_GRACE_S = 5.0
# Batches in flight per worker in an imap: two keep a worker busy while its next batch is on
# the way; four absorb uneven item times. Memory is bounded by this times the batch size.
IMAP_BATCHES_PER_WORKER = 4
# chunksize="auto": at most this many items a batch (bounds the memory of items in flight).
AUTO_BATCH_MAX = 10_000


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What a pool has done so far: maps run, chunks run, and bytes copied by staging.

    On a DaskPool the bytes are those sent to and received from the cluster.
    """

    maps: int = 0
    chunks: int = 0
    bytes_staged_in: int = 0
    bytes_copied_back: int = 0


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


def _shutdown_in_creator(backend: Backend, creator: int) -> None:
    # The finalizer (garbage collection, interpreter exit): a forked child that inherited
    # the pool must not tear down its parent's workers and blocks.
    if os.getpid() == creator:
        backend.shutdown(kill=True)


class Pool:
    """The pool API shared by :class:`~shmpool.SharedPool`, :class:`~shmpool.ThreadPool`
    and ``DaskPool``: allocation, ``map``, ``map_async``, ``submit``, ``imap``, lifecycle.

    Not instantiated directly: each pool class builds its backend and passes it here.
    ``progress`` is the default of every call's ``progress=`` option.
    """

    def __init__(self, backend: Backend, *, progress: bool | dict[str, Any] = False):
        resolve_progress(progress, None)  # validate now, not at the first call
        self._backend = backend
        self._default_progress: bool | dict[str, Any] = progress
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = _State.RUNNING
        self._calls: set[_MapCall | _SubmitCall | _StreamCall] = set()
        self._stats = PoolStats()
        self._creator = os.getpid()
        self._finalizer = weakref.finalize(self, _shutdown_in_creator, backend, self._creator)

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """How many workers chunks are planned for (processes, threads, or the cluster's
        worker threads)."""
        return self._backend.workers

    @property
    def closed(self) -> bool:
        """Whether close() or terminate() was called."""
        return self._state is not _State.RUNNING

    @property
    def stats(self) -> PoolStats:
        """Counters of what this pool has done (see :class:`PoolStats`)."""
        return self._stats

    def close(self) -> None:
        """Wait for the maps and calls in flight, then shut down. Idempotent.

        Open ``imap`` iterators are ended: their next batch raises PoolClosedError. Arrays
        the pool handed out stay valid.
        """
        if not self._begin_closing():
            return
        with self._lock:
            streams = [c for c in self._calls if isinstance(c, _StreamCall)]
        for stream in streams:
            stream.abort(PoolClosedError(f"the {self._backend.kind} was closed while an imap was open"))
        with self._lock:
            while any(not isinstance(c, _StreamCall) for c in self._calls):
                self._idle.wait()
        self._end(kill=False)

    def terminate(self) -> None:
        """Stop now: calls in flight raise PoolClosedError; then shut down. Idempotent."""
        if not self._begin_closing():
            return
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.abort(PoolClosedError(f"the {self._backend.kind} was terminated while this call ran"))
        self._end(kill=True)

    def _begin_closing(self) -> bool:
        self._check_creator()
        with self._lock:
            if self._state is not _State.RUNNING:
                return False
            self._state = _State.CLOSING
        return True

    def _end(self, *, kill: bool) -> None:
        self._finalizer.detach()
        try:
            self._backend.shutdown(kill=kill)
        finally:
            with self._lock:
                self._state = _State.CLOSED

    def __enter__(self: P) -> P:
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
        return f"<{self._backend.kind} {self._backend.describe()} {self._state.value}>"

    def _check_creator(self) -> None:
        if os.getpid() != self._creator:
            raise PoolClosedError(
                f"this {self._backend.kind} was created by process {self._creator} and cannot be "
                f"used in process {os.getpid()} (a fork of it); create a new pool in this process"
            )

    def _check_open(self) -> None:
        self._check_creator()
        if self._state is not _State.RUNNING:
            raise PoolClosedError(f"this {self._backend.kind} is closed")

    def _register(self, call: _MapCall | _SubmitCall | _StreamCall) -> None:
        with self._lock:
            self._check_open()
            self._calls.add(call)

    def _unregister(self, call: _MapCall | _SubmitCall | _StreamCall) -> None:
        with self._lock:
            self._calls.discard(call)
            self._idle.notify_all()

    def _count_map(self, outcome: MapOutcome) -> None:
        with self._lock:
            s = self._stats
            self._stats = PoolStats(
                s.maps + 1,
                s.chunks + outcome.chunks_run,
                s.bytes_staged_in + outcome.bytes_in,
                s.bytes_copied_back + outcome.bytes_back,
            )

    # ---- allocation ---------------------------------------------------------------------

    def empty(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array of the pool's."""
        return self._allocate(shape, dtype, order, zero=False)

    def zeros(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros of the pool's."""
        return self._allocate(shape, dtype, order, zero=True)

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, order: str = "C"
    ) -> np.ndarray:  # type: ignore[type-arg]
        """A new array of the pool's filled with ``fill_value`` (dtype: ``fill_value``'s)."""
        if dtype is None:
            dtype = np.asarray(fill_value).dtype
        return self._allocate(
            shape, dtype, order, zero=False, fill=lambda out: out.__setitem__(..., fill_value)
        )

    def empty_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array of the pool's with the shape (and dtype, and C or F
        order) of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, order_of(a), zero=False)

    def zeros_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros of the pool's with the shape (and dtype, and C or F order)
        of ``a``."""
        a = np.asanyarray(a)
        return self._allocate(a.shape, a.dtype if dtype is None else dtype, order_of(a), zero=True)

    def asarray(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """``a`` as the pool's array: ``a`` itself if the pool made it (and no other dtype is
        asked for), else a copy."""
        self._check_open()
        if isinstance(a, np.ndarray) and (dtype is None or np.dtype(dtype) == a.dtype) and self.is_shared(a):
            return a
        source = np.asarray(a, dtype=dtype)
        return self._allocate(
            source.shape, source.dtype, order_of(source), zero=False, fill=lambda out: np.copyto(out, source)
        )

    def is_shared(self, a: Any) -> bool:
        """Whether ``a`` (or the array it is a view of) was made by this pool and not freed."""
        self._check_open()
        return isinstance(a, np.ndarray) and self._backend.owns(a)

    def free(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
        """Give the memory holding ``a`` back now instead of at shutdown.

        All of it goes, whichever view of it ``a`` is. Arrays that still view it stay valid
        (the memory is released when the last one is garbage-collected), but no longer count
        as the pool's: passing one to a SharedPool's ``map`` copies it.
        """
        self._check_open()
        if not isinstance(a, np.ndarray) or not self._backend.owns(a):
            raise ValueError("free() takes an array allocated by this pool that was not freed yet")
        self._backend.release(a)

    def _allocate(
        self,
        shape: object,
        dtype: Any,
        order: str,
        *,
        zero: bool,
        fill: Callable[[Array], object] | None = None,
    ) -> np.ndarray:  # type: ignore[type-arg]
        self._check_open()
        checked_dtype = check_dtype(np.dtype(dtype))
        dims = check_shape(shape)
        check_order(order)
        try:
            nbytes = math.prod(d for d in dims if d) * checked_dtype.itemsize
        except OverflowError:  # pragma: no cover - math.prod of ints does not overflow
            nbytes = 2**63
        if nbytes >= 2**63 or any(d >= 2**63 for d in dims):
            raise ValueError(f"array is too big: shape {dims} of {checked_dtype} does not fit in memory")
        out = self._backend.allocate(dims, checked_dtype, order, zero)
        if fill is not None:
            try:
                fill(out)
            except BaseException:
                self._backend.release(out)  # a failed allocation leaves nothing behind
                raise
        return out

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
        one chunk and writes its results in place. Arguments wrapped in :func:`whole` are
        passed whole to every call. Returns the kernel's return values in chunk order.
        ``chunks``: None (automatic), an int (indices per chunk) or a sequence of chunk
        lengths. ``progress``: a tqdm bar counting chunks (True, or a dict of tqdm options).
        ``timeout``: seconds, after which the map is stopped and TimeoutError raised.
        A kernel's exception is raised here with its own type, the chunk named.
        """
        return self._start_map(kernel, arrays, axis, chunks, progress, timeout, kwargs).run_to_end()

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
        """Like :meth:`map`, but return once the map is sent: a Future of its results.

        Bad arguments raise here, never through the future. ``future.cancel()`` works until
        the map has finished: unstarted chunks are skipped and the future is cancelled.
        """
        call = self._start_map(kernel, arrays, axis, chunks, progress, timeout, kwargs)
        future: PendingFuture[list[Any]] = PendingFuture(on_cancel=call.cancel)
        threading.Thread(
            target=future.settle, args=(call.run_to_end,), name="shmpool-map-async", daemon=True
        ).start()
        return future

    def _start_map(
        self,
        kernel: Callable[..., Any],
        arrays: tuple[Any, ...],
        axis: object,
        chunks: object,
        progress: object,
        timeout: object,
        kwargs: dict[str, Any],
    ) -> _MapCall:
        self._check_open()
        request = check_map(
            kernel, arrays, axis, chunks, progress, self._default_progress, timeout, self.workers, kwargs
        )
        bar = (
            open_bar(len(request.plan), request.bar_options, "chunk", request.name)
            if request.bar_options is not None
            else None
        )
        try:
            call = _MapCall(self, request, bar)
            self._register(call)
            try:
                call.run = self._backend.start_map(request)
            except BaseException:
                self._unregister(call)
                raise
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        return call

    # ---- submit and imap ----------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; a Future of its result.

        ``cancel()`` works until the call has finished; a call already running still runs,
        and its result is dropped.
        """
        self._check_open()
        check_callable(fn, "fn")
        request = ItemRequest(fn, kernel_name(fn), 1, True, None, 1)
        stream = self._backend.open_stream(request, star=True)
        call = _SubmitCall(self, request, stream)
        self._register(call)
        try:
            stream.send([(args, kwargs)], 0, call.landed)
        except BaseException:
            self._unregister(call)
            stream.close()
            raise
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
        """An iterator of ``fn(item)`` for each item of ``iterable``, run in the workers.

        Results come in input order when ``ordered``, else as they finish. The iterable is
        consumed lazily with a bounded number of items in flight, so an endless generator
        works. ``chunksize`` items travel per batch: raise it for small, fast items, or
        pass ``"auto"`` to size batches from the measured throughput. An exception in
        ``fn`` is raised from the iterator at that item's position (after the results
        before it), and the remaining items are cancelled; so is closing the iterator
        early. An exception from the iterable itself is raised after the results of the
        items before it. ``progress``: a tqdm bar counting items.
        """
        self._check_open()
        request = check_imap(fn, iterable, ordered, chunksize, progress, self._default_progress)
        stream = self._backend.open_stream(request, star=False)
        return _StreamCall(self, request, stream).iterate(iter(iterable))


P = TypeVar("P", bound=Pool)


class _MapCall:
    """One map through the front end: wait for it, stop it, finish it exactly once."""

    def __init__(self, pool: Pool, request: MapRequest, bar: Any):
        self.pool = pool
        self.request = request
        self.bar = bar
        self.run: MapRun | None = None
        self.stop: BaseException | None = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Stop from any thread (``future.cancel()``): unstarted chunks are skipped."""
        self.abort(CancelledError(f"map of kernel {self.request.name!r} was cancelled"))

    def abort(self, error: BaseException) -> None:
        """Stop from any thread; the map raises ``error`` (unless a kernel error is first)."""
        with self._lock:
            if self.stop is None:
                self.stop = error
        if self.run is not None:
            self.run.cancel()
            if isinstance(error, PoolClosedError):  # terminate(): running chunks stop too
                self.run.kill()

    def run_to_end(self) -> list[Any]:
        """Wait for the map, finish it, and return its results or raise its error."""
        run = self.run
        assert run is not None
        try:
            self._wait(run)
        finally:
            try:
                outcome = run.finish()
            finally:
                self.pool._unregister(self)
                if self.bar is not None:
                    self.bar.close()
            self.pool._count_map(outcome)
        return self._assemble(outcome)

    def _wait(self, run: MapRun) -> None:
        bar, timeout = self.bar, self.request.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                step = TICK_S if bar is not None else None
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    step = left if step is None else min(step, left)
                if run.wait(step):
                    break
                if bar is not None:
                    bar.update(run.chunks_done() - bar.n)
                if deadline is not None and time.monotonic() >= deadline:
                    self.abort(
                        TimeoutError(f"map of kernel {self.request.name!r} did not finish within {timeout} s")
                    )
                    run.kill()
                    run.wait(KILL_GRACE_S)
                    return
            if bar is not None:
                bar.update(run.chunks_done() - bar.n)
        except BaseException:  # Ctrl-C, or a failure of our own: stop the run before leaving
            run.cancel()
            if not run.wait(CANCEL_GRACE_S):
                run.kill()
                run.wait(KILL_GRACE_S)
            raise

    def _assemble(self, outcome: MapOutcome) -> list[Any]:
        if outcome.errors:
            first = min(outcome.errors, key=lambda e: -1 if e.index is None else e.index)
            raise first.build(self.request.where(first.index))
        if self.stop is not None:
            raise self.stop
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.results


class _SubmitCall:
    """One ``submit``: a stream of one batch, settling a PendingFuture when it lands."""

    def __init__(self, pool: Pool, request: ItemRequest, stream: ItemStream):
        self.pool = pool
        self.request = request
        self.stream = stream
        self.stop: BaseException | None = None
        self.future: PendingFuture[Any] = PendingFuture(on_cancel=stream.cancel)

    def abort(self, error: BaseException) -> None:
        self.stop = error
        self.stream.cancel()

    def landed(self, batch: ItemBatch) -> None:
        outcome = batch.outcome()
        self.stream.close()
        # Unregister first: a done-callback may close the pool, which waits for calls.
        self.pool._unregister(self)
        self.future.settle(lambda: self._result(outcome))

    def _result(self, outcome: BatchOutcome) -> Any:
        if outcome.error is not None:
            raise outcome.error.build(f"{self.request.name!r}")
        if self.stop is not None:
            raise self.stop
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.results[0]


class _BatchSizer:
    """How many items the next imap batch takes: fixed, or with ``chunksize="auto"`` sized
    so that a batch keeps a worker busy for about the backend's ``batch_target_s``.

    Auto starts at one item and follows the throughput measured over the last few landed
    batches (at most doubling each time), so cheap items travel in large batches (few
    messages or tasks) and slow items one by one. The throughput counts each batch's
    overhead too, so a backend whose batches cost milliseconds (Dask) grows them until the
    work outweighs it.
    """

    def __init__(self, fixed: int | None, workers: int, target_s: float):
        self._fixed = fixed
        self._workers = workers
        self._target_s = target_s
        self._size = 1
        self._landings: collections.deque[tuple[float, int]] = collections.deque(maxlen=16)
        self._landed = 0

    def next_size(self) -> int:
        return self._fixed if self._fixed is not None else self._size

    def landed(self, items: int) -> None:
        if self._fixed is not None:
            return
        now = time.perf_counter()
        self._landed += items
        self._landings.append((now, self._landed))
        first_time, first_count = self._landings[0]
        if now > first_time and self._landed > first_count:
            rate = (self._landed - first_count) / (now - first_time)  # items per second, all workers
            wanted = int(rate / self._workers * self._target_s)
            self._size = max(1, min(wanted, 2 * self._size + 1, AUTO_BATCH_MAX))


class _StreamCall:
    """One ``imap``: batches sent lazily within a window, results yielded in order."""

    def __init__(self, pool: Pool, request: ItemRequest, stream: ItemStream):
        self.pool = pool
        self.request = request
        self.stream = stream
        self.stop: BaseException | None = None
        self._arrived: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def abort(self, error: BaseException) -> None:
        """Stop from any thread: the iterator raises ``error`` at its next step."""
        self.stop = error
        self.stream.cancel()
        self._arrived.put(None)

    def _landed(self, number: int, batch: ItemBatch) -> None:
        self._arrived.put(number)

    def iterate(self, items: Iterator[Any]) -> Iterator[Any]:
        """The generator behind ``imap``; nothing is sent before its first ``next()``."""
        request, stream = self.request, self.stream
        self.pool._register(self)
        bar = None
        in_flight: dict[int, ItemBatch] = {}
        landed: dict[int, ItemBatch] = {}
        try:
            if request.bar_options is not None:
                bar = open_bar(request.total, request.bar_options, "item", request.name)
            workers = self.pool.workers
            window = IMAP_BATCHES_PER_WORKER * workers
            sizer = _BatchSizer(request.chunksize, workers, self.pool._backend.batch_target_s)
            numbers = itertools.count()
            next_to_yield = 0
            position = 0
            exhausted = False
            source_error: BaseException | None = None
            while True:
                while not exhausted and len(in_flight) + len(landed) < window:
                    if self.stop is not None:
                        raise self.stop
                    batch_items: list[Any] = []
                    try:
                        # Item by item, so that the items before a failing one still run.
                        for item in itertools.islice(items, sizer.next_size()):
                            batch_items.append(item)
                    except Exception as exc:
                        source_error = exc
                        exhausted = True
                    if not batch_items:
                        exhausted = True
                        break
                    number = next(numbers)
                    in_flight[number] = stream.send(
                        batch_items, position, functools.partial(self._landed, number)
                    )
                    position += len(batch_items)
                if not in_flight and not landed:
                    if source_error is not None:
                        raise source_error
                    return
                while (next_to_yield not in landed) if request.ordered else not landed:
                    got = self._arrived.get()
                    if self.stop is not None:
                        raise self.stop
                    if got is not None and got in in_flight:
                        landed[got] = in_flight.pop(got)
                if request.ordered:
                    batch = landed.pop(next_to_yield)
                    next_to_yield += 1
                else:
                    batch = landed.pop(next(iter(landed)))
                outcome = batch.outcome()
                if outcome.failure is not None and outcome.error is None:
                    raise outcome.failure
                sizer.landed(len(outcome.results))
                for value in outcome.results:
                    yield value
                    if bar is not None:
                        bar.update(1)
                if outcome.error is not None:
                    index = outcome.error.index
                    where = f"{request.name!r}" if index is None else f"{request.name!r} on item {index}"
                    raise outcome.error.build(where)
        finally:
            if in_flight or landed:
                stream.cancel()
            stream.close()
            self.pool._unregister(self)
            if bar is not None:
                bar.close()
