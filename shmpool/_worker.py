"""The worker process: a short loop that runs whatever its pipe brings.

Each worker owns one duplex pipe to its pool (no shared queue, so a worker killed at any
moment cannot leave a lock held). It ignores SIGINT (the parent alone turns Ctrl-C into a
cancellation), exits when its parent dies, keeps every block it attached mapped until the
parent says it was freed, and caches the last kernel it unpickled.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _arrays, _pickling
from ._control import ControlBlock
from ._lifeline import default_ending_signals, watch_parent
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, RemoteError, Stop, TaskBatch, TaskDone
from ._segments import raise_fd_limit

__all__ = ["IN_WORKER", "remote_error", "worker_main"]

# True in a worker process: kernels called there run in place instead of on a pool.
IN_WORKER = False


def remote_error(exc: BaseException, chunk: int | None) -> RemoteError:
    """Capture ``exc`` so that it reaches the parent whatever it is made of."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled: bytes | None = _pickling.dumps(exc)
    except Exception:
        pickled = None
    kind = type(exc)
    return RemoteError(pickled, f"{kind.__module__}.{kind.__qualname__}", str(exc), text, chunk)


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
    global IN_WORKER
    IN_WORKER = True
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
    except Exception as exc:
        conn.send_bytes(pickle.dumps(InitFailed(index, remote_error(exc, None))))
        return
    conn.send_bytes(pickle.dumps(Ready(index)))
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
    try:
        kernel = kernels.get(job.kernel)
        wholes = _pickling.loads(job.wholes)
        kwargs = _pickling.loads(job.kwargs)
        arrays.extend(
            _arrays.view_from_ref(ref) if ref is not None else wholes[i] for i, ref in enumerate(job.arrays)
        )
        args.extend(arrays)
        chunked = [(i, (slice(None),) * job.axes[i]) for i, ref in enumerate(job.arrays) if ref is not None]
        plan, slot = job.plan, job.slot
        cancel_word = control.cancel_word(slot)
        # The per-chunk loop is the W1 hot path: no method calls but the kernel's.
        size, length, offsets = plan.size, plan.length, plan.offsets
        while True:
            start, stop = control.claim(slot, index)
            if start == stop:
                break
            for chunk in range(start, stop):
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
                value = kernel(*args, **kwargs)
                if value is not None:
                    results.append((chunk, value))
                ran += 1
                words[done_word] = ran
            else:
                continue
            break
    except Exception as exc:
        control.cancel(job.slot)
        error = remote_error(exc, chunk)
    finally:
        words[current_word] = 0
        args.clear()  # drop the views before blocking on the pipe again
        arrays.clear()
    packed: bytes | None = None
    if results and error is None:
        try:
            packed = _pickling.dumps(results)
        except Exception:
            control.cancel(job.slot)
            error = _first_unpicklable(results, "chunk")[1]
    return MapDone(job.job_id, index, packed, ran, error)


def _run_tasks(batch: TaskBatch, control: ControlBlock, index: int, kernels: _KernelCache) -> TaskDone:
    results: list[Any] = []
    error: RemoteError | None = None
    number = batch.first
    slot = batch.slot
    words = control.words
    current_word = control.worker_words(slot, index)[1] if slot >= 0 else -1
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
    except Exception as exc:
        error = remote_error(exc, number)
    finally:
        if slot >= 0:
            words[current_word] = 0
    try:
        packed = _pickling.dumps(results)
    except Exception:
        good, error = _first_unpicklable(list(enumerate(results, batch.first)), "item")
        packed = _pickling.dumps(results[:good])
    return TaskDone(batch.job_id, index, packed, error)


def _first_unpicklable(results: list[tuple[int, Any]], what: str) -> tuple[int, RemoteError]:
    """How many leading results pickle, and the error naming the first that does not."""
    for position, (number, value) in enumerate(results):
        try:
            _pickling.dumps(value)
        except Exception as exc:
            wrapped = TypeError(
                f"the return value for {what} {number} cannot be sent back to the "
                f"parent ({type(value).__qualname__}): {exc}"
            )
            wrapped.__cause__ = exc
            return position, remote_error(wrapped, number)
    return len(results), remote_error(TypeError("the return values cannot be pickled"), None)
