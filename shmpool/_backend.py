"""What a backend does for the front end: the protocols every pool's engine implements.

The front end (:mod:`shmpool._frontend`) owns the public API, the checks, the waiting and
the errors; a backend owns only where arrays live and how work reaches its workers:

- :class:`Backend`: allocate / own / release arrays, split a map over arrays of its own
  kind (a DaskPool's cluster arrays), start a map, open an item stream, shut down.
- :class:`MapRun`: one started map. ``wait`` until it is over, ``indices_done`` for the bar,
  ``cancel`` (no more chunks start), ``kill`` (running chunks stop, where that is possible),
  and ``finish`` exactly once: copy back, release, and report a :class:`MapOutcome`.
- :class:`ItemStream`: one function sent batches of items (``imap``; a ``submit`` is a
  stream of one batch); each :class:`ItemBatch` lands once and reports a
  :class:`BatchOutcome`.

Calls go down only: the front end calls the backend, the backend never calls the front end
(a batch's ``on_landed`` callback is the front end's own function, handed down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._checks import ItemRequest, MapRequest, SplitArgs
from ._chunks import ChunkPlan

__all__ = [
    "CANCEL_GRACE_S",
    "Backend",
    "BatchOutcome",
    "Failure",
    "ItemBatch",
    "ItemStream",
    "MapOutcome",
    "MapRun",
]

# After Ctrl-C, a cancel or an early close, how long running work gets to finish before it is
# killed (where the backend can kill). Chunks are usually short; a stuck one must not hold
# the caller.
CANCEL_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Failure:
    """An exception raised by the user's code for chunk (or item) ``index``.

    ``build(where)`` makes the exception to raise, ``where`` naming what raised it; a
    backend whose exceptions crossed a process boundary rebuilds them there.
    """

    index: int | None
    build: Callable[[str], BaseException]


@dataclass(slots=True)
class MapOutcome:
    """How a map ended: per-chunk return values, what it copied, what went wrong.

    ``errors`` are the kernel's own exceptions (the front end raises the lowest chunk's);
    ``failure`` is an error of the pool or the world (a worker crash, a closed pool), raised
    when no kernel error is.
    """

    results: list[Any]
    chunks_run: int = 0
    bytes_in: int = 0
    bytes_back: int = 0
    errors: list[Failure] = field(default_factory=list)
    failure: BaseException | None = None


@dataclass(slots=True)
class BatchOutcome:
    """How a batch of items ended: the results of the items that ran, in order; the error
    that stopped it; or (``failure``) why none of it could run."""

    results: list[Any]
    error: Failure | None = None
    failure: BaseException | None = None


class MapRun(Protocol):
    """One started map (see the module docstring)."""

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: until over); whether the map is over."""
        ...

    def indices_done(self) -> int:
        """Indices along the split axis done so far, for a progress bar (may lag): those of
        the finished chunks, plus what running kernels reported with shmpool.advance()
        where the backend can see it."""
        ...

    def cancel(self) -> None:
        """No more chunks start; running ones finish. Any thread, any number of times."""
        ...

    def kill(self) -> None:
        """Stop running chunks now where the backend can (processes are killed)."""
        ...

    def finish(self) -> MapOutcome:
        """Copy back, release what the run holds, and report. Called exactly once, after
        :meth:`wait` returned True or when the caller gives up waiting."""
        ...


class ItemBatch(Protocol):
    """One batch of items in flight."""

    def outcome(self) -> BatchOutcome:
        """The batch's outcome; only called after it landed."""
        ...


class ItemStream(Protocol):
    """One function that batches of items are sent to."""

    def send(self, items: list[Any], first: int, on_landed: Callable[[ItemBatch], None]) -> ItemBatch:
        """Send a batch of items numbered from ``first``; ``on_landed(batch)`` runs (in
        any thread, once, perhaps before ``send`` returns) when it has landed. Raises before sending if the items cannot go."""
        ...

    def cancel(self) -> None:
        """Items not started yet in the batches in flight are skipped."""
        ...

    def close(self) -> None:
        """Release what the stream holds; its batches in flight land as they end."""
        ...


class Backend(Protocol):
    """Where a pool's arrays live and how its work reaches the workers."""

    kind: str  # the pool's class name, for messages
    batch_target_s: float  # imap chunksize="auto": seconds a batch should take
    # Why this backend cannot stop one running chunk (map's chunk_timeout=), or None when
    # it can: the front end refuses the option with this reason before anything runs.
    no_chunk_timeout: str | None

    @property
    def workers(self) -> int:
        """How many workers chunks are planned for."""
        ...

    def describe(self) -> str:
        """What the pool's repr shows between its class name and its state."""
        ...

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any) -> Any:  # type: ignore[type-arg]
        """A new array of the pool's, filled with zeros when ``zero``: a NumPy array, or an
        array of the backend's own kind that supports ``a[...] = value``. ``like``: the
        pool's array it is made like (:meth:`owns` it), or None; a backend may copy its
        layout (a DaskPool's chunks and their workers)."""
        ...

    def owns(self, a: Any) -> bool:
        """Whether ``a`` (or the array it views) is the pool's and was not released; False
        for anything else."""
        ...

    def release(self, a: Any) -> None:
        """Give the memory of ``a`` (which :meth:`owns`) back now."""
        ...

    def split_own(
        self, arrays: tuple[Any, ...], axis: object, chunks: object
    ) -> tuple[SplitArgs, ChunkPlan] | None:
        """The checked split and chunk plan of a map whose ``arrays`` are of the backend's
        own kind (not NumPy arrays: a DaskPool's cluster arrays), raising on bad input; None
        when they hold none, and the front end checks them as NumPy arrays."""
        ...

    def start_map(self, request: MapRequest) -> MapRun:
        """Stage, pickle and send a map. On any failure before it is sent, undo what was
        done and raise: nothing runs and nothing is left."""
        ...

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        """A stream calling ``request.fn(item)`` per item, or ``fn(*args, **kwargs)`` per
        ``(args, kwargs)`` item when ``star`` (submit). Raises if ``fn`` cannot travel."""
        ...

    def shutdown(self, *, kill: bool) -> None:
        """Stop the workers (after the calls in flight, or at once) and release everything.
        Called at most once per process that created the pool; must not reference the
        pool object (it runs from the pool's finalizer)."""
        ...
