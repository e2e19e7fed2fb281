"""The worker process: a short loop that runs whatever its pipe brings.

Each worker owns one duplex pipe to its pool (no shared queue, so a worker killed at any
moment cannot leave a lock held). It ignores SIGINT (the parent alone turns Ctrl-C into a
cancellation), exits when its parent dies, keeps every block it attached mapped until the
parent says it was freed, and caches the last few kernels it unpickled (``_KernelCache``).

Whatever user code raises here (a kernel, a ``submit`` or ``imap`` function, the
initializer, the unpickling of their arguments or the pickling of their results) is caught
as a BaseException, so ``SystemExit`` and ``KeyboardInterrupt`` too, and travels back as a
:class:`RemoteError`: the worker stays alive and the caller gets the exception. Only
``os._exit``, a signal or a crash in C ends a worker.
"""

from __future__ import annotations

import functools
import mmap
import os
import pickle
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _arrays, _pickling
from ._active import mark_worker_process
from ._advance import Tally, install
from ._control import PREPARING, ControlBlock
from ._halo import NO_MARGINS, HaloViews, chunk_slot
from ._lifeline import default_ending_signals, watch_parent
from ._origin import user_frames
from ._progress import own_bar_lock
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, RemoteError, Stop, TaskBatch, TaskDone
from ._segments import raise_fd_limit

__all__ = ["first_unpicklable", "remote_error", "worker_main"]


def _safe_text(describe: Callable[[], str], fallback: str) -> str:
    """``describe()``, or ``fallback`` when user code in it (a ``__str__``) raises."""
    try:
        text = describe()
        if isinstance(text, str):
            return text
    except BaseException:  # an exception's __str__ may raise anything, SystemExit included
        pass
    return fallback


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


def remote_error(exc: BaseException, chunk: int | None) -> RemoteError:
    """Capture ``exc`` so that it reaches the parent whatever it is made of.

    Each part is taken on its own, so an exception whose ``__str__``, ``__repr__`` or
    pickling raises still arrives: as itself when it pickles and unpickles (checked here,
    so that the parent never gets bytes it cannot load), else as a KernelError built from
    the text that could be had.
    """
    kind = type(exc)
    type_name = _safe_text(lambda: f"{kind.__module__}.{kind.__qualname__}", "<unknown exception type>")
    message = _safe_text(lambda: str(exc), f"<str() of the {type_name} raised too>")
    tb = user_frames(exc.__traceback__)  # from the user's code on, as if it had run locally
    text = _safe_text(
        lambda: "".join(traceback.format_exception(kind, exc, tb)),
        _safe_text(
            lambda: "".join(traceback.format_tb(tb)) + f"{type_name}: {message}\n",
            f"{type_name}: {message}\n",
        ),
    )
    pickled: bytes | None
    try:
        pickled = _pickling.dumps(exc)
        _pickling.loads(pickled)  # one that cannot be rebuilt travels as text only
    except BaseException:
        pickled = None
    return RemoteError(pickled, type_name, message, text, chunk)


class _KernelCache:
    """The last few functions this worker unpickled, keyed by their pickled bytes: a map
    repeated with the same kernel (iterative algorithms) skips the unpickling."""

    SIZE = 8

    def __init__(self) -> None:
        self._functions: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()

    def get(self, pickled: bytes) -> Callable[..., Any]:
        fn = self._functions.get(pickled)
        if fn is None:
            fn = _pickling.loads(pickled)
            self._functions[pickled] = fn
            if len(self._functions) > self.SIZE:
                self._functions.popitem(last=False)
        else:
            self._functions.move_to_end(pickled)
        return fn


def worker_main(
    conn: Any,
    index: int,
    workers: int,
    control_path: str,
    init_payload: bytes | None,
) -> None:
    """Entry point of worker ``index``: run the initializer, then serve the pipe."""
    mark_worker_process()  # a decorated kernel called here runs in place
    own_bar_lock()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_ending_signals()  # SIGTERM/SIGHUP end a worker at once, even under fork
    watch_parent(lambda: None)
    raise_fd_limit()
    fd = os.open(control_path, os.O_RDWR)
    control = ControlBlock(mmap.mmap(fd, ControlBlock.size_for(workers)), workers, fd)
    try:
        if init_payload is not None:
            initializer, initargs = _pickling.loads(init_payload)
            initializer(*initargs)
    except BaseException as exc:  # SystemExit in an initializer is reported, not obeyed
        conn.send_bytes(pickle.dumps(InitFailed(remote_error(exc, None))))
        return
    conn.send_bytes(pickle.dumps(Ready()))
    kernels = _KernelCache()
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return  # the parent is gone
        if isinstance(message, TaskBatch):
            conn.send_bytes(pickle.dumps(_run_tasks(message, control, index, kernels)))
        elif isinstance(message, MapJob):
            conn.send_bytes(pickle.dumps(_run_map(message, control, index, kernels)))
        elif isinstance(message, Release):
            for path in message.paths:
                _arrays.forget(path)
        elif isinstance(message, Stop):
            return


def _run_map(job: MapJob, control: ControlBlock, index: int, kernels: _KernelCache) -> MapDone:
    results: list[tuple[int, Any]] = []
    ran = 0
    error: RemoteError | None = None
    words = control.words
    done_word, current_word = control.worker_words(job.slot, index)
    chunk: int | None = None
    args: list[Any] = []
    arrays: list[Any] = []
    # Marked before any user code runs (unpickling the kernel, whole() objects, keywords):
    # a worker that dies from here on is seen to have worked on this map, so the map fails
    # instead of being handed to a replacement that would die the same way.
    words[current_word] = PREPARING
    units_word, started_word = control.extra_words(job.slot, index)
    # Only maps with a bar, retries or a chunk_timeout pay for the bookkeeping below.
    tally = Tally(words, units_word) if job.progress else None
    outer = install(tally)
    marks: Any = None
    try:
        if job.marks is not None:
            marks = _arrays.view_from_ref(job.marks)
        tracked = tally is not None or marks is not None or job.timed
        kernel = kernels.get(job.kernel)
        wholes = _pickling.loads(job.wholes)
        kwargs = _pickling.loads(job.kwargs)
        arrays.extend(
            _arrays.view_from_ref(ref) if ref is not None else wholes[i] for i, ref in enumerate(job.arrays)
        )
        args.extend(arrays)
        chunked = [
            (i, (slice(None),) * job.axes[i])
            for i, ref in enumerate(job.arrays)
            if ref is not None and i not in job.halos
        ]
        # Halo arguments: the view of the whole array stays in ``arrays``; each chunk's view
        # with its margin is sliced from it (a copy only for a padded edge chunk).
        halos = HaloViews(job.halos, dict(enumerate(job.axes)), job.plan.length) if job.halos else None
        where = chunk_slot()  # what shmpool.chunk_info() reads
        plan, slot = job.plan, job.slot
        cancel_word = control.cancel_word(slot)
        # The per-chunk loop is the W1 hot path: no method calls but the kernel's.
        size, length, offsets = plan.size, plan.length, plan.offsets
        redo: tuple[int, ...] | range = job.redo
        while True:
            if redo:  # chunks a dead worker lost come first
                run, redo = redo, ()
            else:
                start, stop = control.claim(slot, index)
                if start == stop:
                    break
                run = range(start, stop)
            for chunk in run:
                if words[cancel_word]:
                    break
                words[current_word] = chunk + 1
                if offsets is None:
                    low = chunk * size
                    high = min(low + size, length)
                else:
                    low, high = offsets[chunk], offsets[chunk + 1]
                for i, lead in chunked:
                    args[i] = arrays[i][low:high] if not lead else arrays[i][lead + (slice(low, high),)]  # noqa: RUF005
                if halos is None:
                    where[0] = (chunk, low, high, length, NO_MARGINS)
                else:
                    halos.place(args, arrays, chunk, low, high, where)
                if tracked:
                    if job.timed:
                        words[started_word] = time.monotonic_ns()
                    if tally is not None:
                        tally.limit = words[units_word] + high - low
                value = kernel(*args, **kwargs)
                if value is not None:
                    results.append((chunk, value))
                ran += 1
                words[done_word] = ran
                if tracked:
                    if tally is not None:
                        words[units_word] = tally.limit  # the whole chunk, whatever was reported
                    if marks is not None:
                        marks[chunk] = -1 if value is None else index + 1
            else:
                continue
            break
    except BaseException as exc:
        control.cancel(job.slot)
        error = remote_error(exc, chunk)
    finally:
        install(outer)
        words[current_word] = 0
        chunk_slot()[0] = None
        args.clear()  # drop the views before blocking on the pipe again
        arrays.clear()
        marks = None
    packed: bytes | None = None
    if results and error is None:
        try:
            packed = _pickling.dumps(results)
        except BaseException:
            control.cancel(job.slot)
            error = first_unpicklable(results, "chunk")[1]
    return MapDone(job.job_id, packed, ran, error)


def _run_tasks(batch: TaskBatch, control: ControlBlock, index: int, kernels: _KernelCache) -> TaskDone:
    results: list[Any] = []
    error: RemoteError | None = None
    number = batch.first
    slot = batch.slot
    words = control.words
    current_word = control.worker_words(slot, index)[1] if slot >= 0 else -1
    if slot >= 0:
        words[current_word] = PREPARING
    try:
        fn = kernels.get(batch.fn)
        items = _pickling.loads(batch.items)
        if batch.star:
            args, kwargs = items
            results.append(fn(*args, **kwargs))
        else:
            for number, item in enumerate(items, batch.first):
                if slot >= 0:
                    if control.cancelled(slot):
                        break
                    words[current_word] = number + 1
                results.append(fn(item))
    except BaseException as exc:
        error = remote_error(exc, number)
    finally:
        if slot >= 0:
            words[current_word] = 0
    try:
        packed = _pickling.dumps(results)
    except BaseException:
        good, error = first_unpicklable(list(enumerate(results, batch.first)), "item")
        packed = _pickling.dumps(results[:good])
    return TaskDone(batch.job_id, packed, error)


def first_unpicklable(results: list[tuple[int, Any]], what: str) -> tuple[int, RemoteError]:
    """How many leading results pickle, and the error naming the first that does not."""
    for position, (number, value) in enumerate(results):
        try:
            _pickling.dumps(value)
        except BaseException as exc:  # a __reduce__ may raise anything
            reason = _safe_text(functools.partial(_describe, exc), type(exc).__qualname__)
            wrapped = TypeError(
                f"the return value for {what} {number} cannot be sent back to the "
                f"parent ({type(value).__qualname__}): {reason}"
            )
            wrapped.__cause__ = exc
            return position, remote_error(wrapped, number)
    return len(results), remote_error(TypeError("the return values cannot be pickled"), None)
