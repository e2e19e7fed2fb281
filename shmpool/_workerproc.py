"""The parent's handle on a worker process: starting it, sending to it, watching it die.

:class:`Worker` holds one worker's process, its pipe and the outbox of messages waiting
until the worker is ready; :func:`start_worker` starts one. A worker's death is watched
through a pidfd (:func:`_death_watch`), which only that process's exit can fire;
multiprocessing's sentinel, the fallback, is a pipe end that processes forked by a kernel
inherit and keep open. :class:`Watcher` is the supervisor's one poll over every worker's
pipe and death watch. :func:`describe_exit` words an exit status for crash messages.

Everything that touches a worker's process or descriptors lives here, so the rest of the
dispatch deals in :class:`Worker` objects only. What a death means for the calls in
flight is :mod:`shmpool._book`'s; replacing the worker is :mod:`shmpool._dispatch`'s.
The other end of the pipe, the loop a worker process runs, is :mod:`shmpool._worker`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import socket
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from ._helpers import Helpers
from ._inner import environment
from ._lifeline import forget_in_forked_children
from ._without_main import without_main
from ._worker import worker_main

__all__ = [
    "EXIT_STATUS_WAIT_S",
    "WakeupPipe",
    "Watcher",
    "Worker",
    "describe_exit",
    "kill_processes",
    "reap_processes",
    "start_worker",
]

_POLL_MASK = select.POLLIN | select.POLLHUP | select.POLLERR

# How long after its death a worker's exit status is waited for (forkserver reports it
# through the server a moment after the pidfd fires).
EXIT_STATUS_WAIT_S = 1.0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection):
        self.index = index
        self.process = process
        self.conn = conn
        self._send_lock = threading.Lock()  # one message on the pipe at a time
        self._box_lock = threading.Lock()  # guards ready, outbox, flushing and closing
        self._outbox: collections.deque[bytes] = collections.deque()
        self._flushing = False
        self._closing = False  # close() was called: the pipe is closed, or is being
        self.alive = True
        self.ready = False
        self.load = 0  # task batches sent and not yet answered

    def write(self, data: bytes) -> None:
        """Send ``data`` now; a dead worker is reported by its death watch, not here."""
        with self._send_lock:
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError):
                pass

    def send(self, data: bytes, helpers: Helpers, *, may_block: bool) -> None:
        """Send ``data``: now, when the caller ``may_block`` and the worker is ready with
        nothing queued; else through the outbox, which a thread of ``helpers`` flushes
        once the worker is ready."""
        with self._box_lock:
            if not self.alive:
                return  # nobody will read it
            direct = self.ready and not self._outbox and may_block
            flush = False
            if not direct:
                self._outbox.append(data)
                flush = self.ready and not self._flushing
                self._flushing = self._flushing or flush
        if direct:
            with self._send_lock:  # as write(), inlined: this runs once per message
                try:
                    self.conn.send_bytes(data)
                except (OSError, ValueError):
                    pass
        elif flush:
            helpers.post(self._flush)

    def set_ready(self, helpers: Helpers) -> None:
        """The worker said it is ready: a thread of ``helpers`` flushes what waited."""
        with self._box_lock:
            self.ready = True
            flush = bool(self._outbox) and not self._flushing
            self._flushing = self._flushing or flush
        if flush:
            helpers.post(self._flush)

    def mark_dead(self) -> None:
        """The worker is gone (or being shut down): nothing more is sent to it."""
        with self._box_lock:
            self.alive = False
            self._outbox.clear()

    def close(self) -> None:
        """Close the pipe to the worker, which is dead or done with.

        Under the send lock: a thread still sending to this worker (it chose the worker
        before the death was seen) would otherwise write, through the number the closed
        descriptor had, into whatever pipe the number is given to next. That is the
        replacement's, started a moment later: it would run a message meant for the
        worker that died (a task that kills its worker then kills the replacement too).
        """
        # Once only: a second closer (shutdown meeting a supervisor still at work) must not
        # read the descriptor's number after the first closed it, nor shut down whatever
        # socket has that number by then.
        with self._box_lock:
            if self._closing:
                return
            self._closing = True
        # A send blocked on a full pipe (its reader gone, its end held by a process the
        # worker forked) would keep the lock forever: shutting the socket down first makes
        # that send fail at once.
        with contextlib.suppress(OSError, ValueError):
            sock = socket.socket(fileno=os.dup(self.conn.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        with self._send_lock:
            self.conn.close()

    def _flush(self) -> None:
        """Send the outbox until it is empty (on a helper thread: a send may block)."""
        while True:
            with self._box_lock:
                if not self.alive:
                    self._outbox.clear()  # nobody will read it
                if not self._outbox:
                    self._flushing = False
                    return
                data = self._outbox.popleft()
            self.write(data)

    def exit_status(self) -> int | None:
        """The exit status of the worker, which has died (None if it cannot be had)."""
        # After the pidfd fired a child's status is there at once (exitcode reaps it);
        # forkserver sends it a moment later. Joining on the sentinel first would wait
        # for any process the worker forked that still holds it.
        process = self.process
        with contextlib.suppress(OSError, ValueError):
            if process.exitcode is None:
                process.join(timeout=EXIT_STATUS_WAIT_S)
            return process.exitcode
        return None


def start_worker(
    ctx: BaseContext,
    index: int,
    count: int,
    control_path: str,
    init_payload: bytes | None,
    env: dict[str, str] | None = None,
) -> Worker:
    """Start worker ``index`` of ``count``; it is not ready until it sends ``Ready``.
    ``env``: variables the worker's environment gets from its very start (see
    :func:`shmpool._inner.environment`)."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(  # type: ignore[attr-defined]
        target=worker_main,
        args=(child_conn, index, count, control_path, init_payload),
        name=f"shmpool-worker-{index}",
        daemon=True,
    )
    # The worker needs nothing of the caller's main (see _without_main); a spawned one
    # gets the thread-limit variables from its very start (see _inner).
    with without_main(), environment(env):
        process.start()
    forget_in_forked_children(process)
    child_conn.close()  # else the worker would never see EOF from our side
    return Worker(index, process, parent_conn)


def describe_exit(exitcode: int | None) -> str:
    """'killed by SIGKILL (-9)' or 'exited with code 3', for crash messages."""
    if exitcode is None:
        return "ended without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGKILL": " (killed from outside, often by the out-of-memory killer)",
            "SIGSEGV": " (a segmentation fault, usually in C code)",
            "SIGBUS": " (a bus error: shared memory ran out, or a truncated file mapping)",
            "SIGABRT": " (aborted, usually by a failed assertion in C code)",
        }.get(name, "")
        return f"was killed by {name} ({exitcode}){hint}"
    return f"exited with code {exitcode}"


def _death_watch(process: BaseProcess) -> tuple[int, bool]:
    """A descriptor that becomes readable when ``process`` exits, and whether it is ours to
    close: a pidfd where the platform has one, else multiprocessing's sentinel."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None and process.pid is not None:
        try:
            return pidfd_open(process.pid), True
        except OSError:  # an old kernel, or the process is gone already
            pass
    return process.sentinel, False


class Watcher:
    """The supervisor's one poll over every worker's pipe and death watch, and a wake-up
    descriptor. Used by the supervisor thread only."""

    def __init__(self, wakeup_fd: int):
        # One poll object for the pool's life (rebuilding a selector per wake-up, as
        # multiprocessing.connection.wait does, costs tens of microseconds per reply).
        self._poller = select.poll()
        self._owners: dict[int, tuple[bool, Worker]] = {}  # fd -> (is the death watch, worker)
        self._ours: dict[Worker, int] = {}  # pidfds to close when the worker is done with
        self._wakeup_fd = wakeup_fd
        self._poller.register(wakeup_fd, select.POLLIN)

    def watch(self, worker: Worker) -> None:
        death, owned = _death_watch(worker.process)
        if owned:
            self._ours[worker] = death
        for fd, is_death in ((worker.conn.fileno(), False), (death, True)):
            self._poller.register(fd, _POLL_MASK)
            self._owners[fd] = (is_death, worker)

    def unwatch(self, worker: Worker, *, pipe_only: bool = False) -> None:
        for fd in [fd for fd, (d, w) in self._owners.items() if w is worker and not (pipe_only and d)]:
            self._poller.unregister(fd)
            del self._owners[fd]
        if not pipe_only and worker in self._ours:
            os.close(self._ours.pop(worker))

    def watching(self, worker: Worker) -> bool:
        """Whether anything of ``worker`` is still watched."""
        return any(w is worker for _, w in self._owners.values())

    def poll(self) -> tuple[list[tuple[bool, Worker]], bool]:
        """Wait for something to happen: (is the death watch, worker) for each descriptor
        that fired, and whether the wake-up descriptor did."""
        events = self._poller.poll()
        ready = [self._owners[fd] for fd, _ in events if fd in self._owners]
        woken = False
        for fd, _ in events:
            woken = woken or fd == self._wakeup_fd
        return ready, woken

    def close(self) -> None:
        """Stop watching: close the pidfds still open."""
        for worker in list(self._ours):
            self.unwatch(worker)


class WakeupPipe:
    """A pipe that wakes the supervisor's poll from another thread. Two users hold it (the
    supervisor and shutdown); whichever of them ends last closes it."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._users_left = 2
        self._lock = threading.Lock()

    def wake(self) -> None:
        """Make the read end readable (a no-op once closed)."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"x")

    def drain(self) -> None:
        """Read what wakes wrote, so that the next poll waits again."""
        os.read(self.read_fd, 4096)

    def end_of_user(self) -> None:
        """One user is done with the pipe; the second closes both ends."""
        with self._lock:
            self._users_left -= 1
            last = self._users_left == 0
        if last:
            os.close(self.read_fd)
            os.close(self._write_fd)


def kill_processes(workers: list[Worker]) -> None:
    """SIGKILL every worker's process that is still there."""
    for w in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            w.process.kill()


def reap_processes(workers: list[Worker], timeout: float) -> None:
    """Wait up to ``timeout`` for each worker's process to end, kill it if it has not, and
    reap it, so that neither it nor its pipes stay in multiprocessing's set of children."""
    for w in workers:
        w.process.join(timeout=timeout)
        if w.process.exitcode is None:
            w.process.kill()
            w.process.join(timeout=timeout)
        # Once more, the status known: a join that raced the supervisor's reaping
        # (Popen.poll is not thread-safe: the loser's waitpid gets ECHILD) leaves the
        # process, and its pipes, in multiprocessing's set of children.
        with contextlib.suppress(OSError, ValueError):
            w.process.join(timeout=0)
