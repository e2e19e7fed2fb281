"""Dispatch: starting workers, sending them work, collecting replies, noticing deaths.

::

    caller threads                 supervisor thread                 worker i (persistent)
    --------------                 -----------------                 ---------------------
    map(): stage arrays, pickle
      kernel + args ONCE
    submit_map(): take a control
      slot, register the call ──┐
      send ONE MapJob per worker ┼──────────── pipe i ─────────────▶ recv MapJob
                                 │                                   claim chunks: fcntl lock on
      control block (shared memory): next-chunk counter ◀──────────  the slot, advance counter
                                     cancel flag        ──────────▶  checked before each chunk
      progress bar reads ◀────────── done / current chunk ◀────────  written per chunk
                                 │                                   kernel(*views, **kwargs)
                                 └─▶ wait(pipes + sentinels) ◀─────  ONE MapDone per map
                                     route reply to its call
      call.done.wait() ◀──────────── last reply (or death) completes
                                     the call, frees the slot
                                     sentinel fired: fail the calls
                                     the worker was in, start a new one

- Caller threads never read pipes; they register a call, send, and wait on its event.
  Each pipe has a send lock, so several threads may run maps at once (one slot each).
- The supervisor is the only reader of the pipes and the only one that reaps workers;
  it waits with one ``multiprocessing.connection.wait`` call, never polls.
- A call completes when every worker it was sent to has replied or died. The first kernel
  error or death cancels the slot, so the others stop after their current chunk.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import select
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from ._control import MAX_SLOTS, ControlBlock
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, RemoteError, Stop, TaskBatch, TaskDone
from ._remote import rebuild_error
from ._worker import worker_main
from .errors import PoolClosedError, WorkerCrashedError

__all__ = ["Dispatcher", "MapCall", "TaskCall"]

_POLL_MASK = select.POLLIN | select.POLLHUP | select.POLLERR

# How long close() waits for a worker to leave after Stop before it is killed.
JOIN_TIMEOUT_S = 5.0

# Workers dying before they are ready, this many times in a row, break the pool instead of
# being replaced again: a worker that cannot start (a bad import under spawn) would loop.
MAX_STARTUP_DEATHS = 3


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection):
        self.index = index
        self.process = process
        self.conn = conn
        self.send_lock = threading.Lock()
        self.alive = True
        self.ready = False
        self.load = 0  # task batches sent and not yet answered

    def send(self, data: bytes) -> None:
        """Send ``data``; a dead worker is reported by its sentinel, not here."""
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.send_bytes(data)


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


class _Call:
    """Work in flight: the workers that still owe a reply, and how it ended."""

    def __init__(self, job_id: int, slot: int, workers: set[_Worker]):
        self.job_id = job_id
        self.slot = slot  # control slot, -1 for none
        self.waiting = workers
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.on_done: Callable[[_Call], None] | None = None


class MapCall(_Call):
    """One map: sent to every worker, done when each has replied or died."""

    def __init__(self, job_id: int, slot: int, total: int, workers: set[_Worker]):
        super().__init__(job_id, slot, workers)
        self.total = total
        self.job = b""  # the pickled MapJob, resent to a worker that replaces an idle one
        self.replies: list[MapDone] = []
        self.errors: list[RemoteError] = []
        self.chunks_run = 0


class TaskCall(_Call):
    """One batch of calls (a ``submit``, or ``imap`` items from ``first``) on one worker."""

    def __init__(self, job_id: int, slot: int, worker: _Worker, first: int, count: int):
        super().__init__(job_id, slot, {worker})
        self.first = first
        self.count = count
        self.reply: TaskDone | None = None


class Dispatcher:
    """Owns the workers and the supervisor thread of one pool."""

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        control: ControlBlock,
        control_path: str,
        init_payload: bytes | None,
    ):
        self._ctx = ctx
        self._count = workers
        self.control = control
        self._control_path = control_path
        self._init_payload = init_payload
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._job_ids = itertools.count()
        self._free_slots = list(range(MAX_SLOTS))
        self._slot_freed = threading.Condition(self._lock)
        self._stopping = False
        self._killing = False
        self.broken: BaseException | None = None
        self._startup_deaths = 0
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._workers = [self._start_worker(i) for i in range(workers)]
        self._supervisor = threading.Thread(target=self._supervise, name="shmpool-supervisor", daemon=True)
        self._supervisor.start()

    # ---- workers ------------------------------------------------------------------------

    def _start_worker(self, index: int) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_conn, index, self._count, self._control_path, self._init_payload),
            name=f"shmpool-worker-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()  # else the worker would never see EOF from our side
        return _Worker(index, process, parent_conn)

    @property
    def pids(self) -> list[int]:
        """PIDs of the live workers."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.alive and w.process.pid is not None]

    # ---- calls --------------------------------------------------------------------------

    def _take_slot(self) -> int:
        # Called with the lock held.
        while not self._free_slots and not self._stopping:
            self._slot_freed.wait()
        self._check_usable()
        return self._free_slots.pop()

    def acquire_slot(self) -> int:
        """A control slot for a stream of task batches (imap); give it back with
        :meth:`release_slot` once none of its batches is in flight."""
        with self._lock:
            slot = self._take_slot()
            self.control.reset(slot, 0)
            return slot

    def release_slot(self, slot: int) -> None:
        """Return a slot taken with :meth:`acquire_slot`."""
        with self._lock:
            self._free_slots.append(slot)
            self._slot_freed.notify()

    def submit_map(self, job: Callable[[int, int], MapJob], total: int) -> MapCall:
        """Take a slot, register a call of ``total`` chunks and send ``job(job_id, slot)``
        to every worker."""
        with self._lock:
            slot = self._take_slot()
            self.control.reset(slot, total)
            job_id = next(self._job_ids)
            targets = [w for w in self._workers if w.alive]
            call = MapCall(job_id, slot, total, set(targets))
            self._calls[job_id] = call
        call.job = data = pickle.dumps(job(job_id, slot), protocol=5)
        for worker in targets:
            worker.send(data)
        return call

    def submit_tasks(
        self,
        fn: bytes,
        items: bytes,
        *,
        count: int = 1,
        first: int = 0,
        star: bool = False,
        slot: int = -1,
        on_done: Callable[[_Call], None] | None = None,
    ) -> TaskCall:
        """Send one batch of calls to the least busy worker (see :class:`TaskBatch`).

        ``on_done(call)`` runs in the supervisor thread once the call has ended.
        """
        with self._lock:
            self._check_usable()
            worker = min((w for w in self._workers if w.alive), key=lambda w: w.load)
            worker.load += 1
            job_id = next(self._job_ids)
            call = TaskCall(job_id, slot, worker, first, count)
            call.on_done = on_done
            self._calls[job_id] = call
        worker.send(pickle.dumps(TaskBatch(job_id, slot, fn, items, first, star), protocol=5))
        return call

    def _check_usable(self) -> None:
        if self._stopping:
            raise PoolClosedError("the pool is closed")
        if self.broken is not None:
            raise self.broken

    def cancel(self, call: _Call) -> None:
        """Stop ``call``: workers finish their current chunk or item and reply."""
        if call.slot >= 0:
            self.control.cancel(call.slot)

    def kill_workers_of(self, call: _Call) -> None:
        """Kill the workers still running ``call`` (they are replaced)."""
        with self._lock:
            stuck = [w for w in call.waiting if w.alive]
        for worker in stuck:
            worker.process.kill()

    def release(self, paths: tuple[str, ...]) -> None:
        """Tell every worker to unmap these freed blocks."""
        if not paths:
            return
        data = pickle.dumps(Release(paths), protocol=5)
        with self._lock:
            targets = [w for w in self._workers if w.alive]
        for worker in targets:
            worker.send(data)

    # ---- the supervisor -----------------------------------------------------------------

    def _supervise(self) -> None:
        # One poll object for the pool's life (rebuilding a selector per wake-up, as
        # multiprocessing.connection.wait does, costs tens of microseconds per reply).
        poller = select.poll()
        owners: dict[int, tuple[bool, _Worker]] = {}  # fd -> (is the sentinel, worker)

        def watch(worker: _Worker) -> None:
            for fd, is_sentinel in ((worker.conn.fileno(), False), (worker.process.sentinel, True)):
                poller.register(fd, _POLL_MASK)
                owners[fd] = (is_sentinel, worker)

        def unwatch(worker: _Worker) -> None:
            for fd in [fd for fd, (_, w) in owners.items() if w is worker]:
                poller.unregister(fd)
                del owners[fd]

        poller.register(self._wakeup_r, select.POLLIN)
        with self._lock:
            for worker in self._workers:
                if worker.alive:
                    watch(worker)
        while True:
            with self._lock:
                if self._stopping and not any(w.alive for w in self._workers):
                    return
            events = poller.poll()
            ready = [owners[fd] for fd, _ in events if fd in owners]
            for is_sentinel, worker in ready:
                if not is_sentinel and worker.alive:
                    self._receive(worker)
            for is_sentinel, worker in ready:
                if is_sentinel and any(w is worker for _, w in owners.values()):
                    unwatch(worker)
                    replacement = self._on_death(worker)
                    if replacement is not None:
                        watch(replacement)
            if any(fd == self._wakeup_r for fd, _ in events):
                os.read(self._wakeup_r, 4096)

    def _receive(self, worker: _Worker) -> bool:
        """Handle one message from ``worker``; False when its pipe is closed."""
        try:
            message = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            return False  # it died; its sentinel reports it
        if isinstance(message, TaskDone):
            self._on_task_done(worker, message)
        elif isinstance(message, MapDone):
            self._on_map_done(worker, message)
        elif isinstance(message, Ready):
            worker.ready = True
            self._startup_deaths = 0
        elif isinstance(message, InitFailed):
            cause = rebuild_error(message.error, "the worker initializer")
            broken = WorkerCrashedError(
                f"worker {worker.index}'s initializer raised {message.error.type_name}: "
                f"{message.error.message}; the pool cannot run calls"
            )
            broken.__cause__ = cause
            with self._lock:
                self.broken = broken
                finished = self._fail_all(broken)
            self._notify(finished)
        return True

    def _on_map_done(self, worker: _Worker, reply: MapDone) -> None:
        with self._lock:
            call = self._calls.get(reply.job_id)
            if not isinstance(call, MapCall) or worker not in call.waiting:
                return
            call.waiting.discard(worker)
            call.replies.append(reply)
            call.chunks_run += reply.chunks_run
            if reply.error is not None:
                call.errors.append(reply.error)
            finished = self._maybe_finish(call)
        self._notify(finished)

    def _on_task_done(self, worker: _Worker, reply: TaskDone) -> None:
        with self._lock:
            call = self._calls.get(reply.job_id)
            if not isinstance(call, TaskCall) or worker not in call.waiting:
                return
            worker.load -= 1
            call.waiting.discard(worker)
            call.reply = reply
            finished = self._maybe_finish(call)
        self._notify(finished)

    @staticmethod
    def _notify(calls: list[_Call]) -> None:
        # Outside the lock: a callback may submit more work.
        for call in calls:
            if call.on_done is not None:
                call.on_done(call)

    def _on_death(self, worker: _Worker) -> _Worker | None:
        """Fail or hand over the calls ``worker`` was in; return its replacement, if any."""
        while True:  # replies it sent before dying still count
            try:
                if not worker.conn.poll():
                    break
            except (EOFError, OSError):
                break
            if not self._receive(worker):
                break
        worker.process.join(timeout=1.0)
        exitcode = worker.process.exitcode
        finished: list[_Call] = []
        handover: list[MapCall] = []
        replacement = None
        with self._lock:
            worker.alive = False
            worker.conn.close()
            affected = [c for c in self._calls.values() if worker in c.waiting]
            for call in affected:
                call.waiting.discard(worker)
            if not (self._stopping or self.broken is not None):
                if not worker.ready:
                    self._startup_deaths += 1
                if self._startup_deaths >= MAX_STARTUP_DEATHS:
                    self.broken = WorkerCrashedError(
                        f"{MAX_STARTUP_DEATHS} workers in a row died while starting up; the last "
                        f"{describe_exit(exitcode)}",
                        exitcode=exitcode,
                    )
                else:
                    replacement = self._workers[worker.index] = self._start_worker(worker.index)
            for call in affected:
                if (
                    replacement is not None
                    and isinstance(call, MapCall)
                    and call.failure is None
                    and not self.control.worked_on(call.slot, worker.index)
                ):
                    # It died before touching this map (idle, or still starting): nothing
                    # was lost, so its replacement takes its place in the map.
                    call.waiting.add(replacement)
                    handover.append(call)
                    continue
                if call.failure is None:
                    call.failure = self._death_error(worker, exitcode, call)
                if isinstance(call, MapCall):
                    self.control.cancel(call.slot)  # an imap cancels itself, in order
                finished += self._maybe_finish(call)
            if self.broken is not None:
                finished += self._fail_all(self.broken)
        for call in handover:
            assert replacement is not None
            replacement.send(call.job)
        self._notify(finished)
        return replacement

    def _death_error(self, worker: _Worker, exitcode: int | None, call: _Call) -> BaseException:
        if self._killing:
            return PoolClosedError("the pool was terminated while this call was running")
        running = self.control.current_chunk(call.slot, worker.index) if call.slot >= 0 else None
        if isinstance(call, MapCall):
            where = f"while running chunk {running}" if running is not None else "between chunks"
            what = f"of a map of {call.total} chunks"
        else:
            where = f"while running item {running}" if running is not None else "while running a task"
            what = ""
        return WorkerCrashedError(
            f"worker {worker.index} (pid {worker.process.pid}) {describe_exit(exitcode)} {where}"
            f"{' ' + what if what else ''}; the pool replaced it",
            exitcode=exitcode,
            chunk=running,
        )

    def _maybe_finish(self, call: _Call) -> list[_Call]:
        """End ``call`` if nobody owes it a reply; the calls to notify. Lock held."""
        if call.waiting or call.done.is_set():
            return []
        if isinstance(call, MapCall):
            if call.failure is None and not call.errors and call.chunks_run < call.total:
                # Every worker replied but chunks were left: only a cancelled map does that.
                call.failure = PoolClosedError("the map was cancelled")
            self._free_slots.append(call.slot)
            self._slot_freed.notify()
        del self._calls[call.job_id]
        call.done.set()
        return [call]

    def _fail_all(self, error: BaseException) -> list[_Call]:
        """Fail every call in flight: a broken pool can finish nothing. Lock held."""
        finished: list[_Call] = []
        for call in list(self._calls.values()):
            if call.failure is None:
                call.failure = error
            if call.slot >= 0:
                self.control.cancel(call.slot)
            for worker in call.waiting:
                if isinstance(call, TaskCall):
                    worker.load -= 1
            call.waiting.clear()
            finished += self._maybe_finish(call)
        self._slot_freed.notify_all()
        return finished

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wakeup_w, b"x")

    # ---- shutdown -----------------------------------------------------------------------

    def shutdown(self, *, kill: bool) -> None:
        """Stop the workers: after the calls in flight (``kill=False``) or at once.

        Called once per pool (the pool's state machine sees to that).
        """
        with self._lock:
            self._stopping = True
            self._killing = kill
            calls = list(self._calls.values())
            workers = list(self._workers)
            self._slot_freed.notify_all()
        if kill:
            for call in calls:
                self.cancel(call)
            for w in workers:
                w.process.kill()
        else:
            for call in calls:
                call.done.wait()
            stop = pickle.dumps(Stop(), protocol=5)
            for w in workers:
                w.send(stop)
        for w in workers:
            w.process.join(timeout=JOIN_TIMEOUT_S)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(timeout=JOIN_TIMEOUT_S)
        with self._lock:
            for w in workers:
                w.alive = False
            finished = self._fail_all(PoolClosedError("the pool was shut down before this call finished"))
        self._notify(finished)
        self._wake()
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=JOIN_TIMEOUT_S)
        for w in workers:
            w.conn.close()
        if not self._supervisor.is_alive():
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
