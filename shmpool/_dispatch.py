"""Dispatch: starting workers, sending them work, collecting replies, noticing deaths.

The map of the whole dispatch; ``[module]`` names the module that owns each step::

    caller threads                 supervisor thread                 worker i (persistent)
    --------------                 -----------------                 ---------------------
    map(): stage arrays, pickle
      kernel + args ONCE
    submit_map(): register the
      call [_book]; bind a free
      control slot, or queue the
      call [_slots] ─────────────┐  (a queued call starts when a
      send ONE MapJob per worker ┼── slot frees) ── pipe i ────────▶ recv MapJob
      [_workerproc: outbox]      │
                                 │                                   mark the slot "preparing",
                                 │                                   unpickle kernel and args;
      control block (shared memory): next-chunk counter ◀──────────  claim chunks: fcntl lock on
                                     cancel flag        ──────────▶  the slot, advance counter;
      bar, crash reports ◀────────── per-worker words: done, ◀─────  checked before each chunk
      and chunk_timeout read     │   current chunk, claimed run,     kernel(*views, **kwargs);
                                 │   indices (advance), start time   it may call advance()
                                 └─▶ poll(pipes + pidfds) ◀────────  ONE MapDone per map
                                     [_workerproc.Watcher]
                                     route reply to its call
      call.done.wait() ◀──────────── last reply (or death) completes
                                     the call [_book], frees its
                                     slot, starts queued calls
      helper threads ◀────────────── on_done callbacks and sends the
      (run callbacks, flush sends)   supervisor must not block on
      [_helpers]                     pidfd fired: hand over or fail the
                                     calls the worker was in [_book],
                                     start a new one [_workerproc];
                                     with retries, send it the lost
                                     chunks [_retries]

Where each part lives (each docstring says more; none imports this module): here, the
:class:`Dispatcher` (entry points, supervisor loop, shutdown), whose lock guards the first two:

- ``_book``: :class:`~shmpool._book.CallBook`, the calls in flight by job id: how a call
  starts (on which workers, with which message), how it ends (every reply in, cancelled,
  failed), and what a worker's death does to it (handed over, or WorkerCrashedError).
- ``_slots``: handles bound to the control block's ``MAX_SLOTS`` real slots, the queue
  of calls waiting for one, and :class:`SlotControl` (:attr:`Dispatcher.control`).
- ``_dispatch_calls``: the records: :class:`MapCall`, :class:`TaskCall` and their slot handle.
- ``_retries``: which chunks a dead worker lost, and when a chunk has no retry left.
- ``_workerproc``: the parent's side of a worker: process, pipe, outbox, death watch, poll.
- ``_helpers``: the helper threads (``on_done`` callbacks, outbox flushes).

- Caller threads never read pipes; they register a call, send, and wait on its event.
  Each pipe has a send lock, so several threads may run maps at once.
- The supervisor is the only reader of the pipes and the only one that reaps workers; it
  waits in one ``select.poll`` (kept for the pool's life), never sleeps and never blocks
  on anything but that poll: it sends nothing itself (sends it causes, and sends to a
  worker that is not ready yet, wait in the worker's outbox for a helper thread) and runs
  no callback (``on_done`` runs on a helper thread, so a callback may submit, wait or
  terminate the pool).
- A worker's death is watched through a pidfd (Linux), which only that process's exit can
  fire; multiprocessing's sentinel, the fallback, is a pipe end that processes forked by a
  kernel inherit and keep open.
- Calls name their control slot by a *handle* never reused (``call.slot``), bound to a real
  slot only while work of it is in flight (``_slots``), so a stale handle touches nothing.
- A call completes when every worker it was sent to has replied or died. The first kernel
  error or death (without retries left) cancels the slot; the others stop after their chunk.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext

from ._book import CallBook
from ._control import ControlBlock
from ._dispatch_calls import Call, MapCall, TaskCall
from ._helpers import Helpers
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, Stop, TaskDone
from ._remote import initializer_failed
from ._retries import RetryState
from ._signal_mask import start_quietly
from ._slots import SlotControl, SlotTable
from ._workerproc import (
    WakeupPipe,
    Watcher,
    Worker,
    describe_exit,
    kill_processes,
    reap_processes,
    start_worker,
)
from .errors import PoolClosedError, WorkerCrashedError

__all__ = ["Dispatcher", "MapCall", "SlotControl", "TaskCall"]

# How long close() waits for a worker to leave after Stop before it is killed.
JOIN_TIMEOUT_S = 5.0

# Workers dying before they are ready, this many times in a row, break the pool instead of
# being replaced again: a worker that cannot start (a bad import under spawn) would loop.
MAX_STARTUP_DEATHS = 3


class Dispatcher:
    """Owns the workers and the supervisor thread of one pool."""

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        control: ControlBlock,
        control_path: str,
        init_payload: bytes | None,
        worker_env: dict[str, str] | None = None,
    ):
        self._ctx = ctx
        self._block = control
        # What every worker start needs besides its index (the first workers and replacements).
        self._start_args = (workers, control_path, init_payload, worker_env)
        self._lock = threading.Lock()
        self._slots = SlotTable(control)  # handles, real slots and the queue; under _lock
        self._workers: list[Worker] = []  # changed in place only: the book holds it too
        self._book = CallBook(self._slots, self._workers)  # calls in flight and queued; under _lock
        self.control = SlotControl(self._slots, self._lock, self._cancel_handle)
        self._job_ids = itertools.count()
        self._stopping = False
        self._killing = False
        self.broken: BaseException | None = None
        self._startup_deaths = 0
        self._helpers = Helpers()
        self._wakeup = WakeupPipe()
        self._workers.extend(self._start_worker(i) for i in range(workers))
        self._supervisor = threading.Thread(target=self._supervise, name="shmpool-supervisor", daemon=True)
        start_quietly(self._supervisor)

    # ---- workers ------------------------------------------------------------------------

    def _start_worker(self, index: int) -> Worker:
        return start_worker(self._ctx, index, *self._start_args)

    @property
    def pids(self) -> list[int]:
        """PIDs of the live workers."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.alive and w.process.pid is not None]

    def _send(self, worker: Worker, data: bytes) -> None:
        """Send ``data`` to ``worker``: now, from a caller's thread to a ready worker with
        nothing queued; else through its outbox, which a helper thread flushes once the
        worker is ready (so the supervisor, and a caller whose worker hangs in its
        initializer, never block on a pipe the worker does not read)."""
        worker.send(data, self._helpers, may_block=threading.get_ident() != self._supervisor.ident)

    def _sends(self, sends: list[tuple[Worker, bytes]]) -> None:
        if not sends:  # the common case on a reply: nothing was queued
            return
        for worker, data in sends:
            self._send(worker, data)

    # ---- calls --------------------------------------------------------------------------

    def acquire_slot(self) -> int:
        """A handle for a stream of task batches (imap); give it back with
        :meth:`release_slot` once none of its batches is in flight. Never blocks: the
        handle takes a real slot only while its batches are in flight."""
        with self._lock:
            self._check_usable()
            return self._slots.new_handle().number

    def release_slot(self, slot: int) -> None:
        """Forget a handle taken with :meth:`acquire_slot`."""
        with self._lock:
            self._slots.release(slot)

    def submit_map(self, job: Callable[[int, int], MapJob], total: int, retry: RetryState) -> MapCall:
        """Register a call of ``total`` chunks and send ``job(job_id, slot)`` to every worker,
        at once if a control slot is free, else when one frees. Never blocks on a slot."""
        with self._lock:
            self._check_usable()
            call = MapCall(next(self._job_ids), self._slots.new_handle(), total, job, retry)
            sends = self._book.admit(call)
        self._sends(sends)
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
        on_done: Callable[[Call], None] | None = None,
        inline: bool = False,
        retries: int = 0,
    ) -> TaskCall:
        """Send one batch of calls to the least busy worker (see :class:`TaskBatch`);
        ``slot`` is a handle from :meth:`acquire_slot`, or -1.

        ``on_done(call)`` runs in a helper thread once the call has ended; with ``inline``,
        on the supervisor thread itself, which saves a thread hand-off per batch: only for
        a callback that hands the call on and returns (never user code, never a wait).
        """
        with self._lock:
            self._check_usable()
            handle = self._slots.get(slot) if slot >= 0 else None
            if slot >= 0 and handle is None:
                raise ValueError(f"slot {slot} was not acquired, or was released")
            call = TaskCall(next(self._job_ids), handle, fn, items, first, count, star, retries)
            call.on_done = on_done
            call.inline_done = inline
            sends = self._book.admit(call)
        self._sends(sends)
        return call

    def _check_usable(self) -> None:
        if self._stopping:
            raise PoolClosedError("the pool is closed")
        if self.broken is not None:
            raise self.broken

    def _serve_queue(self) -> list[tuple[Worker, bytes]]:
        """Start queued calls while slots are free (first come, first served). Lock held."""
        if not self._slots.queued or (self._stopping and self._killing):
            return []
        return self._book.serve_queue()

    def cancel(self, call: Call) -> None:
        """Stop ``call``: workers finish their current chunk or item and reply; a call not
        started yet ends now. Only ``call`` (or the imap whose batch it is) is affected,
        whenever this is called, and it never blocks."""
        if call.done.is_set():
            return
        if call.handle is not None:
            self._cancel_handle(call.handle.number, call)

    def _cancel_handle(self, number: int, call: Call | None = None) -> None:
        with self._lock:
            handle = self._slots.get(number)
            if handle is None or (call is not None and call.handle is not handle):
                return
            finished = self._book.cancel(handle)
        self._notify(finished)

    def kill_workers_of(self, call: Call) -> None:
        """Kill the workers still running ``call``, started or not, ready or not (they are
        replaced); the call is never handed over to the replacements."""
        with self._lock:
            call.killed = True
            stuck = [w for w in call.waiting if w.alive]
            finished: list[Call] = []
            if not call.started and not call.done.is_set():
                call.failure = PoolClosedError("the call was stopped before it started")
                finished = self._book.maybe_finish(call)
        self._notify(finished)
        kill_processes(stuck)

    def stop_overdue(self, call: MapCall, limit: float) -> None:
        """Kill the workers whose chunk of ``call`` has run over ``limit`` s (a crash)."""
        with self._lock:
            stuck = self._book.overdue(call, limit)
        kill_processes(stuck)

    def release(self, paths: tuple[str, ...]) -> None:
        """Tell every worker to unmap these freed blocks."""
        if not paths:
            return
        data = pickle.dumps(Release(paths), protocol=5)
        with self._lock:
            targets = [w for w in self._workers if w.alive]
        for worker in targets:
            self._send(worker, data)

    # ---- the supervisor -----------------------------------------------------------------

    def _supervise(self) -> None:
        watcher = Watcher(self._wakeup.read_fd)
        with self._lock:
            for worker in self._workers:
                if worker.alive:
                    watcher.watch(worker)
        try:
            while True:
                with self._lock:
                    if self._stopping and not any(w.alive for w in self._workers):
                        return
                ready, woken = watcher.poll()
                for is_death, worker in ready:
                    if not is_death and worker.alive and not self._receive(worker):
                        # Its end is closed (or held by a process it forked): stop polling
                        # the pipe, which would report a hang-up forever; the death watch
                        # tells when it is gone.
                        watcher.unwatch(worker, pipe_only=True)
                for is_death, worker in ready:
                    if is_death and watcher.watching(worker):
                        watcher.unwatch(worker)
                        replacement = self._on_death(worker)
                        if replacement is not None:
                            watcher.watch(replacement)
                if woken:
                    self._wakeup.drain()
        finally:
            watcher.close()
            self._wakeup.end_of_user()

    def _receive(self, worker: Worker) -> bool:
        """Handle one message from ``worker``; False when its pipe is closed."""
        try:
            message = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            return False  # it died; its death watch reports it
        if isinstance(message, TaskDone):
            self._on_task_done(worker, message)
        elif isinstance(message, MapDone):
            self._on_map_done(worker, message)
        elif isinstance(message, Ready):
            worker.set_ready(self._helpers)
            self._startup_deaths = 0
        elif isinstance(message, InitFailed):
            broken = initializer_failed(worker.index, message.error)
            with self._lock:
                self.broken = broken
                finished = self._book.fail_all(broken)
            self._notify(finished)
        return True

    def _on_map_done(self, worker: Worker, reply: MapDone) -> None:
        with self._lock:
            call = self._book.calls.get(reply.job_id)
            if not isinstance(call, MapCall) or worker not in call.waiting:
                return
            call.waiting.discard(worker)
            call.replies.append(reply)
            call.chunks_run += reply.chunks_run
            if reply.error is not None:
                call.errors.append(reply.error)
            finished = self._book.maybe_finish(call)
            sends = self._serve_queue()
        self._notify(finished)
        self._sends(sends)

    def _on_task_done(self, worker: Worker, reply: TaskDone) -> None:
        with self._lock:
            call = self._book.calls.get(reply.job_id)
            if not isinstance(call, TaskCall) or worker not in call.waiting:
                return
            worker.load -= 1
            call.waiting.discard(worker)
            call.reply = reply
            finished = self._book.maybe_finish(call)
            sends = self._serve_queue()
        self._notify(finished)
        self._sends(sends)

    def _notify(self, calls: list[Call]) -> None:
        # On a helper thread, not here: a callback may be user code, which may submit (and
        # block on a full pipe), wait for another call, or terminate the pool. Only a
        # callback marked inline (the front end's hand-off to a queue) runs here.
        for call in calls:
            on_done = call.on_done
            if on_done is None:
                continue
            if call.inline_done:
                on_done(call)
            else:
                self._helpers.post(lambda on_done=on_done, call=call: on_done(call))  # type: ignore[misc]

    def _on_death(self, worker: Worker) -> Worker | None:
        """Fail or hand over the calls ``worker`` was in; return its replacement, if any."""
        while True:  # replies it sent before dying still count
            try:
                if not worker.conn.poll():
                    break
            except (EOFError, OSError):
                break
            if not self._receive(worker):
                break
        exitcode = worker.exit_status()
        replacement = None
        with self._lock:
            worker.mark_dead()
            worker.close()
            affected = self._book.owed_by(worker)
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
            finished, handover = self._book.after_death(
                worker, exitcode, affected, replacement, self._killing
            )
            if self.broken is not None:
                finished += self._book.fail_all(self.broken)
            sends = self._serve_queue()
        for _, job in handover:
            assert replacement is not None
            self._send(replacement, job)
        self._notify(finished)
        self._sends(sends)
        return replacement

    # ---- shutdown -----------------------------------------------------------------------

    def shutdown(self, *, kill: bool) -> None:
        """Stop the workers: after the calls in flight and queued (``kill=False``) or at
        once. Safe from any thread, a helper running a callback included.

        Called once per pool (the pool's state machine sees to that).
        """
        with self._lock:
            self._stopping = True
            self._killing = kill
            calls = list(self._book.calls.values())
            workers = list(self._workers)
            if kill:
                for call in calls:
                    if call.started and call.real >= 0:
                        self._block.cancel(call.real)
        if kill:
            kill_processes(workers)
        else:
            for call in calls:
                call.done.wait()
            stop = pickle.dumps(Stop(), protocol=5)
            with self._lock:
                workers = list(self._workers)  # replacements started meanwhile
            for w in workers:
                self._send(w, stop)
        reap_processes(workers, JOIN_TIMEOUT_S)
        with self._lock:
            for w in workers:
                w.mark_dead()
            finished = self._book.fail_all(
                PoolClosedError("the pool was shut down before this call finished")
            )
        self._notify(finished)
        self._wakeup.wake()
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=JOIN_TIMEOUT_S)
        for w in workers:
            w.close()
        self._helpers.close(JOIN_TIMEOUT_S)
        self._wakeup.end_of_user()
