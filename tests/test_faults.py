"""Faults: workers that die, kernels that hang, Ctrl-C in the parent. Each case checks
the error, that it came fast, that the pool recovered, and (via conftest) no leak."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

import shmpool

from . import kernels
from .conftest import run_script

CRASHES = [
    ("exit", 3, "exited with code 3"),
    ("kill", -signal.SIGKILL, "SIGKILL"),
    ("segv", -signal.SIGSEGV, "SIGSEGV"),
]


@pytest.mark.parametrize(("how", "exitcode", "text"), CRASHES)
def test_worker_crash_mid_map(pool: shmpool.SharedPool, how: str, exitcode: int, text: str) -> None:
    x = pool.asarray(np.arange(200))
    before = set(pool.worker_pids)
    start = time.monotonic()
    with pytest.raises(shmpool.WorkerCrashedError) as info:
        pool.map(kernels.crash_on, x, chunks=1, bad=57, how=how)
    assert time.monotonic() - start < 1.0 + 200 * 0.01 / 2
    err = info.value
    assert err.exitcode == exitcode and err.chunk == 57
    assert text in str(err) and "chunk 57" in str(err)
    after = set(pool.worker_pids)
    assert len(after) == 2 and after != before  # the dead worker was replaced
    y = pool.asarray(np.arange(1000.0))
    pool.map(kernels.double_in_place, y)
    assert np.array_equal(y, np.arange(1000.0) * 2)


def test_crash_is_reported_within_a_second(pool: shmpool.SharedPool) -> None:
    x = pool.asarray(np.arange(4))
    start = time.monotonic()
    with pytest.raises(shmpool.WorkerCrashedError):
        pool.map(kernels.crash_on, x, chunks=1, bad=0, how="kill")
    assert time.monotonic() - start < 1.0


def test_every_worker_dies_at_once(pool: shmpool.SharedPool) -> None:
    with pytest.raises(shmpool.WorkerCrashedError, match="exited with code 4"):
        pool.map(kernels.crash_all, np.zeros(10), chunks=1)
    assert len(pool.worker_pids) == 2
    assert pool.map(kernels.chunk_length, np.zeros(6), chunks=3) == [3, 3]


def test_worker_killed_from_outside_while_idle(pool: shmpool.SharedPool) -> None:
    import os

    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while victim in pool.worker_pids and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim not in pool.worker_pids
    assert pool.map(kernels.chunk_length, np.zeros(4), chunks=1) == [1, 1, 1, 1]


def test_timeout_replaces_stuck_workers(pool: shmpool.SharedPool) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.5 s"):
        pool.map(kernels.sleep_forever, np.zeros(2), chunks=1, timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


def test_keyboard_interrupt_in_parent(start_method: str) -> None:
    proc = run_script(
        """
        import os, signal, sys, threading, time
        import numpy as np, shmpool
        from tests import kernels

        with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:
            x = pool.zeros(100)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            start = time.monotonic()
            try:
                pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.2)
            except KeyboardInterrupt:
                print("interrupted after", round(time.monotonic() - start, 1))
            else:
                print("not interrupted")
            pool.map(kernels.chunk_length, np.zeros(4), chunks=2)
            print("usable")
        """,
        start_method,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("interrupted after") and float(lines[0].split()[-1]) < 2.0, (
        lines,
        proc.stderr,
    )
    assert lines[1] == "usable"
    assert "Traceback" not in proc.stderr


def test_keyboard_interrupt_kills_stuck_kernel(start_method: str) -> None:
    proc = run_script(
        """
        import os, signal, sys, threading, time
        import numpy as np, shmpool
        from tests import kernels

        pool = shmpool.SharedPool(2, start_method=sys.argv[1])
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            pool.map(kernels.sleep_forever, np.zeros(2), chunks=1)
        except KeyboardInterrupt:
            print(round(time.monotonic() - start, 1))
        pool.close()
        """,
        start_method,
    )
    assert float(proc.stdout) < 3.0
    assert "Traceback" not in proc.stderr


def test_worker_crash_during_submit_and_imap(pool: shmpool.SharedPool) -> None:
    future = pool.submit(kernels.crash_on, np.array([1]), bad=1, how="kill")
    with pytest.raises(shmpool.WorkerCrashedError, match="SIGKILL"):
        future.result(timeout=10)
    seen = []
    with pytest.raises(shmpool.WorkerCrashedError, match=r"item 7") as info:
        for value in pool.imap(lambda i: kernels.crash_on(np.array([i]), bad=7, how="exit") or i, range(50)):
            seen.append(value)
    assert info.value.exitcode == 3 and info.value.chunk == 7
    assert seen == list(range(7))
    assert list(pool.imap(kernels.square, range(5))) == [0, 1, 4, 9, 16]
    assert pool.submit(kernels.square, 3).result(timeout=10) == 9


def test_a_worker_dying_with_the_bar_lock_leaves_the_parents_bars_working() -> None:
    # tqdm's write lock is a semaphore shared with every child forked after it was made; a
    # worker that died holding it used to leave every later bar of the parent waiting. Only
    # fork shares it: spawned and fork-server workers make their own (and a worker that
    # dies after making one leaves it to the resource tracker, which says so on stderr).
    proc = run_script(
        """
        import sys
        import numpy as np, shmpool
        from tqdm.auto import tqdm
        from tests import kernels

        tqdm.get_lock()  # made before the workers start, as any earlier bar makes it
        with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:
            try:
                pool.submit(kernels.die_holding_the_bar_lock, 1).result(timeout=30)
            except shmpool.WorkerCrashedError:
                print("died")
            future = pool.map_async(np.negative, pool.zeros(100), chunks=10, progress=True)
            print(len(future.result(timeout=20)))
            print(list(pool.imap(kernels.square, range(3), progress=True)))
        """,
        "fork",
        timeout=60,
    )
    assert proc.stdout.splitlines() == ["died", "10", "[0, 1, 4]"], proc.stdout
    assert "100/100" in proc.stderr and "3/3" in proc.stderr
