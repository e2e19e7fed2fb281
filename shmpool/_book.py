"""The book of calls: which calls are in flight, how each starts, and how each ends.

:class:`CallBook` holds the calls the dispatcher registered and applies the rules by which
they start (on a bound control slot: a map on every live worker, a task batch on the least
busy one) and end (every worker replied or died; a death before a map was touched hands
the map over to the replacement, any other fails it with an error that says where the
worker was). It does no I/O and runs no thread: it returns what to send and which calls
to notify, and :mod:`shmpool._dispatch`, whose lock guards it, sends and notifies.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from concurrent.futures import CancelledError

from ._dispatch_calls import Call, Handle, MapCall, TaskCall
from ._protocol import TaskBatch
from ._retries import settle_death
from ._slots import SlotTable
from ._workerproc import Worker, describe_exit
from .errors import PoolClosedError, WorkerCrashedError

__all__ = ["MAX_HANDOVERS", "CallBook"]

# A map whose worker dies before it started on the map (it never read the job: it died
# idle, starting up, or on an earlier message) loses nothing, so the worker's replacement
# takes its place in the map. Each worker position of a map is handed over at most this
# many times; one more death there fails the map with WorkerCrashedError. Without a bound,
# a death that repeats (whatever kills a worker before it reads the job kills the next one
# too) would hand the map over forever and the caller would wait forever.
MAX_HANDOVERS = 2


class CallBook:
    """The calls in flight or queued, by job id, and the slots they run in.

    Not thread-safe by itself: every method is called with the dispatcher's lock held.
    """

    def __init__(self, slots: SlotTable, workers: list[Worker]):
        self._slots = slots
        self._block = slots.block
        # The dispatcher's list, which it changes in place (a replacement takes its
        # predecessor's index), so the book always starts calls on the current workers.
        self._workers = workers
        self.calls: dict[int, Call] = {}  # job id -> call, from submit until it ends

    # ---- starting -----------------------------------------------------------------------

    def _start(self, call: Call) -> list[tuple[Worker, bytes]]:
        """Start ``call`` on its handle's (bound) slot; the messages to send."""
        workers = self._workers
        handle = call.handle
        call.started = True
        if handle is not None:
            handle.users += 1
            call.real = handle.real
        if isinstance(call, MapCall):
            targets = [w for w in workers if w.alive]
            call.waiting = set(targets)
            call.record = call.factory(call.job_id, call.real)
            call.job = pickle.dumps(call.record, protocol=5)
            return [(w, call.job) for w in targets]
        assert isinstance(call, TaskCall)
        # The least busy live worker (a loop: this runs once per batch, min() with a key
        # and a generator costs several calls more).
        worker = None
        for candidate in workers:
            if candidate.alive and (worker is None or candidate.load < worker.load):
                worker = candidate
        assert worker is not None, "a call starts only while a worker is alive"
        worker.load += 1
        call.waiting = {worker}
        batch = TaskBatch(call.job_id, call.real, call.fn, call.items, call.first, call.star)
        call.job = pickle.dumps(batch, protocol=5)
        return [(worker, call.job)]

    def admit(self, call: Call) -> list[tuple[Worker, bytes]]:
        """Register ``call``; start it if a slot is at hand, else queue it."""
        self.calls[call.job_id] = call
        return self._slots.admit(call, self._start)

    def serve_queue(self) -> list[tuple[Worker, bytes]]:
        """Start queued calls while slots are free (first come, first served)."""
        return self._slots.serve_queue(self._start)

    # ---- ending -------------------------------------------------------------------------

    def maybe_finish(self, call: Call) -> list[Call]:
        """End ``call`` if nobody owes it a reply; the calls to notify."""
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
        self._slots.unbind(call)
        self.calls.pop(call.job_id, None)
        call.done.set()
        return [call]

    def fail_all(self, error: BaseException) -> list[Call]:
        """Fail every call in flight or queued: a broken pool can finish nothing."""
        finished: list[Call] = []
        for call in list(self.calls.values()):
            if call.failure is None:
                call.failure = error
            if call.real >= 0 and call.started:
                self._block.cancel(call.real)
            for worker in call.waiting:
                if isinstance(call, TaskCall):
                    worker.load -= 1
            call.waiting.clear()
            finished += self.maybe_finish(call)
        self._slots.clear_queue()
        return finished

    def cancel(self, handle: Handle) -> list[Call]:
        """Cancel ``handle``: its slot, if bound, and its queued calls, which end before
        they started; the calls to notify."""
        handle.cancelled = True
        if handle.real >= 0:
            self._block.cancel(handle.real)
        finished: list[Call] = []
        for queued in self._slots.waiting_on(handle):
            if isinstance(queued, MapCall):
                queued.failure = PoolClosedError("the map was cancelled")
            else:
                queued.failure = CancelledError("the call was cancelled before it started")
            finished += self.maybe_finish(queued)
        return finished

    # ---- a worker died ------------------------------------------------------------------

    def owed_by(self, worker: Worker) -> list[Call]:
        """The calls ``worker`` owed a reply, which it never will (it died); it owes them
        nothing from now on."""
        affected = [c for c in self.calls.values() if worker in c.waiting]
        for call in affected:
            call.waiting.discard(worker)
        return affected

    def after_death(
        self,
        worker: Worker,
        exitcode: int | None,
        affected: list[Call],
        replacement: Worker | None,
        killing: bool,
    ) -> tuple[list[Call], list[tuple[Call, bytes]]]:
        """Hand each call of ``affected`` over to ``replacement`` where the death lost
        nothing, or give it the lost chunks of a map with retries left, else fail it; the
        calls to notify, and the maps and jobs to send ``replacement``."""
        finished: list[Call] = []
        handover: list[tuple[Call, bytes]] = []
        for call in affected:
            usable = (
                replacement is not None
                and isinstance(call, MapCall)
                and call.failure is None
                and not call.killed
                and not self._block.cancelled(call.real)
            )
            if (
                usable
                and isinstance(call, MapCall)
                and not self._block.worked_on(call.real, worker.index)
                and call.handovers.get(worker.index, 0) < MAX_HANDOVERS
            ):
                # It died before touching this map (idle, or still starting): nothing
                # was lost, so its replacement takes its place in the map.
                assert replacement is not None
                call.handovers[worker.index] = call.handovers.get(worker.index, 0) + 1
                call.waiting.add(replacement)
                # A replacement that died before it read the lost chunks it was sent passes
                # them on (retries); any other passes the map's job on.
                redo = call.retry.redo_sent.get(worker.index)
                record = call.record
                job = (
                    pickle.dumps(dataclasses.replace(record, redo=redo), protocol=5)
                    if redo and record
                    else call.job
                )
                handover.append((call, job))
                continue
            if (
                usable
                and isinstance(call, MapCall)
                and call.retry.marks is not None
                and not self._block.preparing(call.real, worker.index)
            ):
                assert replacement is not None and call.record is not None
                redo, kept, error = settle_death(
                    call.retry, self._block, call.real, worker.index, describe_exit(exitcode), exitcode
                )
                call.chunks_run += kept
                if error is None:
                    if redo:
                        call.waiting.add(replacement)
                        rerun = dataclasses.replace(call.record, redo=redo)
                        handover.append((call, pickle.dumps(rerun, protocol=5)))
                    finished += self.maybe_finish(call)
                    continue
                call.failure = error
            if (
                replacement is not None
                and isinstance(call, TaskCall)
                and call.retry.retries
                and call.failure is None
                and not call.killed
                and not (call.handle is not None and call.handle.cancelled)
            ):
                running = self._block.current_chunk(call.real, worker.index) if call.real >= 0 else None
                item = call.first if call.star else running
                if call.real >= 0:
                    self._block.forget(call.real, worker.index)
                error = call.retry.crashed(item, describe_exit(exitcode), exitcode)
                if error is None:  # the whole batch again: its results died with the worker
                    replacement.load += 1
                    call.waiting.add(replacement)
                    handover.append((call, call.job))
                    continue
                call.failure = error
            if call.failure is None:
                call.failure = self._death_error(worker, exitcode, call, killing)
            if isinstance(call, MapCall):
                self._block.cancel(call.real)  # an imap cancels itself, in order
            finished += self.maybe_finish(call)
        return finished, handover

    def overdue(self, call: MapCall, limit: float) -> list[Worker]:
        """The workers of ``call`` whose chunk has run longer than ``limit`` seconds, marked
        as stopped for it (their death then says so); the caller kills them."""
        if call.done.is_set() or call.real < 0 or call.killed:
            return []
        now = time.monotonic_ns()
        stuck = []
        for worker in call.waiting:
            started = self._block.started_ns(call.real, worker.index)
            if (
                worker.alive
                and worker.index not in call.retry.timed_out
                and started
                and self._block.current_chunk(call.real, worker.index) is not None
                and now - started > limit * 1e9
            ):
                call.retry.timed_out[worker.index] = limit
                stuck.append(worker)
        return stuck

    def _death_error(self, worker: Worker, exitcode: int | None, call: Call, killing: bool) -> BaseException:
        if killing:
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
        how = describe_exit(exitcode)
        if isinstance(call, MapCall):
            how = call.retry.reason(worker.index, how)
        return WorkerCrashedError(
            f"worker {worker.index} (pid {worker.process.pid}) {how} {where}"
            f"{' ' + what if what else ''}; the pool replaced it",
            exitcode=exitcode,
            chunk=running,
        )
