"""Slot handles: any number of calls open over the control block's ``MAX_SLOTS`` slots.

Calls name their control slot by a *handle* that is never reused (``call.slot``); the
:class:`SlotTable` binds a handle to one of the ``MAX_SLOTS`` real slots of the control
block only while work of it is in flight, and queues work when none is free. So any
number of maps, imaps and futures may be open, and a stale handle can never touch another
call's slot. :class:`SlotControl` is the control block as callers see it, addressed by
handle, and safe to use after the pool is gone.

Kept apart so that the mapping of handles to real slots, which the control block's fixed
size forces on us, is in one place: the dispatcher (:mod:`shmpool._dispatch`) owns the
lock both classes take, and the book of calls (:mod:`shmpool._book`) starts what the
table admits.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable

from ._control import MAX_SLOTS, ControlBlock
from ._dispatch_calls import Call, Handle, MapCall, TaskCall
from ._workerproc import Worker

__all__ = ["SlotControl", "SlotTable"]

# Starts a call on its handle's (bound) slot; returns the messages to send.
_Start = Callable[[Call], list[tuple[Worker, bytes]]]


class SlotTable:
    """The handles, the real slots they are bound to, and the calls waiting for a slot.

    Not thread-safe by itself: every method is called with the dispatcher's lock held.
    """

    def __init__(self, block: ControlBlock):
        self.block = block
        self._numbers = itertools.count()
        self._handles: dict[int, Handle] = {}
        self._free_slots = list(range(MAX_SLOTS))
        self._queue: collections.deque[Call] = collections.deque()  # waiting for a slot

    @property
    def queued(self) -> bool:
        """Whether any call waits for a slot (read on every reply: kept cheap)."""
        return bool(self._queue)

    def new_handle(self) -> Handle:
        handle = Handle(next(self._numbers))
        self._handles[handle.number] = handle
        return handle

    def get(self, number: int) -> Handle | None:
        """The handle numbered ``number``, None once it is forgotten."""
        return self._handles.get(number)

    def release(self, number: int) -> None:
        """Forget the handle ``number`` (an imap's) once no call of it is in flight."""
        handle = self._handles.get(number)
        if handle is None:
            return
        handle.released = True
        if handle.users == 0:
            del self._handles[number]

    def _bind(self, handle: Handle, total: int) -> bool:
        """Give ``handle`` a real slot if it has none; False when none is free."""
        if handle.real >= 0:
            return True
        if not self._free_slots:
            return False
        handle.real = self._free_slots.pop()
        self.block.reset(handle.real, total)
        if handle.cancelled:
            self.block.cancel(handle.real)
        return True

    def unbind(self, call: Call) -> None:
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

    def admit(self, call: Call, start: _Start) -> list[tuple[Worker, bytes]]:
        """Start ``call`` if a slot is at hand, else queue it."""
        handle = call.handle
        if handle is None:
            return start(call)
        total = call.total if isinstance(call, MapCall) else 0
        if self._bind(handle, total):
            return start(call)
        self._queue.append(call)
        if isinstance(call, TaskCall):
            handle.queued.append(call)
        return []

    def serve_queue(self, start: _Start) -> list[tuple[Worker, bytes]]:
        """Start queued calls while slots are free (first come, first served)."""
        sends: list[tuple[Worker, bytes]] = []
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
            sends += start(call)
            # The other batches of an imap share the slot it just got.
            for other in handle.queued:
                if not other.started and not other.done.is_set():
                    sends += start(other)
            handle.queued.clear()
        return sends

    def waiting_on(self, handle: Handle) -> list[Call]:
        """The queued calls of ``handle`` that have neither started nor ended."""
        return [c for c in self._queue if c.handle is handle and not c.started and not c.done.is_set()]

    def clear_queue(self) -> None:
        self._queue.clear()


class SlotControl:
    """The control block as callers see it, addressed by handle (``call.slot``).

    A handle that is not bound to a slot (queued, finished, released, or the pool gone)
    reads as nothing done and ignores a cancel beyond remembering it, so no caller can
    reach another call's slot or a control block that was released.
    """

    def __init__(self, table: SlotTable, lock: threading.Lock, cancel: Callable[[int], None]):
        self._table = table
        self._lock = lock  # the dispatcher's
        self._cancel = cancel  # the dispatcher's: cancelling also ends queued calls

    def cancel(self, slot: int) -> None:
        """Cancel the work of handle ``slot``: unstarted chunks and items are skipped."""
        self._cancel(slot)

    def cancelled(self, slot: int) -> bool:
        """Whether handle ``slot`` was cancelled."""
        with self._lock:
            handle = self._table.get(slot)
            return handle is not None and handle.cancelled

    def indices_done(self, slot: int) -> int:
        """Indices done so far by the map of handle ``slot``, for its bar (0 unless it is
        running with a bar)."""
        with self._lock:
            handle = self._table.get(slot)
            if handle is None or handle.real < 0:
                return 0
            return self._table.block.indices_done(handle.real)
