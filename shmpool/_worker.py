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
from collections.abc import Callable
from typing import Any

from . import _arrays, _pickling
from ._control import ControlBlock
from ._lifeline import watch_parent
from ._protocol import InitFailed, MapDone, MapJob, Ready, Release, RemoteError, Stop

__all__ = ["remote_error", "worker_main"]


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
    """The last kernel this worker unpickled, keyed by its pickled bytes: a map repeated
    with the same kernel (iterative algorithms) skips the unpickling."""

    def __init__(self) -> None:
        self._key = b""
        self._kernel: Callable[..., Any] | None = None

    def get(self, pickled: bytes) -> Callable[..., Any]:
        if self._kernel is None or pickled != self._key:
            self._kernel = _pickling.loads(pickled)
            self._key = pickled
        return self._kernel


def worker_main(
    conn: Any,
    index: int,
    workers: int,
    control_path: str,
    init_payload: bytes | None,
) -> None:
    """Entry point of worker ``index``: run the initializer, then serve the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent(lambda: None)
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
        if isinstance(message, MapJob):
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
        wholes, kwargs = _pickling.loads(job.payload)
        arrays.extend(
            _arrays.view_from_ref(ref) if ref is not None else wholes[i] for i, ref in enumerate(job.arrays)
        )
        args.extend(arrays)
        chunked = [(i, (slice(None),) * job.axes[i]) for i, ref in enumerate(job.arrays) if ref is not None]
        plan, slot = job.plan, job.slot
        while True:
            start, stop = control.claim(slot)
            if start == stop:
                break
            for chunk in range(start, stop):
                if control.cancelled(slot):
                    break
                words[current_word] = chunk + 1
                low, high = plan.bounds(chunk)
                part = slice(low, high)
                for i, lead in chunked:
                    args[i] = arrays[i][lead + (part,)]  # noqa: RUF005 - hot loop
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
            error = _unpicklable_result(results)
    return MapDone(job.job_id, index, packed, ran, error)


def _unpicklable_result(results: list[tuple[int, Any]]) -> RemoteError:
    for chunk, value in results:
        try:
            _pickling.dumps(value)
        except Exception as exc:
            wrapped = TypeError(
                f"the kernel's return value for chunk {chunk} cannot be sent back to the "
                f"parent ({type(value).__qualname__}): {exc}"
            )
            wrapped.__cause__ = exc
            return remote_error(wrapped, chunk)
    return remote_error(TypeError("the kernel's return values cannot be pickled"), None)
