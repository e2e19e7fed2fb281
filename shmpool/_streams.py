"""``imap`` as the front end runs it: batches sent lazily within a window, results in order.

The iterable is consumed item by item, a batch at a time, with at most
``IMAP_BATCHES_PER_WORKER`` batches per worker in flight, so memory stays flat however long
it is. A batch is one message to a worker and one reply: a whole number of chunks with a
fixed ``chunksize`` (several only while they are cheap, see :class:`BatchSizer`), or sized
from the throughput with ``"auto"``. Results are yielded in input order (or as they land);
a failing item raises at its position after the results before it, and so does a failing
iterable.
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
from ._signal_mask import signal_step

__all__ = [
    "AUTO_BATCH_MAX",
    "IMAP_BATCHES_PER_WORKER",
    "TRAIN_MAX_CHUNKS",
    "TRAIN_TARGET_S",
    "BatchSizer",
    "StreamCall",
]

# Batches in flight per worker in an imap: two keep a worker busy while its next batch is on
# the way; four absorb uneven item times. Memory is bounded by this times the batch size.
IMAP_BATCHES_PER_WORKER = 4
# chunksize="auto": at most this many items a batch (bounds the memory of items in flight).
AUTO_BATCH_MAX = 10_000
# A fixed chunksize over items already in memory (a sized iterable): chunks measured to take
# well under a millisecond share one message (a train), so that cheap items do not pay a
# message and a reply each (tens of microseconds, several wake-ups). A train holds about
# this much work, so a result lands at most about this much later than it would alone;
# slower chunks travel one per message. Never from an iterable without a length: pulling a
# train's items from a generator could wait on it (a queue, a socket), and the items
# already pulled would wait too.
TRAIN_TARGET_S = 0.001
# ... and at most this many chunks: bounds the items in flight (window times this times
# chunksize) and what a train's rerun repeats when its worker dies (retries=).
TRAIN_MAX_CHUNKS = 32


class BatchSizer:
    """How many items the next imap batch takes, sized from the measured throughput.

    With ``chunksize="auto"`` a batch keeps a worker busy for about the backend's
    ``batch_target_s``. With a fixed chunksize a batch is a whole number of chunks: one,
    unless ``trains`` (the items are already in memory) and the chunks are measured to be
    cheap, when a train of them keeps a worker busy for about :data:`TRAIN_TARGET_S` (at
    most :data:`TRAIN_MAX_CHUNKS` chunks).

    Both start at one (item or chunk) and follow the throughput measured over the last few
    landed batches (at most doubling each time), so cheap items travel in large batches
    (few messages or tasks) and slow items one by one. The throughput counts each batch's
    overhead too, so a backend whose batches cost milliseconds (Dask) grows ``"auto"``
    batches until the work outweighs it, and keeps fixed chunks one per message.
    """

    def __init__(
        self,
        fixed: int | None,
        workers: int,
        target_s: float,
        *,
        trains: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._workers = workers
        self._clock = clock
        self._target_s = target_s if fixed is None else TRAIN_TARGET_S
        self._unit = 1 if fixed is None else fixed
        self._most = AUTO_BATCH_MAX if fixed is None else TRAIN_MAX_CHUNKS if trains else 1
        self._units = 1  # items ("auto") or chunks (fixed) in the next batch
        self._landings: collections.deque[tuple[float, int]] = collections.deque(maxlen=16)
        self._landed = 0

    def next_size(self) -> int:
        """Items for the next batch."""
        return self._units * self._unit

    def landed(self, items: int) -> None:
        """A batch of ``items`` landed: update the throughput."""
        if self._most == 1:
            return
        now = self._clock()
        self._landed += items
        self._landings.append((now, self._landed))
        first_time, first_count = self._landings[0]
        if now > first_time and self._landed > first_count:
            rate = (self._landed - first_count) / (now - first_time)  # items per second, all workers
            wanted = int(rate / self._workers * self._target_s) // self._unit
            self._units = max(1, min(wanted, 2 * self._units + 1, self._most))


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
            sizer = BatchSizer(
                request.chunksize, self._workers, self._batch_target_s, trains=request.total is not None
            )
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
                step = signal_step()  # this next() may run in another thread than the last
                while (next_to_yield not in landed) if request.ordered else not landed:
                    try:  # woken now and then in the main thread, for Ctrl-C
                        got = self._arrived.get(timeout=step)
                    except queue.Empty:
                        continue
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
