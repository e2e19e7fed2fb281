"""Dispatch: starting workers, sending them work, collecting replies, noticing deaths.

::

    caller threads                 supervisor thread                 worker i (persistent)
    --------------                 -----------------                 ---------------------
    map(): stage arrays, pickle
      kernel + args ONCE
    submit_map(): register the
      call; bind a free control
      slot, or queue the call ───┐  (a queued call starts when a
      send ONE MapJob per worker ┼── slot frees) ── pipe i ────────▶ recv MapJob
                                 │                                   mark the slot "preparing",
                                 │                                   unpickle kernel and args;
      control block (shared memory): next-chunk counter ◀──────────  claim chunks: fcntl lock on
                                     cancel flag        ──────────▶  the slot, advance counter;
      progress bar reads ◀────────── done / current chunk ◀────────  checked before each chunk
                                 │                                   kernel(*views, **kwargs)
                                 └─▶ poll(pipes + pidfds) ◀────────  ONE MapDone per map
                                     route reply to its call
      call.done.wait() ◀──────────── last reply (or death) completes
                                     the call, frees its slot,
                                     starts queued calls
      helper threads ◀────────────── on_done callbacks and sends the
      (run callbacks, flush sends)   supervisor must not block on
                                     pidfd fired: fail the calls
                                     the worker was in, start a new one

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
- Calls name their control slot by a *handle* that is never reused (``call.slot``, the
  value of :meth:`Dispatcher.acquire_slot`); the dispatcher binds a handle to one of the
  ``MAX_SLOTS`` real slots only while work of it is in flight, and queues work when none
  is free. So any number of maps, imaps and futures may be open, a stale handle can never
  touch another call's slot, and :attr:`Dispatcher.control` (which takes handles) is safe
  to use after the pool is gone.
- A call completes when every worker it was sent to has replied or died. The first kernel
  error or death cancels the slot, so the others stop after their current chunk.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pickle
import select
import signal
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from ._control import MAX_SLOTS, ControlBlock
from ._lifeline import forget_in_forked_children
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, RemoteError, Stop, TaskBatch, TaskDone
from ._remote import rebuild_error
from ._worker import worker_main
from .errors import PoolClosedError, WorkerCrashedError

__all__ = ["Dispatcher", "MapCall", "SlotControl", "TaskCall"]

_POLL_MASK = select.POLLIN | select.POLLHUP | select.POLLERR

# How long close() waits for a worker to leave after Stop before it is killed.
JOIN_TIMEOUT_S = 5.0

# Workers dying before they are ready, this many times in a row, break the pool instead of
# being replaced again: a worker that cannot start (a bad import under spawn) would loop.
MAX_STARTUP_DEATHS = 3

# A map whose worker dies before it started on the map (it never read the job: it died
# idle, starting up, or on an earlier message) loses nothing, so the worker's replacement
# takes its place in the map. Each worker position of a map is handed over at most this
# many times; one more death there fails the map with WorkerCrashedError. Without a bound,
# a death that repeats (whatever kills a worker before it reads the job kills the next one
# too) would hand the map over forever and the caller would wait forever.
MAX_HANDOVERS = 2

# How long after its death a worker's exit status is waited for (forkserver reports it
# through the server a moment after the pidfd fires).
EXIT_STATUS_WAIT_S = 1.0

# A helper thread with nothing to do for this long exits; the next callback starts one.
HELPER_IDLE_S = 2.0


class _Helpers:
    """Threads that run what the supervisor must not: ``on_done`` callbacks (user code,
    which may block or submit) and flushes of outboxes (sends, which block on a full pipe).

    Elastic: an item that finds no idle thread starts a new one, so a callback that blocks
    (waiting for another future of the same pool) never holds up the callbacks that would
    release it. Idle threads exit after ``HELPER_IDLE_S``, or at once after :meth:`close`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Callable[[], None]] = collections.deque()
        self._idle = 0
        self._closed = False
        self._threads: set[threading.Thread] = set()

    def post(self, item: Callable[[], None]) -> None:
        with self._cond:
            self._items.append(item)
            if self._idle >= len(self._items):
                self._cond.notify()
                return
            thread = threading.Thread(target=self._serve, name="shmpool-helper", daemon=True)
            self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._items:
                    if self._closed:
                        self._threads.discard(me)
                        return
                    self._idle += 1
                    woken = self._cond.wait(HELPER_IDLE_S)
                    self._idle -= 1
                    if not woken and not self._items:
                        self._threads.discard(me)
                        return
                item = self._items.popleft()
            try:
                item()
            except Exception:  # a callback's bug must not kill the thread serving others
                pass

    def close(self, timeout: float) -> None:
        """Let the threads exit once nothing is left; wait for them (but not for the
        calling thread, when it is one of them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(timeout)


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection):
        self.index = index
        self.process = process
        self.conn = conn
        self.send_lock = threading.Lock()  # one message on the pipe at a time
        self.box_lock = threading.Lock()  # guards ready, outbox and flushing
        self.outbox: collections.deque[bytes] = collections.deque()
        self.flushing = False
        self.alive = True
        self.ready = False
        self.load = 0  # task batches sent and not yet answered

    def write(self, data: bytes) -> None:
        """Send ``data`` now; a dead worker is reported by its death watch, not here."""
        with self.send_lock, contextlib.suppress(OSError, ValueError):
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


class _Handle:
    """A control slot as callers see it: a number never reused, bound to a real slot of
    the control block only while work of it is in flight."""

    def __init__(self, number: int):
        self.number = number
        self.real = -1  # the bound slot of the control block, -1 while unbound
        self.users = 0  # calls in flight on ``real``
        self.cancelled = False
        self.released = False  # release_slot() was called; forget it once unused
        self.queued: list[TaskCall] = []  # batches waiting for a slot


class _Call:
    """Work in flight: the workers that still owe a reply, and how it ended."""

    def __init__(self, job_id: int, handle: _Handle | None, workers: set[_Worker]):
        self.job_id = job_id
        self.handle = handle
        self.slot = -1 if handle is None else handle.number  # the handle, -1 for none
        self.real = -1  # the control slot it runs in, once started
        self.started = False
        self.killed = False  # kill_workers_of() was called: never hand it over
        self.waiting = workers
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.on_done: Callable[[_Call], None] | None = None


class MapCall(_Call):
    """One map: sent to every worker, done when each has replied or died."""

    def __init__(self, job_id: int, handle: _Handle, total: int, factory: Callable[[int, int], MapJob]):
        super().__init__(job_id, handle, set())
        self.total = total
        self.factory = factory  # builds the MapJob once the call has a real slot
        self.job = b""  # the pickled MapJob, resent to a worker that replaces an idle one
        self.replies: list[MapDone] = []
        self.errors: list[RemoteError] = []
        self.chunks_run = 0
        self.handovers: dict[int, int] = {}  # worker index -> times handed over


class TaskCall(_Call):
    """One batch of calls (a ``submit``, or ``imap`` items from ``first``) on one worker."""

    def __init__(
        self, job_id: int, handle: _Handle | None, fn: bytes, items: bytes, first: int, count: int, star: bool
    ):
        super().__init__(job_id, handle, set())
        self.fn = fn
        self.items = items
        self.first = first
        self.count = count
        self.star = star
        self.reply: TaskDone | None = None


class SlotControl:
    """The control block as callers see it, addressed by handle (``call.slot``).

    A handle that is not bound to a slot (queued, finished, released, or the pool gone)
    reads as nothing done and ignores a cancel beyond remembering it, so no caller can
    reach another call's slot or a control block that was released.
    """

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher

    def cancel(self, slot: int) -> None:
        """Cancel the work of handle ``slot``: unstarted chunks and items are skipped."""
        self._dispatcher._cancel_handle(slot)

    def cancelled(self, slot: int) -> bool:
        """Whether handle ``slot`` was cancelled."""
        with self._dispatcher._lock:
            handle = self._dispatcher._handles.get(slot)
            return handle is not None and handle.cancelled

    def chunks_done(self, slot: int) -> int:
        """Chunks finished so far by the map of handle ``slot`` (0 unless it is running)."""
        with self._dispatcher._lock:
            handle = self._dispatcher._handles.get(slot)
            if handle is None or handle.real < 0:
                return 0
            return self._dispatcher._block.chunks_done(handle.real)


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
        self._block = control
        self.control = SlotControl(self)
        self._control_path = control_path
        self._init_payload = init_payload
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._job_ids = itertools.count()
        self._handle_numbers = itertools.count()
        self._handles: dict[int, _Handle] = {}
        self._free_slots = list(range(MAX_SLOTS))
        self._queue: collections.deque[_Call] = collections.deque()  # waiting for a slot
        self._stopping = False
        self._killing = False
        self.broken: BaseException | None = None
        self._startup_deaths = 0
        self._helpers = _Helpers()
        self._wakeup_r, self._wakeup_w = os.pipe()
        # The wake-up pipe is closed by whichever of shutdown() and the supervisor ends last.
        self._ends_left = 2
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
        forget_in_forked_children(process)
        child_conn.close()  # else the worker would never see EOF from our side
        return _Worker(index, process, parent_conn)

    @property
    def pids(self) -> list[int]:
        """PIDs of the live workers."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.alive and w.process.pid is not None]

    def _send(self, worker: _Worker, data: bytes) -> None:
        """Send ``data`` to ``worker``: now, from a caller's thread to a ready worker with
        nothing queued; else through its outbox, which a helper thread flushes once the
        worker is ready (so the supervisor, and a caller whose worker hangs in its
        initializer, never block on a pipe the worker does not read)."""
        with worker.box_lock:
            direct = worker.ready and not worker.outbox and threading.current_thread() is not self._supervisor
            flush = False
            if not direct:
                worker.outbox.append(data)
                flush = worker.ready and not worker.flushing
                worker.flushing = worker.flushing or flush
        if direct:
            worker.write(data)
        elif flush:
            self._helpers.post(lambda: self._flush(worker))

    @staticmethod
    def _flush(worker: _Worker) -> None:
        while True:
            with worker.box_lock:
                if not worker.alive:
                    worker.outbox.clear()  # nobody will read it
                if not worker.outbox:
                    worker.flushing = False
                    return
                data = worker.outbox.popleft()
            worker.write(data)

    def _sends(self, sends: list[tuple[_Worker, bytes]]) -> None:
        for worker, data in sends:
            self._send(worker, data)

    # ---- slots and handles (lock held) --------------------------------------------------

    def _new_handle(self) -> _Handle:
        handle = _Handle(next(self._handle_numbers))
        self._handles[handle.number] = handle
        return handle

    def _bind(self, handle: _Handle, total: int) -> bool:
        """Give ``handle`` a real slot if it has none; False when none is free."""
        if handle.real >= 0:
            return True
        if not self._free_slots:
            return False
        handle.real = self._free_slots.pop()
        self._block.reset(handle.real, total)
        if handle.cancelled:
            self._block.cancel(handle.real)
        return True

    def _unbind(self, call: _Call) -> None:
        """``call`` ended: give its slot back once no call of its handle uses it."""
        handle = call.handle
        if handle is None:
            return
        if call.started and call.real >= 0:
            handle.users -= 1
            if handle.users == 0:
                self._free_slots.append(handle.real)
                handle.real = -1
        # A map's handle is its own; an imap's lives until release_slot().
        if handle.users == 0 and (isinstance(call, MapCall) or handle.released):
            self._handles.pop(handle.number, None)

    def _start(self, call: _Call) -> list[tuple[_Worker, bytes]]:
        """Start ``call`` on its handle's (bound) slot; the messages to send."""
        handle = call.handle
        call.started = True
        if handle is not None:
            handle.users += 1
            call.real = handle.real
        if isinstance(call, MapCall):
            targets = [w for w in self._workers if w.alive]
            call.waiting = set(targets)
            call.job = pickle.dumps(call.factory(call.job_id, call.real), protocol=5)
            return [(w, call.job) for w in targets]
        assert isinstance(call, TaskCall)
        worker = min((w for w in self._workers if w.alive), key=lambda w: w.load)
        worker.load += 1
        call.waiting = {worker}
        batch = TaskBatch(call.job_id, call.real, call.fn, call.items, call.first, call.star)
        return [(worker, pickle.dumps(batch, protocol=5))]

    def _admit(self, call: _Call) -> list[tuple[_Worker, bytes]]:
        """Start ``call`` if a slot is at hand, else queue it."""
        handle = call.handle
        if handle is None:
            return self._start(call)
        total = call.total if isinstance(call, MapCall) else 0
        if self._bind(handle, total):
            return self._start(call)
        self._queue.append(call)
        if isinstance(call, TaskCall):
            handle.queued.append(call)
        return []

    def _serve_queue(self) -> list[tuple[_Worker, bytes]]:
        """Start queued calls while slots are free (first come, first served)."""
        sends: list[tuple[_Worker, bytes]] = []
        if self._stopping and self._killing:
            return sends
        while self._queue:
            call = self._queue[0]
            if call.started or call.done.is_set():
                self._queue.popleft()
                continue
            handle = call.handle
            assert handle is not None
            if not self._bind(handle, call.total if isinstance(call, MapCall) else 0):
                break
            self._queue.popleft()
            sends += self._start(call)
            # The other batches of an imap share the slot it just got.
            for other in handle.queued:
                if not other.started and not other.done.is_set():
                    sends += self._start(other)
            handle.queued.clear()
        return sends

    # ---- calls --------------------------------------------------------------------------

    def acquire_slot(self) -> int:
        """A handle for a stream of task batches (imap); give it back with
        :meth:`release_slot` once none of its batches is in flight. Never blocks: the
        handle takes a real slot only while its batches are in flight."""
        with self._lock:
            self._check_usable()
            return self._new_handle().number

    def release_slot(self, slot: int) -> None:
        """Forget a handle taken with :meth:`acquire_slot`."""
        with self._lock:
            handle = self._handles.get(slot)
            if handle is None:
                return
            handle.released = True
            if handle.users == 0:
                del self._handles[slot]

    def submit_map(self, job: Callable[[int, int], MapJob], total: int) -> MapCall:
        """Register a call of ``total`` chunks and send ``job(job_id, slot)`` to every worker,
        at once if a control slot is free, else when one frees. Never blocks on a slot."""
        with self._lock:
            self._check_usable()
            call = MapCall(next(self._job_ids), self._new_handle(), total, job)
            self._calls[call.job_id] = call
            sends = self._admit(call)
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
        on_done: Callable[[_Call], None] | None = None,
    ) -> TaskCall:
        """Send one batch of calls to the least busy worker (see :class:`TaskBatch`);
        ``slot`` is a handle from :meth:`acquire_slot`, or -1.

        ``on_done(call)`` runs in a helper thread once the call has ended.
        """
        with self._lock:
            self._check_usable()
            handle = self._handles.get(slot) if slot >= 0 else None
            if slot >= 0 and handle is None:
                raise ValueError(f"slot {slot} was not acquired, or was released")
            call = TaskCall(next(self._job_ids), handle, fn, items, first, count, star)
            call.on_done = on_done
            self._calls[call.job_id] = call
            sends = self._admit(call)
        self._sends(sends)
        return call

    def _check_usable(self) -> None:
        if self._stopping:
            raise PoolClosedError("the pool is closed")
        if self.broken is not None:
            raise self.broken

    def cancel(self, call: _Call) -> None:
        """Stop ``call``: workers finish their current chunk or item and reply; a call not
        started yet ends now. Only ``call`` (or the imap whose batch it is) is affected,
        whenever this is called, and it never blocks."""
        if call.done.is_set():
            return
        if call.handle is not None:
            self._cancel_handle(call.handle.number, call)

    def _cancel_handle(self, number: int, call: _Call | None = None) -> None:
        with self._lock:
            handle = self._handles.get(number)
            if handle is None or (call is not None and call.handle is not handle):
                return
            handle.cancelled = True
            if handle.real >= 0:
                self._block.cancel(handle.real)
            finished: list[_Call] = []
            waiting = [c for c in self._queue if c.handle is handle and not c.started and not c.done.is_set()]
            for queued in waiting:
                if isinstance(queued, MapCall):
                    queued.failure = PoolClosedError("the map was cancelled")
                else:
                    queued.failure = CancelledError("the call was cancelled before it started")
                finished += self._maybe_finish(queued)
        self._notify(finished)

    def kill_workers_of(self, call: _Call) -> None:
        """Kill the workers still running ``call``, started or not, ready or not (they are
        replaced); the call is never handed over to the replacements."""
        with self._lock:
            call.killed = True
            stuck = [w for w in call.waiting if w.alive]
            finished: list[_Call] = []
            if not call.started and not call.done.is_set():
                call.failure = PoolClosedError("the call was stopped before it started")
                finished = self._maybe_finish(call)
        self._notify(finished)
        for worker in stuck:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                worker.process.kill()

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
        # One poll object for the pool's life (rebuilding a selector per wake-up, as
        # multiprocessing.connection.wait does, costs tens of microseconds per reply).
        poller = select.poll()
        owners: dict[int, tuple[bool, _Worker]] = {}  # fd -> (is the death watch, worker)
        ours: dict[_Worker, int] = {}  # pidfds to close when the worker is done with

        def watch(worker: _Worker) -> None:
            death, owned = _death_watch(worker.process)
            if owned:
                ours[worker] = death
            for fd, is_death in ((worker.conn.fileno(), False), (death, True)):
                poller.register(fd, _POLL_MASK)
                owners[fd] = (is_death, worker)

        def unwatch(worker: _Worker, *, pipe_only: bool = False) -> None:
            for fd in [fd for fd, (d, w) in owners.items() if w is worker and not (pipe_only and d)]:
                poller.unregister(fd)
                del owners[fd]
            if not pipe_only and worker in ours:
                os.close(ours.pop(worker))

        poller.register(self._wakeup_r, select.POLLIN)
        with self._lock:
            for worker in self._workers:
                if worker.alive:
                    watch(worker)
        try:
            while True:
                with self._lock:
                    if self._stopping and not any(w.alive for w in self._workers):
                        return
                events = poller.poll()
                ready = [owners[fd] for fd, _ in events if fd in owners]
                for is_death, worker in ready:
                    if not is_death and worker.alive and not self._receive(worker):
                        # Its end is closed (or held by a process it forked): stop polling
                        # the pipe, which would report a hang-up forever; the death watch
                        # tells when it is gone.
                        unwatch(worker, pipe_only=True)
                for is_death, worker in ready:
                    if is_death and any(w is worker for _, w in owners.values()):
                        unwatch(worker)
                        replacement = self._on_death(worker)
                        if replacement is not None:
                            watch(replacement)
                if any(fd == self._wakeup_r for fd, _ in events):
                    os.read(self._wakeup_r, 4096)
        finally:
            for worker in list(ours):
                unwatch(worker)
            self._end_of_wakeup_pipe()

    def _receive(self, worker: _Worker) -> bool:
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
            with worker.box_lock:
                worker.ready = True
                flush = bool(worker.outbox) and not worker.flushing
                worker.flushing = worker.flushing or flush
            if flush:
                self._helpers.post(lambda: self._flush(worker))
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
            sends = self._serve_queue()
        self._notify(finished)
        self._sends(sends)

    def _on_task_done(self, worker: _Worker, reply: TaskDone) -> None:
        with self._lock:
            call = self._calls.get(reply.job_id)
            if not isinstance(call, TaskCall) or worker not in call.waiting:
                return
            worker.load -= 1
            call.waiting.discard(worker)
            call.reply = reply
            finished = self._maybe_finish(call)
            sends = self._serve_queue()
        self._notify(finished)
        self._sends(sends)

    def _notify(self, calls: list[_Call]) -> None:
        # On a helper thread, never here: a callback is user code, which may submit (and
        # block on a full pipe), wait for another call, or terminate the pool.
        for call in calls:
            on_done = call.on_done
            if on_done is not None:
                self._helpers.post(lambda on_done=on_done, call=call: on_done(call))  # type: ignore[misc]

    def _exit_status(self, worker: _Worker) -> int | None:
        # After the pidfd fired a child's status is there at once (exitcode reaps it);
        # forkserver sends it a moment later. Joining on the sentinel first would wait
        # for any process the worker forked that still holds it.
        process = worker.process
        with contextlib.suppress(OSError, ValueError):
            if process.exitcode is None:
                process.join(timeout=EXIT_STATUS_WAIT_S)
            return process.exitcode
        return None

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
        exitcode = self._exit_status(worker)
        finished: list[_Call] = []
        handover: list[MapCall] = []
        replacement = None
        with self._lock:
            with worker.box_lock:
                worker.alive = False
                worker.outbox.clear()
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
                    and not call.killed
                    and not self._block.cancelled(call.real)
                    and not self._block.worked_on(call.real, worker.index)
                    and call.handovers.get(worker.index, 0) < MAX_HANDOVERS
                ):
                    # It died before touching this map (idle, or still starting): nothing
                    # was lost, so its replacement takes its place in the map.
                    call.handovers[worker.index] = call.handovers.get(worker.index, 0) + 1
                    call.waiting.add(replacement)
                    handover.append(call)
                    continue
                if call.failure is None:
                    call.failure = self._death_error(worker, exitcode, call)
                if isinstance(call, MapCall):
                    self._block.cancel(call.real)  # an imap cancels itself, in order
                finished += self._maybe_finish(call)
            if self.broken is not None:
                finished += self._fail_all(self.broken)
            sends = self._serve_queue()
        for call in handover:
            assert replacement is not None
            self._send(replacement, call.job)
        self._notify(finished)
        self._sends(sends)
        return replacement

    def _death_error(self, worker: _Worker, exitcode: int | None, call: _Call) -> BaseException:
        if self._killing:
            return PoolClosedError("the pool was terminated while this call was running")
        real = call.real
        running = self._block.current_chunk(real, worker.index) if real >= 0 else None
        preparing = real >= 0 and self._block.preparing(real, worker.index)
        if isinstance(call, MapCall):
            if running is not None:
                where = f"while running chunk {running}"
            elif preparing:
                where = "while unpickling the map's kernel or arguments"
            elif call.handovers.get(worker.index, 0) >= MAX_HANDOVERS:
                where = f"before starting on the map, after it was handed over {MAX_HANDOVERS} times"
            else:
                where = "between chunks"
            what = f"of a map of {call.total} chunks" if not preparing else f"(a map of {call.total} chunks)"
        else:
            if running is not None:
                where = f"while running item {running}"
            elif preparing:
                where = "while unpickling a task's function or arguments"
            else:
                where = "while running a task"
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
        if (
            isinstance(call, MapCall)
            and call.failure is None
            and not call.errors
            and call.chunks_run < call.total
        ):
            # Every worker replied but chunks were left: only a cancelled map does that.
            call.failure = PoolClosedError("the map was cancelled")
        self._unbind(call)
        self._calls.pop(call.job_id, None)
        call.done.set()
        return [call]

    def _fail_all(self, error: BaseException) -> list[_Call]:
        """Fail every call in flight or queued: a broken pool can finish nothing. Lock held."""
        finished: list[_Call] = []
        for call in list(self._calls.values()):
            if call.failure is None:
                call.failure = error
            if call.real >= 0 and call.started:
                self._block.cancel(call.real)
            for worker in call.waiting:
                if isinstance(call, TaskCall):
                    worker.load -= 1
            call.waiting.clear()
            finished += self._maybe_finish(call)
        self._queue.clear()
        return finished

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wakeup_w, b"x")

    def _end_of_wakeup_pipe(self) -> None:
        with self._lock:
            self._ends_left -= 1
            last = self._ends_left == 0
        if last:
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)

    # ---- shutdown -----------------------------------------------------------------------

    def shutdown(self, *, kill: bool) -> None:
        """Stop the workers: after the calls in flight and queued (``kill=False``) or at
        once. Safe from any thread, a helper running a callback included.

        Called once per pool (the pool's state machine sees to that).
        """
        with self._lock:
            self._stopping = True
            self._killing = kill
            calls = list(self._calls.values())
            workers = list(self._workers)
            if kill:
                for call in calls:
                    if call.started and call.real >= 0:
                        self._block.cancel(call.real)
        if kill:
            for w in workers:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    w.process.kill()
        else:
            for call in calls:
                call.done.wait()
            stop = pickle.dumps(Stop(), protocol=5)
            with self._lock:
                workers = list(self._workers)  # replacements started meanwhile
            for w in workers:
                self._send(w, stop)
        for w in workers:
            w.process.join(timeout=JOIN_TIMEOUT_S)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(timeout=JOIN_TIMEOUT_S)
            # Once more now that the status is known: a join that raced the supervisor's
            # reaping (Popen.poll is not thread-safe; the loser's waitpid gets ECHILD and
            # returns None) leaves the process, and its pipes, in multiprocessing's set of
            # children until some later start.
            with contextlib.suppress(OSError, ValueError):
                w.process.join(timeout=0)
        with self._lock:
            for w in workers:
                with w.box_lock:
                    w.alive = False
                    w.outbox.clear()
            finished = self._fail_all(PoolClosedError("the pool was shut down before this call finished"))
        self._notify(finished)
        self._wake()
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=JOIN_TIMEOUT_S)
        for w in workers:
            w.conn.close()
        self._helpers.close(JOIN_TIMEOUT_S)
        self._end_of_wakeup_pipe()
