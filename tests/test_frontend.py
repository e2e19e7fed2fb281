"""The front end alone, over an in-process fake backend: no process, no thread pool.

What every pool does the same way (checks before anything starts, the wait loop with its
deadline and grace, the choice of error, stats, the lifecycle, imap's window and order) is
tested here once, with a backend whose runs finish when the test says so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import shmpool
from shmpool import _calls
from shmpool._backend import BatchOutcome, Failure, ItemBatch, MapOutcome
from shmpool._checks import ItemRequest, MapRequest
from shmpool._owned import OwnedArrays
from shmpool._streams import TRAIN_MAX_CHUNKS


class FakeRun:
    """A map run that runs its chunks in the calling thread, or hangs when told to."""

    def __init__(self, backend: FakeBackend, request: MapRequest):
        self.request = request
        self.backend = backend
        self.cancelled = self.killed = self.finished = False
        self.over = threading.Event()
        self.outcome = MapOutcome([None] * len(request.plan))
        if backend.hang:
            return
        for chunk in range(len(request.plan)):
            low, high = request.plan.bounds(chunk)
            args = [
                a[(slice(None),) * request.split.axes[i] + (slice(low, high),)]
                if i in request.split.chunked
                else request.split.wholes[i]
                for i, a in ((i, request.split.chunked.get(i)) for i in range(request.split.count))
            ]
            try:
                self.outcome.results[chunk] = request.kernel(*args, **request.kwargs)
            except Exception as exc:
                self.outcome.errors.append(Failure(chunk, lambda where, exc=exc: exc))
                break
            self.outcome.chunks_run += 1
        self.over.set()

    def wait(self, timeout: float | None) -> bool:
        return self.over.wait(timeout)

    def indices_done(self) -> int:
        return sum(high - low for low, high in map(self.request.plan.bounds, range(self.outcome.chunks_run)))

    def cancel(self) -> None:
        self.cancelled = True

    def kill(self) -> None:
        self.killed = True
        if not self.backend.unkillable:
            self.over.set()

    def finish(self) -> MapOutcome:
        assert not self.finished, "finish() must be called once"
        self.finished = True
        return self.outcome


class FakeBatch:
    def __init__(self, outcome: BatchOutcome):
        self._outcome = outcome

    def outcome(self) -> BatchOutcome:
        return self._outcome


class FakeStream:
    def __init__(self, backend: FakeBackend, request: ItemRequest, star: bool):
        self.backend, self.request, self.star = backend, request, star
        self.closed = False

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        self.backend.batches.append(len(items))
        outcome = BatchOutcome([])
        for number, item in enumerate(items, first):
            try:
                args, kwargs = item if self.star else ((item,), {})
                outcome.results.append(self.request.fn(*args, **kwargs))
            except Exception as exc:
                outcome.error = Failure(number, lambda where, exc=exc: exc)
                break
        batch = FakeBatch(outcome)
        on_landed(batch)
        return batch

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    kind = "FakePool"
    batch_target_s = 0.01
    no_chunk_timeout: str | None = "a fake backend runs chunks inline"

    def __init__(self) -> None:
        self.hang = False
        self.unkillable = False
        self.runs: list[FakeRun] = []
        self.batches: list[int] = []
        self.shutdowns: list[bool] = []
        self.owned = OwnedArrays()

    @property
    def workers(self) -> int:
        return 2

    def describe(self) -> str:
        return "fake"

    def allocate(
        self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any
    ) -> np.ndarray:  # type: ignore[type-arg]
        return self.owned.add(np.zeros(shape, dtype, order=order))  # type: ignore[call-overload]

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray) and self.owned.owns(a)

    def split_own(self, arrays: tuple[Any, ...], axis: object, chunks: object) -> None:
        return None

    def release(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
        self.owned.drop(a)

    def start_map(self, request: MapRequest) -> FakeRun:
        run = FakeRun(self, request)
        self.runs.append(run)
        return run

    def open_stream(self, request: ItemRequest, star: bool) -> FakeStream:
        return FakeStream(self, request, star)

    def shutdown(self, *, kill: bool) -> None:
        self.shutdowns.append(kill)


@pytest.fixture
def fake() -> tuple[shmpool.Pool, FakeBackend]:
    backend = FakeBackend()
    return shmpool.Pool(backend), backend


def test_map_runs_and_counts(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    x = np.arange(10.0)
    assert pool.map(np.sum, x, chunks=5) == [10.0, 35.0]
    assert pool.stats.maps == 1 and pool.stats.chunks == 2
    assert backend.runs[0].finished and repr(pool) == "<FakePool fake running>"


def test_nothing_starts_on_bad_input(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    x = np.zeros(4)
    for kwargs in ({"timeout": float("inf")}, {"timeout": -1}, {"chunks": 0}, {"progress": {"nonsense": 1}}):
        with pytest.raises((TypeError, ValueError)):
            pool.map(np.sum, x, **kwargs)
    with pytest.raises(TypeError):
        pool.map_async(np.sum, x, progress={"nonsense": 1})
    assert backend.runs == [] and pool.stats.maps == 0


def test_lowest_chunk_error_wins_and_is_the_kernels_own(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, _ = fake

    def fail(x: np.ndarray) -> None:
        if x[0] >= 4:
            raise KeyError(int(x[0]))

    with pytest.raises(KeyError, match="4"):
        pool.map(fail, np.arange(8.0), chunks=2)


def test_timeout_returns_by_the_deadline_and_finishes_the_run(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    backend.hang = True
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        pool.map(np.sum, np.zeros(4), timeout=0.2)
    assert time.monotonic() - start < 1.0
    run = backend.runs[0]
    assert run.cancelled and run.killed and run.finished


def test_a_run_that_will_not_die_is_given_up_after_the_grace(
    fake: tuple[shmpool.Pool, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, backend = fake
    backend.hang = backend.unkillable = True
    monkeypatch.setattr(_calls, "KILL_GRACE_S", 0.2)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.map(np.sum, np.zeros(4), timeout=0.1)
    assert time.monotonic() - start < 1.0 and backend.runs[0].finished


def test_interrupt_while_waiting_stops_the_run(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    backend.hang = True

    class Interrupt(BaseException):
        pass

    original = FakeRun.wait

    def wait_then_interrupt(self: FakeRun, timeout: float | None) -> bool:
        if not self.cancelled:
            raise Interrupt
        return original(self, 0.01)

    FakeRun.wait = wait_then_interrupt  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupt):
            pool.map(np.sum, np.zeros(4))
    finally:
        FakeRun.wait = original  # type: ignore[method-assign]
    run = backend.runs[0]
    assert run.cancelled and run.killed and run.finished


def test_close_waits_and_terminate_aborts(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    backend.hang = True
    future = pool.map_async(np.sum, np.zeros(4))
    closer = threading.Thread(target=pool.close)
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive() and pool.closed  # close() waits for the map in flight
    backend.runs[0].over.set()
    closer.join(5)
    assert not closer.is_alive() and backend.shutdowns == [False]
    future.result(timeout=5)
    with pytest.raises(shmpool.PoolClosedError):
        pool.is_shared(np.zeros(1))

    pool2 = shmpool.Pool(backend)
    pending = pool2.map_async(np.sum, np.zeros(4))
    pool2.terminate()
    with pytest.raises(shmpool.PoolClosedError, match="terminated"):
        pending.result(timeout=5)
    assert backend.shutdowns == [False, True]


def test_imap_order_window_and_a_failing_iterable(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    assert list(pool.imap(abs, range(-3, 3), chunksize=2)) == [3, 2, 1, 0, 1, 2]
    assert backend.batches == [2, 2, 2]

    def items() -> Any:
        yield 1
        yield 2
        raise OSError("the source broke")

    got = []
    with pytest.raises(OSError, match="source broke"):
        for value in pool.imap(lambda v: v * 10, items(), chunksize=1):
            got.append(value)
    assert got == [10, 20]  # the results before the failure come first
    with pytest.raises(ValueError, match="chunksize"):
        pool.imap(abs, [1], chunksize=0)


def test_imap_trains_only_over_items_in_memory(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    # The fake runs each batch inline: its items are as cheap as they come.
    pool, backend = fake
    assert list(pool.imap(abs, range(-3000, 3000), chunksize=2)) == [abs(v) for v in range(-3000, 3000)]
    assert all(size % 2 == 0 for size in backend.batches)
    assert max(backend.batches) == 2 * TRAIN_MAX_CHUNKS  # cheap chunks share a message
    backend.batches.clear()
    assert list(pool.imap(abs, (v for v in range(-3000, 3000)), chunksize=2)) == [
        abs(v) for v in range(-3000, 3000)
    ]
    assert backend.batches == [2] * 3000  # a generator's chunks travel alone


def test_a_forked_child_cannot_use_or_tear_down_the_pool(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, backend = fake
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            pool.map(np.sum, np.zeros(2))
            code = 1
        except shmpool.PoolClosedError as exc:
            code = 0 if "cannot be used in process" in str(exc) else 2
        try:
            pool.close()
            code = code or 3
        except shmpool.PoolClosedError:
            pass
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.shutdowns == [] and pool.map(np.sum, np.ones(2)) == [1.0, 1.0]


def test_allocation_checks_and_failures_leave_nothing(fake: tuple[shmpool.Pool, FakeBackend]) -> None:
    pool, _ = fake
    with pytest.raises(ValueError, match="too big"):
        pool.empty((0, 2**63))
    with pytest.raises(ValueError):
        pool.full(4, np.nan, dtype=np.int64)
    with pytest.raises(TypeError, match="Python objects"):
        pool.empty(3, dtype=[("a", "f8"), ("b", "O")])
    a = pool.full((2, 3), 7, order="F")
    assert a.flags.f_contiguous and (a == 7).all() and pool.is_shared(a[1:])
    assert pool.asarray(a) is a
    pool.free(a)
    assert not pool.is_shared(a)
    with pytest.raises(ValueError, match="not freed yet"):
        pool.free(a)
