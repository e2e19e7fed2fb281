"""The control block: per-map counters in shared memory, shared by the parent and workers.

Workers claim chunks by advancing a slot's next-chunk counter under an ``fcntl`` record
lock on that slot. A record lock is released by the kernel when its holder dies, so a
worker killed mid-claim cannot leave the others blocked forever (a multiprocessing.Lock
would: https://github.com/python/cpython/issues/96062). Everything else is written by one
side and read by the other without a lock: the cancel flag (parent or failing worker
writes, everyone reads) and each worker's own words, which the worker writes and the parent
reads: chunks done, the current chunk, indices done (the progress bar's counter, which
:func:`shmpool.advance` moves), the end of the run of chunks it claimed last, and when its
current chunk started (for ``chunk_timeout``). Aligned 8-byte stores do not tear, and a
stale read only delays a progress tick or a cancellation by one chunk. The parent writes a
dead worker's words too, before its replacement starts (see :meth:`ControlBlock.forget`).

One slot per map in flight; a slot is reused only after every worker in its map replied.
"""

from __future__ import annotations

import fcntl
import mmap

__all__ = ["MAX_SLOTS", "PREPARING", "ControlBlock"]

# Maps that can be in flight at once in one pool. Each slot costs (3 + 5 * workers) words.
MAX_SLOTS = 32

# A worker's current-chunk word holds chunk + 1 while it runs a chunk, 0 between chunks,
# and PREPARING while it unpickles a map's kernel and arguments (user code that may kill it).
PREPARING = -1

_NEXT, _TOTAL, _CANCEL, _FIXED = 0, 1, 2, 3
# A slot's per-worker words, each kind a run of ``workers`` words after the fixed ones.
_DONE, _CURRENT, _UNITS, _CLAIMED, _STARTED = range(5)
_PER_WORKER = 5
_WORD = 8


class ControlBlock:
    """Typed access to a control block mapping for a pool of ``workers`` workers."""

    def __init__(self, mapping: mmap.mmap, workers: int, lock_fd: int | None = None):
        self._words = memoryview(mapping).cast("q")
        self._workers = workers
        self._stride = _FIXED + _PER_WORKER * workers
        self._lock_fd = lock_fd

    @staticmethod
    def size_for(workers: int) -> int:
        """Bytes needed for a pool of ``workers`` workers."""
        return MAX_SLOTS * (_FIXED + _PER_WORKER * workers) * _WORD

    def release(self) -> None:
        """Give up the view so the mapping can be closed."""
        self._words.release()

    # ---- parent side ------------------------------------------------------------------

    def reset(self, slot: int, total: int) -> None:
        """Prepare a free slot for a map of ``total`` chunks."""
        base = slot * self._stride
        words = self._words
        words[base + _NEXT] = 0
        words[base + _TOTAL] = total
        words[base + _CANCEL] = 0
        for i in range(base + _FIXED, base + self._stride):
            words[i] = 0

    def indices_done(self, slot: int) -> int:
        """Indices along the split axis done so far in ``slot``, summed over workers (kept
        only by maps with a progress bar)."""
        start = slot * self._stride + _FIXED + _UNITS * self._workers
        return sum(self._words[start : start + self._workers])

    def _word(self, slot: int, kind: int, worker: int) -> int:
        return slot * self._stride + _FIXED + kind * self._workers + worker

    def claimed_until(self, slot: int, worker: int) -> int:
        """The end of the run of chunks ``worker`` claimed last in ``slot``."""
        return self._words[self._word(slot, _CLAIMED, worker)]

    def started_ns(self, slot: int, worker: int) -> int:
        """When (``time.monotonic_ns``) ``worker``'s current chunk started, 0 if unknown
        (kept only by maps with a ``chunk_timeout``)."""
        return self._words[self._word(slot, _STARTED, worker)]

    def forget(self, slot: int, worker: int) -> None:
        """A worker died and the parent counted what it finished: clear its done count,
        current chunk, claim and start time, so that its replacement (which starts from
        these words) is never taken to have done or held them. Its indices word is kept:
        the bar keeps what it showed."""
        for kind in (_DONE, _CURRENT, _CLAIMED, _STARTED):
            self._words[self._word(slot, kind, worker)] = 0

    def worked_on(self, slot: int, worker: int) -> bool:
        """Whether ``worker`` has started on the map in ``slot``: it has begun unpickling its
        arguments, or claimed or finished a chunk."""
        done, current = self.worker_words(slot, worker)
        return bool(self._words[done] or self._words[current])

    def current_chunk(self, slot: int, worker: int) -> int | None:
        """The chunk ``worker`` is running in ``slot``, or None between chunks (or while it
        prepares the map: see :meth:`preparing`)."""
        value = self._words[self._word(slot, _CURRENT, worker)]
        return value - 1 if value > 0 else None

    def preparing(self, slot: int, worker: int) -> bool:
        """Whether ``worker`` is unpickling the kernel or arguments of the call in ``slot``."""
        return self._words[self._word(slot, _CURRENT, worker)] == PREPARING

    # ---- both sides -------------------------------------------------------------------

    def cancel(self, slot: int) -> None:
        """Tell every worker in this slot's map to stop claiming chunks."""
        self._words[slot * self._stride + _CANCEL] = 1

    def cancel_word(self, slot: int) -> int:
        """Index of ``slot``'s cancel flag in :attr:`words`, for a worker's hot loop."""
        return slot * self._stride + _CANCEL

    def cancelled(self, slot: int) -> bool:
        """Whether the map in ``slot`` was cancelled."""
        return bool(self._words[slot * self._stride + _CANCEL])

    # ---- worker side ------------------------------------------------------------------

    def claim(self, slot: int, worker: int) -> tuple[int, int]:
        """Claim the next run of chunks for ``worker``: ``(start, stop)``, empty when none
        is left.

        Guided self-scheduling: take about a ``1 / (2 * workers)`` share of what is left,
        at least one chunk, so tiny chunks cost one lock per batch while the tail of the
        map is still spread over all workers. The worker's current-chunk word is set under
        the lock, and so is the end of the run, so a worker that dies holding unrun chunks
        is always seen to have worked, and which chunks it held is known.
        """
        assert self._lock_fd is not None
        base = slot * self._stride
        words = self._words
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, _WORD, base * _WORD)
        try:
            start = words[base + _NEXT]
            left = words[base + _TOTAL] - start
            if left <= 0 or words[base + _CANCEL]:
                return start, start
            stop = start + max(1, left // (2 * self._workers))
            words[base + _FIXED + _CURRENT * self._workers + worker] = start + 1
            words[base + _FIXED + _CLAIMED * self._workers + worker] = stop
            words[base + _NEXT] = stop
            return start, stop
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, _WORD, base * _WORD)

    def worker_words(self, slot: int, worker: int) -> tuple[int, int]:
        """Indexes of ``worker``'s done and current-chunk words in slot ``slot``."""
        return self._word(slot, _DONE, worker), self._word(slot, _CURRENT, worker)

    def extra_words(self, slot: int, worker: int) -> tuple[int, int]:
        """Indexes of ``worker``'s indices-done and chunk-start words in slot ``slot``."""
        return self._word(slot, _UNITS, worker), self._word(slot, _STARTED, worker)

    @property
    def words(self) -> memoryview:
        """The raw words, for a worker's hot loop."""
        return self._words
