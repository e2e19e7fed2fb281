"""The parent's end of a worker's pipe: closing it while another thread sends to the worker.

A caller's thread may pick a worker for a task a moment before the supervisor sees that
worker die. If the supervisor closed the pipe while that send was under way, the send would
write through the closed descriptor's number into whichever pipe got the number next: the
replacement's, started right after. The replacement would then run a message meant for the
dead worker (under forkserver on Python 3.10 a ``submit(os._exit, 1)`` sent to a killed
worker killed its replacement too, once in about 150 runs). These tests hold a send at that
moment by hand, so they fail every time the pipe can close under a send.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import pytest

from shmpool._helpers import Helpers
from shmpool._workerproc import Worker

HOLD_S = 0.5


class HeldConnection:
    """A pipe end whose sends stop, once their descriptor is chosen, until ``go`` is set:
    the moment a thread switch can fall between a send reading the number and writing."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self.sending = threading.Event()
        self.go = threading.Event()

    def fileno(self) -> int:
        return self._conn.fileno()

    def send_bytes(self, data: bytes) -> None:
        fd = self._conn.fileno()  # raises OSError once closed, as Connection does
        self.sending.set()
        self.go.wait()
        os.write(fd, len(data).to_bytes(4, "big") + data)

    def close(self) -> None:
        self._conn.close()


def _ready_worker(conn: object) -> Worker:
    worker = Worker(0, multiprocessing.current_process(), conn)  # type: ignore[arg-type]
    worker.ready = True
    return worker


def _close_as_the_supervisor(worker: Worker) -> None:
    """What the supervisor does when it sees the worker's death."""
    worker.mark_dead()
    worker.close()


def _started(target: Callable[..., object], *args: object, **kwargs: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def helpers() -> Iterator[Helpers]:
    pool_helpers = Helpers()
    yield pool_helpers
    pool_helpers.close(5)


def test_the_pipe_does_not_close_under_a_send_so_its_number_reaches_no_other_pipe(helpers: Helpers) -> None:
    ours, theirs = multiprocessing.Pipe()
    held = HeldConnection(ours)
    worker = _ready_worker(held)
    sender = _started(worker.send, b"meant for the dead", helpers, may_block=True)
    assert held.sending.wait(10)
    closer = _started(_close_as_the_supervisor, worker)
    closer.join(HOLD_S)
    # The replacement's pipe is made now: had the number been freed, it would get it.
    new_ours, new_theirs = multiprocessing.Pipe()
    held.go.set()
    sender.join(10)
    closer.join(10)
    try:
        assert not sender.is_alive() and not closer.is_alive()
        assert ours.closed
        assert not new_theirs.poll(0.2), "a send meant for the dead worker reached the new pipe"
        assert not new_ours.poll(0)
    finally:
        for conn in (theirs, new_ours, new_theirs):
            conn.close()


def test_closing_wakes_a_send_blocked_on_a_full_pipe(helpers: Helpers) -> None:
    # Nobody reads the other end, which stays open (as when a process the dead worker
    # forked holds it): the send blocks; closing must not wait for it forever.
    ours, theirs = multiprocessing.Pipe()
    worker = _ready_worker(ours)
    sender = _started(worker.send, b"x" * (16 << 20), helpers, may_block=True)
    sender.join(HOLD_S)
    try:
        assert sender.is_alive(), "the send should be blocked on the full pipe"
        closer = _started(_close_as_the_supervisor, worker)
        closer.join(10)
        sender.join(10)
        assert not closer.is_alive(), "closing waited for a send that cannot end"
        assert not sender.is_alive()
        assert ours.closed
    finally:
        theirs.close()


def test_nothing_is_sent_to_a_worker_marked_dead(helpers: Helpers) -> None:
    ours, theirs = multiprocessing.Pipe()
    worker = _ready_worker(ours)
    try:
        worker.send(b"before", helpers, may_block=True)
        assert theirs.recv_bytes() == b"before"
        worker.mark_dead()
        worker.send(b"after", helpers, may_block=True)
        worker.send(b"after", helpers, may_block=False)
        assert not theirs.poll(0.2)
    finally:
        worker.close()
        theirs.close()
