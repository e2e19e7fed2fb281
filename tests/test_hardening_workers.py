"""Hardening of workers and dispatch: whatever user code raises reaches the caller, no
death goes unnoticed or hangs a call, and no call, callback or iterator can block the
supervisor, steal another call's slot or run out of a fixed resource. Public API only."""

from __future__ import annotations

import functools
import gc
import threading
import time
from concurrent.futures import CancelledError, Future, wait
from pathlib import Path

import numpy as np
import pytest

import shmpool
from shmpool.errors import KernelError, PoolClosedError, WorkerCrashedError

from . import kernels_hardening as k
from .conftest import pool_fds


def notes(exc: BaseException) -> str:
    """Where the exception says it was raised: its notes (Python 3.11+) and the header of the
    remote traceback attached as its cause (every version)."""
    return " ".join([*getattr(exc, "__notes__", []), str(exc.__cause__ or "")])


def assert_usable(pool: shmpool.SharedPool, pids: set[int] | None = None) -> None:
    """The pool still runs maps and tasks (with the same workers, when ``pids`` is given)."""
    if pids is not None:
        assert set(pool.worker_pids) == pids, "a worker died"
    assert pool.map(k.noop, np.zeros(6), chunks=2) == [2, 2, 2]
    assert pool.submit(k.square, 4).result(timeout=10) == 16


# ---- class 2: every exception arrives as itself --------------------------------------


@pytest.mark.parametrize("kind", sorted(k.RAISABLE))
def test_base_exception_in_a_kernel_reaches_the_caller(shared_pool: shmpool.SharedPool, kind: str) -> None:
    pids = set(shared_pool.worker_pids)
    with pytest.raises(k.RAISABLE[kind]) as info:
        shared_pool.map(k.raise_on, np.arange(8), chunks=1, bad=5, kind=kind)
    assert type(info.value) is k.RAISABLE[kind]
    assert f"{kind} at 5" in str(info.value)
    assert "chunk 5" in notes(info.value)
    assert_usable(shared_pool, pids)


@pytest.mark.parametrize("kind", sorted(k.RAISABLE))
def test_base_exception_in_submit_and_imap_reaches_the_caller(
    shared_pool: shmpool.SharedPool, kind: str
) -> None:
    pids = set(shared_pool.worker_pids)
    error = shared_pool.submit(k.raise_always, kind).exception(timeout=10)
    assert type(error) is k.RAISABLE[kind]
    seen = []
    with pytest.raises(k.RAISABLE[kind]) as info:
        for value in shared_pool.imap(functools.partial(k.raise_item, kind=kind), range(10)):
            seen.append(value)
    assert seen == [0, 1, 4]
    assert "item 3" in notes(info.value)
    assert_usable(shared_pool, pids)


@pytest.mark.parametrize(
    ("kind", "arrives_as"),
    [
        ("bad_str", k.BadStr),
        ("bad_repr", k.BadRepr),
        ("bad_pickle", KernelError),
        ("bad_unpickle", KernelError),
    ],
)
def test_exception_that_cannot_describe_or_pickle_itself(
    shared_pool: shmpool.SharedPool, kind: str, arrives_as: type[BaseException]
) -> None:
    pids = set(shared_pool.worker_pids)
    with pytest.raises(arrives_as) as info:
        shared_pool.map(k.raise_odd, np.arange(4), chunks=1, kind=kind)
    assert "chunk 2" in notes(info.value)
    if isinstance(info.value, KernelError):
        assert info.value.type_name.endswith(k.EXCEPTIONS[kind].__qualname__)
    error = shared_pool.submit(k.raise_odd_item, kind).exception(timeout=10)
    assert isinstance(error, arrives_as)
    assert_usable(shared_pool, pids)


def test_results_whose_pickling_raises_a_base_exception(shared_pool: shmpool.SharedPool) -> None:
    pids = set(shared_pool.worker_pids)
    with pytest.raises(TypeError, match=r"chunk 1 cannot be sent back.*KeyboardInterrupt"):
        shared_pool.map(k.odd_result, np.arange(3), chunks=1)
    with pytest.raises(TypeError, match=r"item 0 cannot be sent back"):
        shared_pool.submit(k.odd_result_item, 0).result(timeout=10)
    assert_usable(shared_pool, pids)


def test_argument_whose_unpickling_raises_a_base_exception(shared_pool: shmpool.SharedPool) -> None:
    pids = set(shared_pool.worker_pids)
    with pytest.raises(KeyboardInterrupt, match="no unpickling"):
        shared_pool.map(k.use_whole, np.zeros(4), shmpool.whole(k.BadUnpickle("x")))
    with pytest.raises(KeyboardInterrupt, match="no unpickling"):
        shared_pool.map(k.use_whole, np.zeros(4), extra=k.BadUnpickle("x"))
    assert_usable(shared_pool, pids)


def test_initializer_raising_system_exit_is_reported(start_method: str) -> None:
    with shmpool.SharedPool(1, start_method=start_method, initializer=k.exit_in_initializer) as pool:
        with pytest.raises(WorkerCrashedError, match=r"initializer raised builtins\.SystemExit") as info:
            pool.map(k.noop, np.zeros(3))
        assert isinstance(info.value.__cause__, SystemExit) and info.value.__cause__.code == 9


# ---- class 3: no hang, whatever dies --------------------------------------------------


@pytest.mark.parametrize("how", ["whole", "keyword"])
def test_argument_whose_unpickling_kills_the_worker_fails_the_map(pool: shmpool.SharedPool, how: str) -> None:
    start = time.monotonic()
    with pytest.raises(WorkerCrashedError, match="exited with code 7 while unpickling") as info:
        if how == "whole":
            pool.map(k.use_whole, np.zeros(4), shmpool.whole(k.ExitOnUnpickle()))
        else:
            pool.map(k.use_whole, np.zeros(4), extra=k.ExitOnUnpickle())
    assert info.value.exitcode == 7
    assert time.monotonic() - start < 3.0
    assert_usable(pool)


def test_hung_initializer_does_not_hang_a_map_with_a_timeout(start_method: str) -> None:
    pool = shmpool.SharedPool(2, start_method=start_method, initializer=k.hang_forever)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            pool.map(k.noop, np.zeros(4), timeout=0.5)
        assert time.monotonic() - start < 3.0
        with pytest.raises(TimeoutError):  # and again, on the replacements
            pool.map(k.noop, np.zeros(4), timeout=0.3)
    finally:
        pool.terminate()


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_death_is_noticed_while_a_grandchild_holds_its_descriptors(start_method: str) -> None:
    with shmpool.SharedPool(1, start_method=start_method) as pool:
        pool.map(k.noop, np.zeros(2))  # started and ready
        start = time.monotonic()
        with pytest.raises(WorkerCrashedError, match="exited with code 5"):
            pool.map(k.fork_then_exit, np.zeros(1), linger=3.0)
        assert time.monotonic() - start < 1.0
        assert_usable(pool)


# ---- class 5: concurrency inside one pool ---------------------------------------------


def test_cancel_of_a_finished_map_never_touches_the_next(shared_pool: shmpool.SharedPool) -> None:
    x = np.zeros(4)
    for _ in range(30):
        first = shared_pool.map_async(k.noop, x, chunks=1)
        second = shared_pool.map_async(k.noop, x, chunks=1)
        # first's call may be over (its slot free, maybe reused by second) while its
        # future is still pending: cancelling it must affect first only.
        first.cancel()
        assert second.result(timeout=10) == [1, 1, 1, 1]
        wait([first], timeout=10)
        assert first.cancelled() or first.result() == [1, 1, 1, 1]


def test_cancel_of_a_queued_map_returns_at_once(shared_pool: shmpool.SharedPool, tmp_path: Path) -> None:
    release = tmp_path / "release"
    # Every worker held until the test says so (a timed blocker could end, on a slow
    # machine, before the queue below is even built, and the queued maps would run).
    blocker = shared_pool.map_async(
        k.wait_for_path, np.zeros(shared_pool.workers), chunks=1, path=str(release)
    )
    try:
        # More maps than any fixed number of control slots: the later ones must queue.
        queued = [shared_pool.map_async(k.noop, np.zeros(2), chunks=1) for _ in range(60)]
        start = time.monotonic()
        assert queued[-1].cancel()
        assert time.monotonic() - start < 0.2
        with pytest.raises(CancelledError):
            queued[-1].result(timeout=1)
    finally:
        release.touch()
    assert blocker.result(timeout=10) == [None] * shared_pool.workers
    assert all(f.result(timeout=10) == [1, 1] for f in queued[:-1])


def test_many_maps_in_flight_at_once(shared_pool: shmpool.SharedPool) -> None:
    futures = [shared_pool.map_async(k.noop, np.zeros(3), chunks=1) for _ in range(100)]
    assert [f.result(timeout=30) for f in futures] == [[1, 1, 1]] * 100


def test_many_imaps_open_at_once(shared_pool: shmpool.SharedPool) -> None:
    streams = [shared_pool.imap(k.square, range(5)) for _ in range(40)]
    rows = list(zip(*streams, strict=True))
    assert rows == [tuple([i * i] * 40) for i in range(5)]


def test_submit_from_done_callbacks_does_not_deadlock(shared_pool: shmpool.SharedPool) -> None:
    count = 5000
    follow_ups: list[Future[int]] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def chain(future: Future[int]) -> None:
        follow = shared_pool.submit(k.square, future.result())
        with lock:
            follow_ups.append(follow)
            if len(follow_ups) == count:
                all_done.set()

    firsts = [shared_pool.submit(k.square, i % 10) for i in range(count)]
    for future in firsts:
        future.add_done_callback(chain)
    assert all_done.wait(60), f"only {len(follow_ups)} of {count} follow-ups were submitted"
    results = [f.result(timeout=30) for f in follow_ups]
    assert sorted(results) == sorted((i % 10) ** 4 for i in range(count))


def test_done_callback_may_wait_for_another_call(shared_pool: shmpool.SharedPool) -> None:
    # The callback blocks until a later call is settled: settling that one must not wait
    # behind the blocked callback.
    seen: list[int] = []
    second: list[Future[int]] = []
    ready = threading.Event()
    finished = threading.Event()

    def wait_for_second(future: Future[int]) -> None:
        ready.wait(10)
        seen.append(second[0].result(timeout=10))
        finished.set()

    first = shared_pool.submit(k.slow_square, 2)  # still running when the callback is added
    first.add_done_callback(wait_for_second)
    assert first.result(timeout=10) == 4
    second.append(shared_pool.submit(k.square, 3))
    ready.set()
    assert finished.wait(15) and seen == [9]


def test_next_on_an_imap_after_terminate_raises_pool_closed(start_method: str) -> None:
    pool = shmpool.SharedPool(2, start_method=start_method)
    stream = pool.imap(k.slow_square, range(200))
    assert next(stream) == 0
    pool.terminate()
    with pytest.raises(PoolClosedError):
        list(stream)


def test_terminate_from_a_done_callback_releases_everything(start_method: str) -> None:
    def cycle() -> None:
        pool = shmpool.SharedPool(1, start_method=start_method)
        closed = threading.Event()
        future = pool.submit(k.square, 3)
        future.add_done_callback(lambda _: (pool.terminate(), closed.set()))
        assert closed.wait(15)
        assert pool.closed

    cycle()  # warm up one-time state (the forkserver, the resource tracker)

    def fds() -> list[str]:
        gc.collect()
        return pool_fds()

    before = fds()
    for _ in range(3):
        cycle()
    deadline = time.monotonic() + 15  # a leak never recovers; a loaded machine is slow
    while len(fds()) > len(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fds()) <= len(before), sorted(set(fds()) - set(before))


def test_cancelling_one_imap_leaves_the_others_running(shared_pool: shmpool.SharedPool) -> None:
    first = shared_pool.imap(k.slow_square, range(50))
    second = shared_pool.imap(k.slow_square, range(50))
    assert next(first) == 0 and next(second) == 0
    first.close()  # type: ignore[attr-defined]
    assert list(second) == [i * i for i in range(1, 50)]
