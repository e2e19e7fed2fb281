"""One ``map`` from start to end: check, stage, send, wait, copy back, collect.

:func:`plan_map` does everything that can fail on bad input, before anything is allocated
or sent; :meth:`MapRun.execute` then runs it (in the caller's thread for ``map``, in a
helper thread for ``map_async``). A run can be cancelled from another thread.
"""

from __future__ import annotations

import inspect
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np

from . import _arrays, _pickling
from ._args import SplitArgs, split_args
from ._chunks import ChunkPlan, plan_chunks
from ._dispatch import Dispatcher, MapCall
from ._progress import TICK_S, open_bar, resolve_progress
from ._protocol import MapJob
from ._remote import rebuild_error

if TYPE_CHECKING:
    from .pool import SharedPool

__all__ = ["CANCEL_GRACE_S", "MapCheck", "MapRun", "check_map", "dumps_or_raise", "plan_map"]

# After Ctrl-C or a cancel, how long running chunks get to finish before their workers are
# killed (and replaced). Chunks are usually short; a stuck one must not hold the caller.
CANCEL_GRACE_S = 1.0


def dumps_or_raise(obj: object, what: str) -> bytes:
    """Pickle ``obj`` for the workers; TypeError naming ``what`` if it cannot be."""
    try:
        return _pickling.dumps(obj)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled to send to the workers: {exc}") from exc


# Kernels that cloudpickle pickles by reference (importable module-level functions) give the
# same bytes every time: keep them per function instead of pickling once per map. Kernels
# pickled by value (lambdas, closures, __main__ functions) are pickled every time, since
# what they capture may have changed.
_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()
_should_pickle_by_reference = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)


def dumps_kernel(kernel: Callable[..., Any], what: str) -> bytes:
    """:func:`dumps_or_raise` for a kernel, cached when it pickles by reference."""
    try:
        cached = _by_reference.get(kernel)
    except TypeError:  # not hashable or not weak-referenceable
        return dumps_or_raise(kernel, what)
    if cached is not None:
        return cached
    data = dumps_or_raise(kernel, what)
    if _should_pickle_by_reference is not None and inspect.isfunction(kernel):
        try:
            if _should_pickle_by_reference(kernel):
                _by_reference[kernel] = data
        except Exception:
            pass
    return data


def kernel_name(kernel: Callable[..., Any]) -> str:
    """A readable name for messages: the qualified name, else the repr."""
    return getattr(kernel, "__qualname__", None) or repr(kernel)


@dataclass
class MapRun:
    """A checked map, ready to run; ``call`` is set once it has been sent."""

    pool: SharedPool
    name: str
    kernel_bytes: bytes
    split: SplitArgs
    plan: ChunkPlan
    kwargs_bytes: bytes
    count: int  # positional arguments
    bar_options: dict[str, Any] | None
    timeout: float | None
    call: MapCall | None = None
    cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Stop the run from any thread: it ends with CancelledError."""
        with self._lock:
            self.cancelled = True
            call = self.call
        if call is not None:
            self._dispatcher.cancel(call)

    @property
    def _dispatcher(self) -> Dispatcher:
        dispatcher = self.pool._res.dispatcher
        assert dispatcher is not None
        return dispatcher

    def execute(self) -> list[Any]:
        """Run the map and return the kernel's return values in chunk order."""
        if self.split.length == 0:
            dumps_or_raise(self.split.wholes, "the whole() arguments")
            return []
        staging = _Staging(self.pool)
        call = None
        try:
            refs, wholes = staging.stage(self.split)
            wholes_bytes = dumps_or_raise(wholes, "the whole() arguments")
            axes = tuple(self.split.axes.get(i, -1) for i in range(self.count))
            kernel, plan, kwargs = self.kernel_bytes, self.plan, self.kwargs_bytes
            with self._lock:
                if self.cancelled:
                    raise CancelledError(f"map of kernel {self.name!r} was cancelled")
                call = self.call = self._dispatcher.submit_map(
                    lambda job_id, slot: MapJob(job_id, slot, kernel, wholes_bytes, kwargs, refs, axes, plan),
                    len(plan),
                )
            self._wait(call)
            # Results may be views of staged copies: rebuild them before the copies go.
            return self._outcome(call)
        finally:
            staging.finish()
            self.pool._count_map(0 if call is None else call.chunks_run, staging.bytes_in, staging.bytes_back)

    def _wait(self, call: MapCall) -> None:
        dispatcher = self._dispatcher
        bar = (
            open_bar(len(self.plan), self.bar_options, "chunk", self.name)
            if self.bar_options is not None
            else None
        )
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                step = TICK_S if bar is not None else None
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    step = left if step is None else min(step, left)
                if call.done.wait(step):
                    break
                if bar is not None:
                    bar.update(dispatcher.control.chunks_done(call.slot) - bar.n)
                if deadline is not None and time.monotonic() >= deadline:
                    dispatcher.cancel(call)
                    dispatcher.kill_workers_of(call)
                    call.done.wait()
                    raise TimeoutError(f"map of kernel {self.name!r} did not finish within {self.timeout} s")
            if bar is not None:
                bar.update(call.chunks_run - bar.n)
        except KeyboardInterrupt:
            stop_call(dispatcher, call)
            raise
        finally:
            if bar is not None:
                bar.close()

    def _outcome(self, call: MapCall) -> list[Any]:
        if call.errors:
            first = min(call.errors, key=lambda e: -1 if e.chunk is None else e.chunk)
            if first.chunk is None:
                where = f"kernel {self.name!r}"
            else:
                low, high = self.plan.bounds(first.chunk)
                where = (
                    f"kernel {self.name!r} on chunk {first.chunk} (indices {low}:{high} of the split axis)"
                )
            raise rebuild_error(first, where)
        if self.cancelled:
            raise CancelledError(f"map of kernel {self.name!r} was cancelled")
        if call.failure is not None:
            raise call.failure
        results: list[Any] = [None] * len(self.plan)
        for reply in call.replies:
            if reply.results is not None:
                for index, value in _pickling.loads(reply.results):
                    results[index] = value
        return results


def stop_call(dispatcher: Dispatcher, call: Any) -> None:
    """Cancel ``call``, give its running work CANCEL_GRACE_S, then kill what still runs."""
    dispatcher.cancel(call)
    if not call.done.wait(CANCEL_GRACE_S):
        dispatcher.kill_workers_of(call)
        call.done.wait()


@dataclass(frozen=True)
class MapCheck:
    """A map call's arguments, checked: what every pool (SharedPool, DaskPool) needs."""

    name: str
    split: SplitArgs
    plan: ChunkPlan
    bar_options: dict[str, Any] | None


def check_map(
    kernel: Callable[..., Any],
    arrays: tuple[Any, ...],
    axis: object,
    chunks: int | Iterable[int] | None,
    progress: object,
    default_progress: object,
    timeout: float | None,
    workers: int,
) -> MapCheck:
    """Check the arguments of a map for a pool of ``workers``; raise on bad input."""
    if not callable(kernel):
        raise TypeError(f"kernel must be callable, got {kernel!r}")
    split = split_args(arrays, axis)
    plan = plan_chunks(split.length, chunks, workers, split.bytes_per_index)
    bar_options = resolve_progress(progress, default_progress)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return MapCheck(kernel_name(kernel), split, plan, bar_options)


def plan_map(
    pool: SharedPool,
    kernel: Callable[..., Any],
    arrays: tuple[Any, ...],
    axis: object,
    chunks: int | Iterable[int] | None,
    progress: object,
    timeout: float | None,
    kwargs: dict[str, Any],
) -> MapRun:
    """Check every argument of a map and pickle its kernel; raise on bad input."""
    pool._check_open()
    checked = check_map(kernel, arrays, axis, chunks, progress, pool._progress, timeout, pool.workers)
    name, split, plan, bar_options = checked.name, checked.split, checked.plan, checked.bar_options
    kernel_bytes = dumps_kernel(kernel, f"kernel {name!r}")
    # Keywords are pickled now, so that one that cannot be pickled fails before staging.
    kwargs_bytes = dumps_or_raise(kwargs, "the keyword arguments")
    return MapRun(pool, name, kernel_bytes, split, plan, kwargs_bytes, len(arrays), bar_options, timeout)


class _Staging:
    """Copies of plain arrays in shared memory for one map, copied back and freed after.

    The same array passed twice is staged once. Read-only arrays are copied in only.
    """

    def __init__(self, pool: SharedPool):
        self._pool = pool
        self._copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # type: ignore[type-arg]
        self.bytes_in = 0
        self.bytes_back = 0

    def _shared(self, array: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        """``array`` if it lives in the pool, else its staged copy."""
        found = _arrays.locate(array)
        if found is not None and found[0].path in self._pool._res.blocks:
            return array
        return self._copy_of(array)

    def _ref(self, array: np.ndarray) -> _arrays.ArrayRef:  # type: ignore[type-arg]
        """The reference of ``array`` in the pool, staging it first if it is not there."""
        found = _arrays.locate(array)
        if found is None or found[0].path not in self._pool._res.blocks:
            array = self._copy_of(array)
            found = None
        ref = _arrays.ref_of(array, found)
        assert ref is not None
        return ref

    def _copy_of(self, array: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        found = self._copies.get(id(array))
        if found is None:
            copy = self._pool._staging_array(array)
            np.copyto(copy, array)
            if not array.flags.writeable:
                copy.flags.writeable = False
            self.bytes_in += array.nbytes
            found = self._copies[id(array)] = (array, copy)
        return found[1]

    def stage(self, split: SplitArgs) -> tuple[tuple[_arrays.ArrayRef | None, ...], dict[int, Any]]:
        """The refs of the chunked arrays (by position) and the whole objects, staged."""
        count = max([*split.chunked, *split.wholes]) + 1
        refs: list[_arrays.ArrayRef | None] = [None] * count
        for i, array in split.chunked.items():
            refs[i] = self._ref(array)
        wholes = {
            i: self._shared(obj) if isinstance(obj, np.ndarray) and obj.dtype != object else obj
            for i, obj in split.wholes.items()
        }
        return tuple(refs), wholes

    def finish(self) -> None:
        """Copy writable originals back, then hand the copies' blocks back to the pool."""
        paths = [self._copy_back(original, copy) for original, copy in self._copies.values()]
        self._copies.clear()  # our own references would keep the blocks from being reused
        for path in paths:
            self._pool._recycle_staging(path)

    def _copy_back(self, original: np.ndarray, copy: np.ndarray) -> str:  # type: ignore[type-arg]
        if original.flags.writeable:
            np.copyto(original, copy)
            self.bytes_back += original.nbytes
        ref = _arrays.ref_of(copy)
        assert ref is not None
        return ref.path
