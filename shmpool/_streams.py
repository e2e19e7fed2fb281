"""``imap`` as the front end runs it: batches sent lazily within a window, results in order.

The iterable is consumed item by item, a batch at a time, with at most
``IMAP_BATCHES_PER_WORKER`` batches per worker in flight, so memory stays flat however long
it is. Results are yielded in input order (or as they land); a failing item raises at its
position after the results before it, and so does a failing iterable.
"""

from __future__ import annotations

import collections
import itertools
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._backend import ItemBatch, ItemStream
from ._checks import ItemRequest
from ._progress import open_bar

__all__ = ["AUTO_BATCH_MAX", "IMAP_BATCHES_PER_WORKER", "BatchSizer", "StreamCall"]

# Batches in flight per worker in an imap: two keep a worker busy while its next batch is on
# the way; four absorb uneven item times. Memory is bounded by this times the batch size.
IMAP_BATCHES_PER_WORKER = 4
# chunksize="auto": at most this many items a batch (bounds the memory of items in flight).
AUTO_BATCH_MAX = 10_000


class BatchSizer:
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
        """Items for the next batch."""
        return self._fixed if self._fixed is not None else self._size

    def landed(self, items: int) -> None:
        """A batch of ``items`` landed: update the throughput."""
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


class StreamCall:
    """One ``imap``: batches sent lazily within a window, results yielded in order."""

    def __init__(
        self,
        request: ItemRequest,
        stream: ItemStream,
        workers: int,
        batch_target_s: float,
        started: Callable[[StreamCall], None],
        ended: Callable[[StreamCall], None],
    ):
        self.request = request
        self.stream = stream
        self._workers = workers
        self._batch_target_s = batch_target_s
        self._started = started
        self._ended = ended
        self.stop: BaseException | None = None
        # Batches as they land (the backend's thread puts them), None to wake for a stop.
        self._arrived: queue.SimpleQueue[ItemBatch | None] = queue.SimpleQueue()

    def abort(self, error: BaseException) -> None:
        """Stop from any thread: the iterator raises ``error`` at its next step."""
        self.stop = error
        self.stream.cancel()
        self._arrived.put(None)

    def iterate(self, items: Iterator[Any]) -> Iterator[Any]:
        """The generator behind ``imap``; nothing is sent before its first ``next()``."""
        request, stream = self.request, self.stream
        self._started(self)  # raises if the pool was closed meanwhile
        bar = None
        in_flight: dict[ItemBatch, int] = {}  # sent, not landed: batch -> its number
        landed: dict[int, ItemBatch] = {}
        try:
            if request.bar_options is not None:
                bar = open_bar(request.total, request.bar_options, "item", request.name)
            window = IMAP_BATCHES_PER_WORKER * self._workers
            sizer = BatchSizer(request.chunksize, self._workers, self._batch_target_s)
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
                    in_flight[stream.send(batch_items, position, self._arrived.put)] = next(numbers)
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
                        landed[in_flight.pop(got)] = got
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
            self._ended(self)
            if bar is not None:
                bar.close()
