"""Futures and streams: ``submit``, ``map_async`` and ``imap``.

A future stays *pending* until its work has ended, so ``cancel()`` keeps working while
the work runs: it then cancels the future and tells the workers to stop (a map's unstarted
chunks, an imap's unstarted items); a submitted call still runs, its result is dropped.

``imap`` sends items in batches of ``chunksize`` to the least busy worker, keeping at most
``IMAP_BATCHES_PER_WORKER`` batches per worker in flight: the iterable is consumed lazily,
and memory stays flat however long it is.
"""

from __future__ import annotations

import collections
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import _pickling
from ._dispatch import Dispatcher, TaskCall, _Call
from ._maprun import MapRun, dumps_or_raise, kernel_name, stop_call
from ._progress import open_bar, resolve_progress
from ._remote import rebuild_error

if TYPE_CHECKING:
    from .pool import SharedPool

__all__ = [
    "IMAP_BATCHES_PER_WORKER",
    "ImapCheck",
    "PendingFuture",
    "check_imap",
    "imap",
    "map_async",
    "submit",
]

T = TypeVar("T")

# Batches in flight per worker in an imap: two keep a worker busy while its next batch is
# on the way; four absorb uneven item times. Memory is bounded by this times chunksize.
IMAP_BATCHES_PER_WORKER = 4

# chunksize="auto": a batch should keep a worker busy about this long (long enough that a
# message per batch costs little, short enough for smooth progress and ordered results),
# and hold at most this many items (bounds the memory of items in flight).
AUTO_BATCH_S = 0.01
AUTO_BATCH_MAX = 10_000


class PendingFuture(Future[T]):
    """A Future that stays pending until its work ends, so cancel() can stop running work."""

    def __init__(self, on_cancel: Callable[[], None] | None = None):
        super().__init__()
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        """Cancel the future; if its work is running, ask the workers to stop it."""
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            self._on_cancel()
        return cancelled

    def settle(self, outcome: Callable[[], T]) -> None:
        """Resolve with ``outcome()``'s value or exception, unless cancelled meanwhile."""
        try:
            value = outcome()
        except BaseException as exc:
            if self.set_running_or_notify_cancel():
                self.set_exception(exc)
            return
        if self.set_running_or_notify_cancel():
            self.set_result(value)


def _dispatcher(pool: SharedPool) -> Dispatcher:
    dispatcher = pool._res.dispatcher
    assert dispatcher is not None
    return dispatcher


def submit(
    pool: SharedPool, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Future[T]:
    """Run ``fn(*args, **kwargs)`` in a worker; a Future of its result."""
    pool._check_open()
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    name = kernel_name(fn)
    fn_bytes = dumps_or_raise(fn, f"function {name!r}")
    items = dumps_or_raise((args, kwargs), f"the arguments of {name!r}")
    future: PendingFuture[T] = PendingFuture()

    def finished(call: _Call) -> None:
        future.settle(lambda: _single_result(call, name))

    _dispatcher(pool).submit_tasks(fn_bytes, items, star=True, on_done=finished)
    return future


def _task_results(call: _Call, name: str) -> tuple[list[Any], BaseException | None]:
    """The results a task batch returned, and the error that stopped it (if any); raises
    the failure of a batch that never replied (its worker died, the pool closed)."""
    assert isinstance(call, TaskCall)
    if call.reply is None:
        assert call.failure is not None
        raise call.failure
    results: list[Any] = _pickling.loads(call.reply.results)
    error = call.reply.error
    if error is None:
        if len(results) < call.count:
            raise CancelledError(f"the call of {name!r} was cancelled")
        return results, None
    where = f"{name!r}" if error.chunk is None else f"{name!r} on item {error.chunk}"
    return results, rebuild_error(error, where)


def _single_result(call: _Call, name: str) -> Any:
    results, error = _task_results(call, name)
    if error is not None:
        raise error
    return results[0]


def map_async(pool: SharedPool, run: MapRun) -> Future[list[Any]]:
    """Run a checked map in a helper thread; a Future of its results."""
    future: PendingFuture[list[Any]] = PendingFuture(on_cancel=run.cancel)
    thread = threading.Thread(
        target=future.settle, args=(run.execute,), name="shmpool-map-async", daemon=True
    )
    thread.start()
    return future


def imap(
    pool: SharedPool,
    fn: Callable[[Any], T],
    iterable: Iterable[Any],
    ordered: bool,
    chunksize: int | str,
    progress: object,
) -> Iterator[T]:
    """Check the arguments now; return the lazy iterator of ``fn(item)`` results."""
    pool._check_open()
    checked = check_imap(fn, iterable, chunksize, progress, pool._progress)
    fn_bytes = dumps_or_raise(fn, f"function {checked.name!r}")
    sizer = _BatchSizer(checked.chunksize, pool.workers)
    return _stream(
        pool, fn_bytes, checked.name, iter(iterable), ordered, sizer, checked.bar_options, checked.total
    )


@dataclass(frozen=True)
class ImapCheck:
    """An imap call's arguments, checked: ``chunksize`` None means "auto"."""

    name: str
    chunksize: int | None
    bar_options: dict[str, Any] | None
    total: int | None


def check_imap(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    chunksize: object,
    progress: object,
    default_progress: object,
) -> ImapCheck:
    """Check the arguments of an imap (for every pool); raise on bad input."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if chunksize != "auto" and (
        isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be a positive int or 'auto', got {chunksize!r}")
    bar_options = resolve_progress(progress, default_progress)
    total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    fixed = None if chunksize == "auto" else int(chunksize)  # type: ignore[call-overload]
    return ImapCheck(kernel_name(fn), fixed, bar_options, total)


class _BatchSizer:
    """How many items the next imap batch takes: fixed, or with ``chunksize="auto"`` sized
    so that a batch keeps a worker busy for about ``AUTO_BATCH_S``.

    Auto starts at one item and follows the throughput measured over the last few batches,
    so cheap items travel in large batches (few messages) and slow items one by one.
    """

    def __init__(self, fixed: int | None, workers: int):
        self._fixed = fixed
        self._workers = workers
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
            wanted = int(rate / self._workers * AUTO_BATCH_S)
            self._size = max(1, min(wanted, 2 * self._size + 1, AUTO_BATCH_MAX))


def _landed(arrived: queue.SimpleQueue[int], number: int, call: _Call) -> None:
    arrived.put(number)


def _stream(
    pool: SharedPool,
    fn_bytes: bytes,
    name: str,
    items: Iterator[Any],
    ordered: bool,
    sizer: _BatchSizer,
    bar_options: dict[str, Any] | None,
    total: int | None,
) -> Iterator[Any]:
    dispatcher = _dispatcher(pool)
    window = IMAP_BATCHES_PER_WORKER * pool.workers
    slot = dispatcher.acquire_slot()
    arrived: queue.SimpleQueue[int] = queue.SimpleQueue()
    in_flight: dict[int, TaskCall] = {}
    landed: dict[int, TaskCall] = {}
    numbers = itertools.count()
    next_to_yield = 0
    position = 0
    exhausted = False
    bar = open_bar(total, bar_options, "item", name) if bar_options is not None else None
    try:
        while True:
            while not exhausted and len(in_flight) + len(landed) < window:
                batch = list(itertools.islice(items, sizer.next_size()))
                if not batch:
                    exhausted = True
                    break
                payload = dumps_or_raise(batch, f"imap items {position} to {position + len(batch) - 1}")
                number = next(numbers)
                in_flight[number] = dispatcher.submit_tasks(
                    fn_bytes,
                    payload,
                    count=len(batch),
                    first=position,
                    slot=slot,
                    on_done=functools.partial(_landed, arrived, number),
                )
                position += len(batch)
            if not in_flight and not landed:
                return
            if ordered:
                while next_to_yield not in landed:
                    got = arrived.get()
                    landed[got] = in_flight.pop(got)
                call = landed.pop(next_to_yield)
                next_to_yield += 1
            else:
                if not landed:
                    got = arrived.get()
                    landed[got] = in_flight.pop(got)
                call = landed.pop(next(iter(landed)))
            results, error = _task_results(call, name)
            sizer.landed(len(results))
            for value in results:
                yield value
                if bar is not None:
                    bar.update(1)
            if error is not None:
                raise error
    finally:
        dispatcher.control.cancel(slot)
        for call in in_flight.values():
            stop_call(dispatcher, call)
        dispatcher.release_slot(slot)
        if bar is not None:
            bar.close()
