"""``pool.executor()``: a standard :class:`concurrent.futures.Executor` on a pool's workers.

Code written for ``concurrent.futures`` (and Dask's local scheduler, and the joblib backend
in :mod:`shmpool.joblib`) takes an Executor. This one runs every call through the pool's
public ``submit``, so it works on any pool (SharedPool, ThreadPool, DaskPool) and shared
arrays in the arguments travel as references.

Its futures are ``concurrent.futures.Future`` objects with the standard life: PENDING while
queued here, RUNNING once handed to the pool, then FINISHED or CANCELLED; ``cancel()``
succeeds only while PENDING. To keep that honest, at most ``workers + 1`` calls are in the
pool at a time (like ProcessPoolExecutor's call queue: one spare keeps a worker from idling
between calls); the rest wait in a queue, where they can still be cancelled. Their
``result()`` and ``exception()``, and ``shutdown(wait=True)``, wait in short steps in the
main thread, so that Ctrl-C stops them wherever the signal landed
(:mod:`shmpool._signal_mask`).

One dispatcher thread, started when there is work and ending when there is none, moves
calls from the queue to the pool and settles futures, so that done-callbacks run in it
(never in the pool's supervisor thread, which they could block). ``shutdown`` stops new
submissions; it never closes the pool.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from typing import Any, Protocol, TypeVar

from ._futures import SteppedFuture
from ._signal_mask import signal_step, start_quietly

__all__ = ["PoolExecutor", "Submitter"]

T = TypeVar("T")


class Submitter(Protocol):
    """What the executor needs of a pool (every :class:`shmpool.Pool` is one): declared
    here so that this module does not import the front end, which imports it."""

    @property
    def workers(self) -> int:
        """How many workers the pool has."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the pool was closed."""
        ...

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run one call in a worker."""
        ...


def _call_with(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """``fn(*args, **kwargs)``: a keyword that Pool.submit would take reaches ``fn``."""
    return fn(*args, **kwargs)


class _Item:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


def _run_chunk(
    fn: Callable[..., Any], chunk: list[tuple[Any, ...]]
) -> tuple[list[Any], BaseException | None]:
    # One task for `chunksize` items of map(): the results up to the first exception, and
    # that exception, so that the caller yields the results before it and then raises it
    # at its own item (not at the chunk's first).
    results = []
    for args in chunk:
        try:
            results.append(fn(*args))
        except Exception as exc:
            return results, exc
    return results, None


class PoolExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run on a pool's workers.

    Made by :meth:`shmpool.SharedPool.executor` (and ThreadPool's, DaskPool's). ``submit``,
    ``map`` and ``shutdown`` behave as ``concurrent.futures`` documents; shutting the
    executor down (also by leaving its ``with`` block) leaves the pool open.
    """

    def __init__(self, pool: Submitter):
        self._pool = pool
        # Read by dask.base.get_scheduler, which sizes its local scheduler from an
        # Executor's `_max_workers` (else from the CPU count, not the pool's workers).
        self._max_workers = pool.workers
        self._limit = pool.workers + 1
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[_Item] = collections.deque()
        self._landed: collections.deque[tuple[Future[Any], Future[Any]]] = collections.deque()
        self._in_pool = 0
        self._shutdown = False
        self._thread: threading.Thread | None = None

    @property
    def pool(self) -> Submitter:
        """The pool this executor runs on."""
        return self._pool

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"<shmpool.PoolExecutor on {self._pool!r}, {state}>"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on the pool's workers; a Future of its result.

        Raises RuntimeError after :meth:`shutdown`, and PoolClosedError (a RuntimeError)
        once the pool is closed.
        """
        future: Future[T] = SteppedFuture()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._pool.closed:
                from .errors import PoolClosedError

                raise PoolClosedError(f"cannot schedule new futures: the pool {self._pool!r} is closed")
            self._queue.append(_Item(future, fn, args, kwargs))
            self._start_thread()
            self._wake.notify_all()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` on the pool's workers: an iterator of results in order.

        The iterables are collected and every call is submitted at once; results are
        yielded as each is ready, in input order. A call's exception is raised when its
        result would be yielded. ``timeout`` (seconds, counted from this call) raises
        TimeoutError from ``__next__`` when a result is not ready by then. ``chunksize``
        items travel to a worker as one task. Leaving the iterator early (an exception,
        ``close()``) cancels the calls not started yet.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables, strict=False))
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in calls]
            return self._yield_single(futures, deadline)
        chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        chunk_futures = [self.submit(_run_chunk, fn, chunk) for chunk in chunks]
        return self._yield_chunked(chunk_futures, deadline)

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _yield_single(self, futures: list[Future[T]], deadline: float | None) -> Iterator[T]:
        # A generator of its own (map itself is not one), so that submitting happens at the
        # call, as the standard library's map does, and errors of submit raise there.
        futures.reverse()  # pop from the end: a yielded future is no longer referenced
        try:
            while futures:
                yield futures[-1].result(self._left(deadline))
                futures.pop()
        finally:
            for future in futures:
                future.cancel()

    def _yield_chunked(
        self, futures: list[Future[tuple[list[T], BaseException | None]]], deadline: float | None
    ) -> Iterator[T]:
        futures.reverse()
        try:
            while futures:
                results, error = futures[-1].result(self._left(deadline))
                futures.pop()
                yield from results
                if error is not None:
                    raise error
        finally:
            for future in futures:
                future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures`` the queued ones are cancelled; with
        ``wait`` return once every call submitted has finished. The pool stays open.

        Idempotent: a second call only waits (or cancels) again.
        """
        with self._lock:
            self._shutdown = True
            cancelled: list[Future[Any]] = []
            if cancel_futures:
                while self._queue:
                    cancelled.append(self._queue.popleft().future)
            self._wake.notify_all()
        for future in cancelled:
            future.cancel()  # outside the lock: cancelling runs done-callbacks
        if wait:
            with self._lock:
                thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                step = signal_step()  # in the main thread, join in steps: see the module
                while thread.is_alive():
                    thread.join(step)

    # ---- the dispatcher thread --------------------------------------------------------------

    def _start_thread(self) -> None:
        # Under the lock. The thread ends when nothing is queued or in the pool, so an
        # executor that is never shut down leaves no thread behind.
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch, name="shmpool-executor", daemon=True)
            start_quietly(self._thread)

    def _on_landed(self, ours: Future[Any]) -> Callable[[Future[Any]], None]:
        def landed(theirs: Future[Any]) -> None:
            # In the pool's thread: only hand the outcome over, never run user callbacks here.
            with self._lock:
                self._landed.append((ours, theirs))
                self._wake.notify_all()

        return landed

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._landed and not (self._queue and self._in_pool < self._limit):
                    if not self._queue and self._in_pool == 0:
                        self._thread = None
                        return
                    self._wake.wait()
                landed = list(self._landed)
                self._landed.clear()
                self._in_pool -= len(landed)
                starting: list[_Item] = []
                while self._queue and self._in_pool + len(starting) < self._limit:
                    starting.append(self._queue.popleft())
            for ours, theirs in landed:
                self._settle(ours, theirs)
            for item in starting:
                self._send(item)

    def _send(self, item: _Item) -> None:
        if not item.future.set_running_or_notify_cancel():
            return  # cancelled while queued
        try:
            if "retries" in item.kwargs:  # the pool's submit takes that keyword for itself
                theirs = self._pool.submit(_call_with, item.fn, item.args, item.kwargs)
            else:
                theirs = self._pool.submit(item.fn, *item.args, **item.kwargs)
        except BaseException as exc:  # cannot travel, or the pool closed: the future says so
            item.future.set_exception(exc)
            return
        with self._lock:
            self._in_pool += 1
        theirs.add_done_callback(self._on_landed(item.future))

    @staticmethod
    def _settle(ours: Future[Any], theirs: Future[Any]) -> None:
        try:
            result = theirs.result()
        except CancelledError as exc:
            # The pool cancelled it (terminate, close): ours was already running, so it
            # cannot become CANCELLED; it fails instead.
            ours.set_exception(exc)
        except BaseException as exc:
            ours.set_exception(exc)
        else:
            ours.set_result(result)
