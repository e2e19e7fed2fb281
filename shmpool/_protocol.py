"""The wire protocol between a pool and its workers: every record that crosses a pipe.

Messages to a worker are pickled with plain pickle; user objects inside them (the kernel,
whole() arguments, keywords, results) travel as ``payload`` bytes made by
:mod:`shmpool._pickling`, once per call, never per chunk. Array data never travels.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

from ._arrays import ArrayRef
from ._chunks import ChunkPlan
from ._halo import HaloSpec
from ._records import record

__all__ = [
    "InitFailed",
    "wire",
    "MapDone",
    "MapJob",
    "Ready",
    "Release",
    "RemoteError",
    "Stop",
    "TaskBatch",
    "TaskDone",
]


R = TypeVar("R")


def wire(cls: type[R]) -> type[R]:
    """Pickle a record as ``(class, field values)``: about twice as fast both ways as a
    slotted dataclass's default, which matters on the per-map and per-batch path."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    getter = operator.attrgetter(*names)

    def __reduce__(self: Any) -> tuple[object, ...]:
        values = getter(self)
        return (cls, values if len(names) > 1 else (values,))

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


# ---- parent -> worker ------------------------------------------------------------------


@wire
@record
class MapJob:
    """Run ``kernel(*views, **kwargs)`` over chunks claimed from control slot ``slot``.

    ``arrays`` has one entry per positional argument: the ArrayRef of a chunked array, or
    None where the argument is a whole() object carried in ``wholes``. ``kernel`` is the
    pickled kernel (a worker caches the last few); ``wholes`` unpickles to a dict from
    positions to objects, ``kwargs`` to the keyword arguments. ``halos`` maps the
    positions of halo() arguments to how far their views reach past the chunk.
    """

    job_id: int
    slot: int
    kernel: bytes
    wholes: bytes
    kwargs: bytes
    arrays: tuple[ArrayRef | None, ...]
    axes: tuple[int, ...]  # per position: the axis its array is split along (-1: whole)
    plan: ChunkPlan
    halos: dict[int, HaloSpec]
    progress: bool = False  # a bar is shown: keep the indices-done word (shmpool.advance)
    # retries > 0: an int64 array of one mark per chunk, set to worker + 1 when the chunk
    # ended with a return value (lost if the worker dies before replying), -1 when it ended
    # with None (nothing to lose).
    marks: ArrayRef | None = None
    timed: bool = False  # a chunk_timeout is set: write when each chunk starts
    redo: tuple[int, ...] = ()  # chunks a dead worker lost, to run before claiming more


@wire
@record
class TaskBatch:
    """Call ``fn`` on each item of a batch: ``fn(*args, **kwargs)`` for a ``submit``
    (``star``), ``fn(item)`` for ``imap`` items numbered from ``first``.

    ``fn`` is pickled (a worker caches the last few); ``items`` unpickles to the list of
    items, or to ``(args, kwargs)`` when ``star``. ``slot`` is the control slot whose cancel
    flag is checked before each item and whose current word names the running item (-1:
    none).
    """

    job_id: int
    slot: int
    fn: bytes
    items: bytes
    first: int
    star: bool


@wire
@record
class Release:
    """Unmap these freed blocks (paths)."""

    paths: tuple[str, ...]


@record
class Stop:
    """Finish: the worker exits its loop after the messages sent before this one."""


# ---- worker -> parent ------------------------------------------------------------------


@wire
@record
class RemoteError:
    """An exception raised in a worker, in a form that always reaches the parent.

    ``pickled`` is the exception itself when it could be pickled (else None); the text
    fields let the parent build a :class:`~shmpool.errors.KernelError` when it cannot be
    rebuilt. ``chunk`` is the chunk (or item) index it was raised for.
    """

    pickled: bytes | None
    type_name: str
    message: str
    traceback: str
    chunk: int | None


@record
class Ready:
    """The worker ran its initializer and waits for work."""


@wire
@record
class InitFailed:
    """The worker's initializer raised; the worker has exited."""

    error: RemoteError


@wire
@record
class MapDone:
    """A worker's one reply to a MapJob: the chunks it ran, or the error that stopped it.

    ``results`` is a pickled list of ``(chunk index, return value)`` for the chunks whose
    kernel returned something other than None; ``chunks_run`` counts all it ran.
    """

    job_id: int
    results: bytes | None
    chunks_run: int
    error: RemoteError | None


@wire
@record
class TaskDone:
    """A worker's reply to a TaskBatch: pickled results of the items it ran, in order, and
    the error that stopped it (its ``chunk`` is the failing item's number)."""

    job_id: int
    results: bytes
    error: RemoteError | None
