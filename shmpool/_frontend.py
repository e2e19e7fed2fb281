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

import enum
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from ._active import pop_active, push_active, register_created
from ._allocation import Allocation, ArrayT
from ._backend import Backend, MapOutcome
from ._calls import Call, MapCall, SubmitCall
from ._checks import (
    ItemRequest,
    check_callable,
    check_imap,
    check_map,
    check_retries,
    kernel_name,
)
from ._executor import PoolExecutor
from ._futures import PendingFuture
from ._progress import open_bar, resolve_progress
from ._signal_mask import signal_step, start_quietly
from ._streams import StreamCall
from .errors import PoolClosedError

__all__ = ["Pool", "PoolStats"]

T = TypeVar("T")
Array = np.ndarray  # type: ignore[type-arg]


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


class Pool(Allocation[ArrayT]):
    """The pool API shared by :class:`~shmpool.SharedPool`, :class:`~shmpool.ThreadPool`
    and ``DaskPool``: allocation, ``map``, ``map_async``, ``submit``, ``imap``, lifecycle.

    Not instantiated directly: each pool class builds its backend and passes it here.
    Generic in the arrays its allocation methods return: ``SharedPool`` and ``ThreadPool``
    are ``Pool[numpy.typing.NDArray[Any]]``, ``DaskPool`` is ``Pool[ClusterArray]``.
    ``progress`` is the default of every call's ``progress=`` option.
    """

    def __init__(self, backend: Backend, *, progress: bool | dict[str, Any] = False):
        resolve_progress(progress, None)  # validate now, not at the first call
        self._backend = backend
        self._default_progress: bool | dict[str, Any] = progress
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = _State.RUNNING
        self._calls: set[Call] = set()
        self._stats = PoolStats()
        self._creator = os.getpid()
        self._finalizer = weakref.finalize(self, _shutdown_in_creator, backend, self._creator)
        register_created(self)  # the decorator's fallback: the newest pool still open

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
        the pool handed out stay valid. Interrupted while it waits (Ctrl-C), it finishes as
        :meth:`terminate` before the interruption propagates, so the pool is never left
        half closed.
        """
        if not self._begin_closing():
            return
        with self._lock:
            streams = [c for c in self._calls if isinstance(c, StreamCall)]
        for stream in streams:
            stream.abort(PoolClosedError(f"the {self._backend.kind} was closed while an imap was open"))
        try:
            step = signal_step()  # in the main thread, wake now and then for Ctrl-C
            with self._lock:
                while any(not isinstance(c, StreamCall) for c in self._calls):
                    self._idle.wait(step)
        except BaseException:
            self._abort_calls("terminated (its close() was interrupted)")
            self._end(kill=True)
            raise
        self._end(kill=False)

    def terminate(self) -> None:
        """Stop now: calls in flight raise PoolClosedError; then shut down. Idempotent."""
        if not self._begin_closing():
            return
        self._abort_calls("terminated")
        self._end(kill=True)

    def _abort_calls(self, how: str) -> None:
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.abort(PoolClosedError(f"the {self._backend.kind} was {how} while this call ran"))

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
        if os.getpid() != self._creator:
            return  # a forked child leaving the with block: the pool is its parent's
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

    def _register(self, call: Call) -> None:
        # Every caller checked the process already (_check_open); the state is checked
        # again under the lock, as a close() may have come in between.
        with self._lock:
            if self._state is not _State.RUNNING:
                raise PoolClosedError(f"this {self._backend.kind} is closed")
            self._calls.add(call)

    def _register_stream(self, call: Call) -> None:
        # An imap's iterator starts at its first next(), which may come in a forked child.
        self._check_creator()
        self._register(call)

    def _unregister(self, call: Call) -> None:
        with self._lock:
            self._calls.discard(call)
            self._idle.notify_all()

    def _map_ended(self, call: MapCall, outcome: MapOutcome | None) -> None:
        with self._lock:
            self._calls.discard(call)
            self._idle.notify_all()
            if outcome is not None:
                s = self._stats
                self._stats = PoolStats(
                    s.maps + 1,
                    s.chunks + outcome.chunks_run,
                    s.bytes_staged_in + outcome.bytes_in,
                    s.bytes_copied_back + outcome.bytes_back,
                )

    def executor(self) -> PoolExecutor:
        """A ``concurrent.futures.Executor`` running on this pool's workers (see
        :class:`~shmpool.PoolExecutor`); shutting it down leaves the pool open."""
        return PoolExecutor(self)

    # ---- map ----------------------------------------------------------------------------

    def map(
        self, kernel: Callable[..., Any], /, *arrays: Any, axis: int = 0,
        chunks: int | Iterable[int] | None = None, progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None, retries: int = 0, chunk_timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:  # fmt: skip
        """Run ``kernel(*chunk_views, **kwargs)`` over chunks of ``arrays`` in the workers.

        Every array is split along ``axis`` into the same chunks; each call gets views of
        one chunk and writes its results in place. Arguments wrapped in :func:`whole` are
        passed whole to every call. Returns the kernel's return values in chunk order.
        ``chunks``: None (automatic), an int (indices per chunk) or chunk lengths.
        ``progress``: a tqdm bar of indices along ``axis`` (True, or tqdm options), which
        kernels may move with :func:`shmpool.advance`. ``timeout``: seconds, after which the
        map is stopped and TimeoutError raised. ``retries``: times a chunk whose worker died
        (not by an exception) runs again before WorkerCrashedError: the kernel must allow
        that. ``chunk_timeout``: seconds a chunk may run before its worker is killed (a crash,
        for ``retries``). A kernel's exception is raised here with its own type. On a
        DaskPool, a map over its cluster arrays runs each chunk where it lives.
        """
        options = (progress, timeout, retries, chunk_timeout)
        return self._start_map(kernel, arrays, axis, chunks, options, kwargs).run_to_end()

    def map_async(
        self, kernel: Callable[..., Any], /, *arrays: Any, axis: int = 0,
        chunks: int | Iterable[int] | None = None, progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None, retries: int = 0, chunk_timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[list[Any]]:  # fmt: skip
        """Like :meth:`map`, but return once the map is sent: a Future of its results.

        Bad arguments raise here, never through the future. ``future.cancel()`` works until
        the map has finished: unstarted chunks are skipped and the future is cancelled.
        """
        options = (progress, timeout, retries, chunk_timeout)
        call = self._start_map(kernel, arrays, axis, chunks, options, kwargs)
        future: PendingFuture[list[Any]] = PendingFuture(on_cancel=call.cancel)
        start_quietly(
            threading.Thread(
                target=future.settle, args=(call.run_to_end,), name="shmpool-map-async", daemon=True
            )
        )
        return future

    def _start_map(
        self,
        kernel: Callable[..., Any],
        arrays: tuple[Any, ...],
        axis: object,
        chunks: object,
        options: tuple[object, object, object, object],
        kwargs: dict[str, Any],
    ) -> MapCall:
        self._check_open()
        progress, timeout, retries, chunk_timeout = options
        request = check_map(
            kernel, arrays, axis, chunks, progress, self._default_progress, timeout, self.workers, kwargs,
            own=lambda: self._backend.split_own(arrays, axis, chunks), retries=retries,
            chunk_timeout=chunk_timeout, no_chunk_timeout=(self._backend.kind, self._backend.no_chunk_timeout),
        )  # fmt: skip
        bar = (
            open_bar(request.plan.length, request.bar_options, "index", request.name)
            if request.bar_options is not None
            else None
        )
        try:
            call = MapCall(request, bar, self._map_ended)
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

    def submit(self, fn: Callable[..., T], /, *args: Any, retries: int = 0, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; a Future of its result.

        ``cancel()`` works until the call has finished; a call already running still runs,
        and its result is dropped. ``retries``: as imap's.
        """
        self._check_open()
        check_callable(fn, "fn")
        request = ItemRequest(fn, kernel_name(fn), 1, True, None, 1, check_retries(retries))
        stream = self._backend.open_stream(request, star=True)
        call = SubmitCall(request, stream, self._unregister)
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
        retries: int = 0,
    ) -> Iterator[T]:
        """An iterator of ``fn(item)`` for each item of ``iterable``, run in the workers.

        Results come in input order when ``ordered``, else as they finish. The iterable is
        consumed lazily with a bounded number of items in flight, so an endless generator
        works. A batch (one message and one reply) is whole chunks of ``chunksize`` items:
        one chunk, or, while chunks are measured to be cheap and ``iterable`` has a length,
        a train of up to 32 of them holding about 1 ms of work. Pass ``"auto"`` to size
        batches from the measured throughput (about 10 ms of work). An exception in
        ``fn`` is raised from the iterator at that item's position (after the results
        before it), and the remaining items are cancelled; so is closing the iterator
        early. An exception from the iterable itself is raised after the results of the
        items before it. ``progress``: a tqdm bar counting items. ``retries``: times an
        item whose worker died runs again (with its batch: ``fn`` must allow that).
        """
        self._check_open()
        request = check_imap(fn, iterable, ordered, chunksize, progress, self._default_progress, retries)
        stream = self._backend.open_stream(request, star=False)
        call = StreamCall(
            request,
            stream,
            self.workers,
            self._backend.batch_target_s,
            self._register_stream,
            self._unregister,
        )
        return call.iterate(iter(iterable))


P = TypeVar("P", bound="Pool[Any]")
