"""The records of dispatched work: calls, and the slot handles they run under.

A :class:`Call` is work sent to workers (a :class:`MapCall` to every worker, a
:class:`TaskCall` to one): who still owes it a reply, the control slot it runs in, and how
it ended. A :class:`Handle` is a control slot as callers see it, a number never reused.
These are plain records, shared by the modules of the dispatch and by the callers that
hold a call (:mod:`shmpool._procmap`): :mod:`shmpool._slots` binds handles to real slots,
:mod:`shmpool._book` starts and ends calls, and :mod:`shmpool._dispatch` sends and routes
replies, all under the dispatcher's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._protocol import MapDone, MapJob, RemoteError, TaskDone
from ._retries import ItemRetries, RetryState
from ._workerproc import Worker

__all__ = ["Call", "Handle", "MapCall", "TaskCall"]


class Handle:
    """A control slot as callers see it: a number never reused, bound to a real slot of
    the control block only while work of it is in flight."""

    def __init__(self, number: int):
        self.number = number
        self.real = -1  # the bound slot of the control block, -1 while unbound
        self.users = 0  # calls in flight on ``real``
        self.cancelled = False
        self.released = False  # release_slot() was called; forget it once unused
        self.queued: list[TaskCall] = []  # batches waiting for a slot


class Call:
    """Work in flight: the workers that still owe a reply, and how it ended."""

    def __init__(self, job_id: int, handle: Handle | None, workers: set[Worker]):
        self.job_id = job_id
        self.handle = handle
        self.slot = -1 if handle is None else handle.number  # the handle, -1 for none
        self.real = -1  # the control slot it runs in, once started
        self.started = False
        self.killed = False  # kill_workers_of() was called: never hand it over
        self.waiting = workers
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.on_done: Callable[[Call], None] | None = None
        self.inline_done = False  # on_done only hands off: run it on the supervisor


class MapCall(Call):
    """One map: sent to every worker, done when each has replied or died."""

    def __init__(
        self,
        job_id: int,
        handle: Handle,
        total: int,
        factory: Callable[[int, int], MapJob],
        retry: RetryState,
    ):
        super().__init__(job_id, handle, set())
        self.total = total
        self.factory = factory  # builds the MapJob once the call has a real slot
        self.record: MapJob | None = None  # what factory built, for a job to run lost chunks
        self.job = b""  # the pickled MapJob, resent to a worker that replaces an idle one
        self.retry = retry  # retries and chunk timeouts (see shmpool._retries)
        self.replies: list[MapDone] = []
        self.errors: list[RemoteError] = []
        self.chunks_run = 0
        self.handovers: dict[int, int] = {}  # worker index -> times handed over


class TaskCall(Call):
    """One batch of calls (a ``submit``, or ``imap`` items from ``first``) on one worker."""

    def __init__(
        self,
        job_id: int,
        handle: Handle | None,
        fn: bytes,
        items: bytes,
        first: int,
        count: int,
        star: bool,
        retries: int = 0,
    ):
        super().__init__(job_id, handle, set())
        self.retry = ItemRetries(retries)
        self.job = b""  # the pickled TaskBatch, sent again to a replacement (retries)
        self.fn = fn
        self.items = items
        self.first = first
        self.count = count
        self.star = star
        self.reply: TaskDone | None = None
