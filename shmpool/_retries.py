"""Chunk retries and per-chunk timeouts of a SharedPool map: what a dead worker lost.

A map made with ``retries=N`` gets a *marks* array in shared memory, one int64 per chunk,
which workers write as each chunk ends: ``worker + 1`` when the kernel returned a value
(it lives in the worker until its one reply, so its death loses it), ``-1`` when it
returned None (nothing to lose: its writes are in shared memory). With the control block's
per-worker words (the current chunk, and the end of the run of chunks claimed last, both
written under the claim lock), the parent knows, when a worker dies, exactly which chunks
it lost::

    the chunk it was running (current word, not marked) ........ the crashed chunk: one attempt
    the rest of its claimed run (current + 1 .. claimed end) .... never started: lost, no attempt
    chunks it ran whose value died with it (marks == worker + 1)  lost, no attempt
    chunks it was given to run again and had not run yet ....... lost, no attempt

The lost chunks go to the worker's replacement as the map's job with ``redo`` set: it runs
them first, then claims from the counter like the others. A chunk that crashed more than
``N`` times fails the map with a WorkerCrashedError listing every attempt. Other workers
never notice: the map is not cancelled while retries are left.

A ``chunk_timeout`` is kept by the parent, which reads when each worker's chunk started
(another control word) while it waits; a chunk over time gets its worker killed
(:meth:`shmpool._dispatch.Dispatcher.stop_chunk`), and that death is a crash like any other.

Everything here runs under the dispatcher's lock, in the supervisor thread.
"""

from __future__ import annotations

import numpy as np

from ._chunks import ChunkPlan
from ._control import ControlBlock
from .errors import WorkerCrashedError

__all__ = ["Attempt", "ItemRetries", "RetryState", "settle_death"]

Attempt = tuple[int | None, int, int, str]  # chunk (None: between chunks), start, stop, reason


class RetryState:
    """The retry bookkeeping of one map (see the module docstring)."""

    def __init__(self, retries: int, marks: np.ndarray | None, plan: ChunkPlan):  # type: ignore[type-arg]
        self.retries = retries
        self.marks = marks  # None when retries == 0: deaths fail the map as they always did
        self.plan = plan
        self.attempts: list[Attempt] = []
        self.tries: dict[int | None, int] = {}
        self.redo_sent: dict[int, tuple[int, ...]] = {}  # worker index -> chunks it was given
        self.timed_out: dict[int, float] = {}  # worker index -> the chunk_timeout it broke

    def reason(self, index: int, exit_text: str) -> str:
        """How worker ``index`` ended, for messages: its exit, or the timeout that killed it."""
        limit = self.timed_out.get(index)
        if limit is not None:
            return f"was stopped after running longer than chunk_timeout={limit:g} s"
        return exit_text

    def describe(self) -> str:
        """Every attempt, one per line, for the final error."""
        lines = []
        for chunk, low, high, why in self.attempts:
            where = f"chunk {chunk} (indices {low}:{high})" if chunk is not None else "between chunks"
            lines.append(f"  {where}: the worker {why}")
        return "\n".join(lines)


def settle_death(
    state: RetryState, block: ControlBlock, real: int, index: int, exit_text: str, exitcode: int | None
) -> tuple[tuple[int, ...], int, WorkerCrashedError | None]:
    """Worker ``index`` died in the map on slot ``real``, which has retries.

    Returns the chunks to run again, how many chunks it finished for good (their count never
    arrives in a reply), and the error that ends the map when a chunk has no retry left.
    """
    marks = state.marks
    assert marks is not None
    current = block.current_chunk(real, index)
    claimed = block.claimed_until(real, index)
    done, _ = block.worker_words(real, index)
    finished = block.words[done]
    ours = index + 1
    result_lost = [int(c) for c in np.flatnonzero(marks == ours)]
    lost = set(result_lost)
    lost.update(c for c in state.redo_sent.get(index, ()) if marks[c] == 0)
    crashed = current if current is not None and marks[current] == 0 else None
    if current is not None:
        lost.update(c for c in range(current, max(claimed, current + 1)) if marks[c] == 0)
    why = state.reason(index, exit_text)
    state.timed_out.pop(index, None)
    block.forget(real, index)
    if crashed is None and not lost:
        return (), finished, None  # it died after its chunks were safe: nothing to run again
    low, high = state.plan.bounds(crashed) if crashed is not None else (0, 0)
    state.attempts.append((crashed, low, high, why))
    state.tries[crashed] = state.tries.get(crashed, 0) + 1
    redo = tuple(sorted(lost))
    marks[list(redo)] = 0  # their new runner marks them again
    state.redo_sent[index] = redo
    if state.tries[crashed] <= state.retries:
        return redo, finished - len(result_lost), None
    where = f"chunk {crashed} (indices {low}:{high})" if crashed is not None else "a worker between chunks"
    error = WorkerCrashedError(
        f"{where} crashed its worker {state.tries[crashed]} times, more than retries={state.retries} "
        f"allows; every attempt:\n{state.describe()}",
        exitcode=exitcode,
        chunk=crashed,
        attempts=tuple(state.attempts),
    )
    return redo, finished - len(result_lost), error


class ItemRetries:
    """The retry bookkeeping of one batch of items (an ``imap`` batch, a ``submit``).

    A batch's results travel in its one reply, so a death loses all of it: the whole batch
    is sent again, and the item that was running when the worker died (None when that is
    not known: it died unpickling the batch) is charged one attempt.
    """

    def __init__(self, retries: int):
        self.retries = retries
        self.attempts: list[Attempt] = []
        self.tries: dict[int | None, int] = {}

    def crashed(self, item: int | None, why: str, exitcode: int | None) -> WorkerCrashedError | None:
        """Charge ``item`` one attempt; the error to fail with when it has no retry left."""
        self.attempts.append((item, item or 0, (item or 0) + 1, why))
        self.tries[item] = self.tries.get(item, 0) + 1
        if self.tries[item] <= self.retries:
            return None
        where = f"item {item}" if item is not None else "a batch of items"
        lines = "\n".join(
            f"  {'item ' + str(i) if i is not None else 'unknown item'}: the worker {w}"
            for i, _, _, w in self.attempts
        )
        return WorkerCrashedError(
            f"{where} crashed its worker {self.tries[item]} times, more than retries={self.retries} "
            f"allows; every attempt:\n{lines}",
            exitcode=exitcode,
            chunk=item,
            attempts=tuple(self.attempts),
        )
