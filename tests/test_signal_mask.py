"""Signals sent to the whole process stop a pool's wait promptly, wherever they land.

The kernel gives a process-wide signal to any thread that does not block it. Python runs
the handler in the main thread only, and a main thread asleep in a wait is woken only by a
signal that lands on it: Ctrl-C landing on another thread would leave a waiting ``map``
asleep until it ended by itself. So the pool's own threads (supervisor, helpers running
callbacks, a ``map_async`` waiter, the executor's dispatcher, staging copiers, a
ThreadPool's workers) block such signals, and its waits in the main thread wake now and
then. The script checks the masks in /proc, then makes the main thread block SIGINT so the
kernel must give it to another thread (one of the application's, as NumPy's BLAS threads
are), and interrupts a map, an imap, a future's result, and an executor's result, map and
shutdown that would each take seconds.
"""

from __future__ import annotations

import pytest

from .conftest import START_METHODS, run_script

SCRIPT = """
import os, signal, sys, threading, time
import numpy as np, shmpool
from shmpool._signal_mask import PROCESS_SIGNALS
from tests import kernels

kind = sys.argv[1]
pool = shmpool.ThreadPool(2) if kind == "threads" else shmpool.SharedPool(2, start_method=kind)
with pool:
    plain = np.zeros(2**21)  # 16 MiB: staged by parallel copies
    pool.map(kernels.chunk_length, plain, chunks=4)
    pool.map_async(kernels.chunk_length, plain, chunks=2).result()
    called = threading.Event()
    pool.submit(abs, -1).add_done_callback(lambda f: called.set())
    assert called.wait(10)
    assert list(pool.imap(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
    with pool.executor() as done_ex:
        assert done_ex.submit(abs, -2).result() == 2
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    unmasked = []
    for t in others:
        with open(f"/proc/self/task/{t.native_id}/status") as f:
            blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        if any(not blocked >> (s - 1) & 1 for s in PROCESS_SIGNALS):
            unmasked.append(t.name)
    print("threads", len(others), "unmasked", sorted(set(unmasked)))

    # An application's thread, the only one left to take SIGINT once the main thread
    # blocks it (the Timer threads below are born with it blocked).
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    x = pool.zeros(100)
    ex = pool.executor()
    calls = {
        "map": lambda: pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.2),
        "imap": lambda: list(pool.imap(time.sleep, [0.2] * 100)),
        "result": lambda: pool.submit(time.sleep, 3).result(),
        "executor result": lambda: ex.submit(time.sleep, 3).result(),
        "executor map": lambda: list(ex.map(time.sleep, [3])),
        "executor shutdown": lambda: ex.submit(time.sleep, 3) and ex.shutdown(wait=True),
    }
    for name, call in calls.items():
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            call()
            print(name, "not interrupted")
        except KeyboardInterrupt:
            print(name, "interrupted after", round(time.monotonic() - start, 1))
    ex.shutdown(wait=True)
    assert pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]
    print("usable")
"""


@pytest.mark.parametrize("kind", [*START_METHODS, "threads"])
def test_process_signals_interrupt_a_wait_wherever_they_land(kind: str) -> None:
    lines = run_script(SCRIPT, kind).stdout.splitlines()
    counted, unmasked = lines[0].split(" unmasked ")
    assert int(counted.split()[1]) >= 2, lines  # the pool's threads were there to be picked
    assert unmasked == "[]", f"pool threads that take process signals: {unmasked}"
    names = ["map", "imap", "result", "executor result", "executor map", "executor shutdown"]
    assert len(lines) == len(names) + 2, lines
    for line, name in zip(lines[1:-1], names, strict=True):
        # The signal comes at 0.3 s; each call would take 3 s or more.
        assert line.startswith(f"{name} interrupted after"), lines
        assert float(line.split()[-1]) < 1.5, lines
    assert lines[-1:] == ["usable"]


CLOSE_SCRIPT = """
import os, signal, sys, threading, time
import shmpool
from tests import kernels

kind = sys.argv[1]
pool = shmpool.ThreadPool(2) if kind == "threads" else shmpool.SharedPool(2, start_method=kind)
x = pool.zeros(100)
outcome = []

def long_map():  # 100 chunks of 0.2 s on 2 workers: 10 s unless stopped
    try:
        pool.map(kernels.sleep_chunk, x, chunks=1, seconds=0.2)
        outcome.append("finished")
    except shmpool.PoolClosedError as exc:
        outcome.append(type(exc).__name__)

mapping = threading.Thread(target=long_map)
mapping.start()
time.sleep(0.5)
# As above: only the application's thread can take the SIGINT.
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.monotonic()
try:
    pool.close()
    print("close not interrupted")
except KeyboardInterrupt:
    print("close interrupted after", round(time.monotonic() - start, 1))
mapping.join(10)
print("map", outcome, "closed", pool.closed, repr(pool).endswith("closed>"))
pool.close()
pool.terminate()
print("idempotent")
"""


@pytest.mark.parametrize("kind", [*START_METHODS, "threads"])
def test_close_interrupted_while_it_waits_terminates_the_pool(kind: str) -> None:
    lines = run_script(CLOSE_SCRIPT, kind).stdout.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("close interrupted after"), lines
    assert float(lines[0].split()[-1]) < 1.5, lines  # the map would take 10 s
    # The map in flight was stopped, not left running, and the pool ended for good.
    assert lines[1] == "map ['PoolClosedError'] closed True True", lines
    assert lines[2] == "idempotent"
