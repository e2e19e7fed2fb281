"""ThreadPool: the pool API run by threads of the calling process, for kernels that release
the GIL (most NumPy ufuncs and BLAS calls, numba ``nogil`` functions) or on a free-threaded
interpreter.

Threads share the process's memory, so nothing is staged, pickled or copied: a map hands
each thread views of the caller's own arrays, and kernels, lambdas and closures are called
directly. A map's chunks are claimed one at a time from a counter by up to ``workers``
runners on a ``concurrent.futures.ThreadPoolExecutor``.

A map's ``retries`` never come into play: a thread does not die the way a process does
(a kernel's exception, ``SystemExit`` included, is raised to the caller, never retried),
and ``os._exit`` or a fatal signal ends the whole process. ``chunk_timeout`` is refused.

Threads cannot be killed. A chunk still running when its map times out, is cancelled
after the grace, or the pool is terminated runs to its end in its thread and may still
write into the arrays; its result is dropped, and :meth:`ThreadPool.close` waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import Future as StdFuture
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._active import enter_worker_thread, in_worker
from ._advance import Tally, install
from ._backend import BatchOutcome, Failure, ItemBatch, ItemStream, MapOutcome, MapRun
from ._checks import ItemRequest, MapRequest
from ._frontend import Pool
from ._halo import NO_MARGINS, HaloViews, chunk_slot
from ._inner import AUTO, ThreadLimiter, check_inner_threads
from ._origin import attach_origin, traceback_text
from ._owned import PrivateMemory
from ._progress import resolve_progress
from ._signal_mask import keep_signals_out
from ._sizing import check_workers, usable_cpus
from .errors import PoolClosedError

__all__ = ["ThreadBackend", "ThreadPool"]

Array = np.ndarray  # type: ignore[type-arg]


def _failure(exc: BaseException, index: int | None) -> Failure:
    """A failure that raises ``exc`` itself, with where it was raised attached."""
    kind = type(exc)
    type_name = f"{kind.__module__}.{kind.__qualname__}"
    text = traceback_text(exc)  # now: the traceback is the kernel's frames, before re-raising
    return Failure(index, lambda where: attach_origin(exc, where, type_name, text))


class _ThreadMapRun:
    """One map on a ThreadPool (see :class:`shmpool._backend.MapRun`)."""

    def __init__(self, backend: ThreadBackend, request: MapRequest):
        self._request = request
        plan = request.plan
        self._count = len(plan)
        self._lock = threading.Lock()
        self._next = 0
        self._stopped = False
        self._results: list[Any] = [None] * self._count
        self._errors: list[Failure] = []
        self._run = 0
        self._over = threading.Event()
        split = request.split
        self._args: list[Any] = [split.chunked.get(i, split.wholes.get(i)) for i in range(split.count)]
        self._chunked: list[tuple[int, tuple[slice, ...]]] = [
            (i, (slice(None),) * split.axes[i]) for i in split.chunked if i not in split.halos
        ]
        self._halos = HaloViews(split.halos, split.axes, split.length) if split.halos else None
        runners = min(backend.workers, self._count)
        self._active = runners
        # With a bar, each runner's indices done (shmpool.advance moves its entry).
        self._tallies: list[int] | None = [0] * runners if request.bar_options is not None else None
        self._runners = iter(range(runners))
        self._limiter = backend.limiter
        self._limiter.enter()  # BLAS limits are process-wide: lowered while the map runs
        try:
            if runners == 0:
                self._over.set()
            elif in_worker():
                # A map from inside a kernel: one runner, here, rather than wait on ourselves
                # (counted as one, or the map would wait for runners that never start).
                self._active = 1
                self._runner()
            else:
                for _ in range(runners):
                    backend.submit(self._runner).add_done_callback(self._runner_ended)
        except BaseException:
            self._limiter.exit()
            raise

    def _runner(self) -> None:
        kernel, kwargs, plan = self._request.kernel, self._request.kwargs, self._request.plan
        args = list(self._args)
        halos, length = self._halos, plan.length
        where = chunk_slot()  # what shmpool.chunk_info() reads, in this thread
        outer = where[0]  # a map run inline from a kernel gives the outer chunk back after
        tallies = self._tallies
        with self._lock:
            tally = None if tallies is None else Tally(tallies, next(self._runners))
        outer_tally = install(tally)
        try:
            while True:
                with self._lock:
                    if self._stopped or self._next >= self._count:
                        return
                    chunk = self._next
                    self._next += 1
                low, high = plan.bounds(chunk)
                for i, lead in self._chunked:
                    args[i] = self._args[i][lead + (slice(low, high),)]  # noqa: RUF005 - 3.10 syntax
                if halos is None:
                    where[0] = (chunk, low, high, length, NO_MARGINS)
                if tally is not None:
                    tally.limit = tally.words[tally.index] + high - low
                try:
                    if halos is not None:  # inside the try: a padded copy may not fit in memory
                        halos.place(args, self._args, chunk, low, high, where)
                    value = kernel(*args, **kwargs)
                except BaseException as exc:  # SystemExit too: it is the kernel's, not ours
                    with self._lock:
                        self._errors.append(_failure(exc, chunk))
                        self._stopped = True
                    return
                self._results[chunk] = value
                if tally is not None:
                    tally.words[tally.index] = tally.limit  # the whole chunk counts
                with self._lock:
                    self._run += 1
        finally:
            where[0] = outer
            install(outer_tally)
            self._runner_ended(None)

    def _runner_ended(self, future: StdFuture[None] | None) -> None:
        # Called once per runner: from its own finally, or by the executor when it cancelled
        # a runner that never started (terminate).
        if future is not None and not future.cancelled():
            return
        with self._lock:
            self._active -= 1
            over = self._active <= 0
        if over:
            self._over.set()

    def wait(self, timeout: float | None) -> bool:
        return self._over.wait(timeout)

    def indices_done(self) -> int:
        if self._tallies is None:
            return 0
        return sum(self._tallies)

    def cancel(self) -> None:
        with self._lock:
            self._stopped = True

    def kill(self) -> None:
        # Threads cannot be killed: stop waiting for them (see the module docstring).
        self.cancel()
        self._over.set()

    def finish(self) -> MapOutcome:
        self._limiter.exit()
        with self._lock:
            self._stopped = True
            outcome = MapOutcome(list(self._results), self._run, 0, 0, list(self._errors))
        if not outcome.errors and self._run < self._count:
            outcome.failure = CancelledError(f"map of kernel {self._request.name!r} was stopped")
        return outcome


class _ThreadBatch:
    def __init__(self) -> None:
        self.result = BatchOutcome([])

    def outcome(self) -> BatchOutcome:
        return self.result


class _ThreadStream:
    """Batches of items run by the pool's threads (see :class:`shmpool._backend.ItemStream`)."""

    def __init__(self, backend: ThreadBackend, request: ItemRequest, star: bool):
        self._backend = backend
        self._fn = request.fn
        self._star = star
        self._cancelled = False

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        batch = _ThreadBatch()

        def run() -> None:
            outcome = batch.result
            number = first
            try:
                for item in items:
                    if self._cancelled:
                        outcome.failure = CancelledError("cancelled")
                        break
                    if self._star:
                        args, kwargs = item
                        outcome.results.append(self._fn(*args, **kwargs))
                    else:
                        outcome.results.append(self._fn(item))
                    number += 1
            except BaseException as exc:
                outcome.error = _failure(exc, None if self._star else number)

        def ended(future: StdFuture[None]) -> None:
            if future.cancelled():
                batch.result.failure = PoolClosedError("the ThreadPool was terminated before this call ran")
            on_landed(batch)

        if in_worker():
            run()  # from inside a kernel: run here rather than wait on ourselves
            on_landed(batch)
        else:
            self._backend.submit(run).add_done_callback(ended)
        return batch

    def cancel(self) -> None:
        self._cancelled = True

    def close(self) -> None:
        pass  # nothing is held: batches in flight land as they end


class ThreadBackend(PrivateMemory):
    """Threads of this process, private memory (see :class:`shmpool._backend.Backend`)."""

    kind = "ThreadPool"
    # imap chunksize="auto": a batch costs a queue hand-off, tens of microseconds.
    batch_target_s = 0.01
    no_chunk_timeout: str | None = (
        "a thread cannot be stopped while it runs a chunk; use timeout= for the whole map "
        "(its chunks then run to their end in their threads), or a SharedPool, whose "
        "workers are processes"
    )

    def __init__(self, workers: int, inner_threads: int | None = None):
        super().__init__()
        self._workers = workers
        self.limiter = ThreadLimiter(inner_threads)
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="shmpool-thread", initializer=self._thread_start
        )
        self._closed = False

    def _thread_start(self) -> None:
        keep_signals_out()
        enter_worker_thread()
        self.limiter.limit_thread()

    @property
    def workers(self) -> int:
        return self._workers

    def describe(self) -> str:
        return f"workers={self._workers}"

    def submit(self, fn: Callable[[], None]) -> StdFuture[None]:
        """Run ``fn`` on one of the pool's threads."""
        try:
            return self._executor.submit(fn)
        except RuntimeError:  # the executor was shut down under us
            raise PoolClosedError("this ThreadPool is closed") from None

    def start_map(self, request: MapRequest) -> MapRun:
        return _ThreadMapRun(self, request)

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        return _ThreadStream(self, request, star)

    def shutdown(self, *, kill: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self.owned.clear()
        # kill: queued work is cancelled (its calls end with PoolClosedError); running work
        # cannot be stopped and ends in its thread.
        self._executor.shutdown(wait=not kill, cancel_futures=kill)


class ThreadPool(Pool[NDArray[Any]]):
    """A pool of threads in this process, with the same API as :class:`~shmpool.SharedPool`.

    For kernels that release the GIL (NumPy ufuncs, BLAS, numba ``nogil``), and for any
    kernel on a free-threaded Python: no shared memory, no staging, no pickling, no
    start-up. Arrays it allocates are ordinary NumPy arrays; ``map`` runs in place on views
    of any arrays. ``workers`` defaults to the usable CPUs; ``progress`` is the default of
    every call's ``progress=`` option. A chunk running when its map times out or the pool
    is terminated cannot be killed: it runs to its end in its thread (its result dropped).
    ``inner_threads``: how many threads BLAS and OpenMP may use in each of the pool's
    threads (default "auto": ``max(1, usable CPUs // workers)``; None leaves them alone).
    BLAS limits are process-wide, so they are lowered only while a map runs, and bind the
    process's other threads meanwhile; OpenMP limits are set in the pool's threads only.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        progress: bool | dict[str, Any] = False,
        inner_threads: int | str | None = AUTO,
    ):
        count = check_workers(workers)
        inner = check_inner_threads(inner_threads, count, usable_cpus())
        resolve_progress(progress, None)
        self._inner_threads = inner
        super().__init__(ThreadBackend(count, inner), progress=progress)

    @property
    def inner_threads(self) -> int | None:
        """The thread limit of BLAS and OpenMP in the pool's threads (None: left alone)."""
        return self._inner_threads
