"""What runs on a Dask worker for a DaskPool: chunks, imap batches and submitted calls.

Dask worker processes import this module by name, so it holds no state of the caller and
imports no Dask: only what a task needs to run the user's code and say what it changed.
A chunk's views arrive inside its task; the kernel runs on the worker's copy; the chunks it
changed (compared byte for byte, before and after) go back, and nothing else.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from typing import Any

import numpy as np

from . import _pickling
from ._active import mark_worker_process
from ._halo import clear_chunk, enter_chunk
from ._protocol import RemoteError
from ._worker import first_unpicklable, remote_error

__all__ = ["Payload", "call_kernel", "enter_worker", "origin", "run_call", "run_chunk", "run_items"]

Array = np.ndarray  # type: ignore[type-arg]


class Payload:
    """Bytes pickled once in the caller, unpickled at most once per Dask worker process.

    It is the result of a task, so every task of a map on one worker gets the same object
    (Dask hands a task its dependencies without copying). It pickles as its bytes, so a
    transfer to another worker costs no re-pickling, and it is rebuilt fresh there.
    """

    __slots__ = ("_loaded", "_lock", "is_spec", "origin", "raw")

    def __init__(self, raw: bytes, origin: str, is_spec: bool):
        self.raw = raw
        self.origin = origin  # "host:pid" of the caller
        self.is_spec = is_spec  # a map's spec (see DaskPool._plan), else one function
        self._lock = threading.Lock()
        self._loaded: tuple[Any, RemoteError | None] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Payload, (self.raw, self.origin, self.is_spec))

    def __sizeof__(self) -> int:  # Dask's memory accounting (sizeof) uses it
        return object.__sizeof__(self) + len(self.raw)

    def load(self) -> Any:
        """The unpickled value; raises :class:`_LoadFailed` when it cannot be unpickled
        here (a module the caller has that this worker lacks)."""
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = (_load_spec(self.raw) if self.is_spec else pickle.loads(self.raw), None)
                except Exception as exc:
                    self._loaded = (None, remote_error(exc, None))
        value, error = self._loaded
        if error is not None:
            raise _LoadFailed(error)
        return value


def _load_spec(raw: bytes) -> tuple[Any, ...]:
    kernel, arguments, layout, writable, read_only_wholes = pickle.loads(raw)
    wholes, kwargs = pickle.loads(arguments)
    return pickle.loads(kernel), kwargs, wholes, layout, writable, read_only_wholes


class _LoadFailed(Exception):
    def __init__(self, error: RemoteError):
        super().__init__(error.message)
        self.error = error


def origin() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enter_worker(caller: str) -> None:
    # A decorated kernel called by a kernel must run in place, as in a SharedPool worker,
    # not start a pool of its own. Only in a separate process: a Dask worker thread in the
    # caller's own process (LocalCluster(processes=False)) must leave the caller alone.
    if origin() != caller:
        mark_worker_process()


def _raw_bytes(a: Array) -> Array:
    """``a``'s bytes in C order, as a flat uint8 array (a view when ``a`` is C-contiguous)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _same_bytes(a: Array, b: Array) -> bool:
    # Bytes, not values: NaN == NaN here, and -0.0 != 0.0, as a write would leave them.
    if a.nbytes == 0:
        return True
    x, y = _raw_bytes(a), _raw_bytes(b)
    if a.nbytes % 8 == 0:  # compare 8-byte words: an eighth of the elements to visit
        x, y = x.view(np.uint64), y.view(np.uint64)
    return bool(np.array_equal(x, y))


def _element_diff(pristine: Array, private: Array) -> tuple[Array, Array] | None:
    """The C-order flat indices of the elements whose bytes differ, and their new values."""
    if pristine.nbytes == 0 or _same_bytes(pristine, private):
        return None
    rows = pristine.size
    before = _raw_bytes(pristine).reshape(rows, -1)
    after = _raw_bytes(private).reshape(rows, -1)
    changed = np.flatnonzero((before != after).any(axis=1))
    return changed, np.ascontiguousarray(private).reshape(-1)[changed]


def call_kernel(
    kernel: Any, args: list[Any], kwargs: dict[str, Any], index: int
) -> tuple[bytes | None, RemoteError | None]:
    """Run the kernel on chunk ``index``: its pickled return value (None for None), or the
    error it raised, or the error that its return value cannot be pickled."""
    try:
        value = kernel(*args, **kwargs)
    except Exception as exc:
        return None, remote_error(exc, index)
    if value is None:
        return None, None
    try:
        return _pickling.dumps(value), None
    except Exception:
        return None, first_unpicklable([(index, value)], "chunk")[1]


def run_chunk(
    payload: Payload, index: int, arrays: tuple[Array, ...], where: tuple[Any, ...]
) -> tuple[Any, ...]:
    """Run the kernel on one chunk: ``(result bytes, changed chunks, whole() diffs, error)``.

    ``where`` is ``(start, stop, length, margins)``, what :func:`shmpool.chunk_info` tells
    the kernel.

    ``arrays`` are this chunk of each distinct chunked array. A changed chunk is reported as
    ``(slot, array)``; a changed writable whole() array as ``(position, indices, values)``.
    """
    try:
        kernel, kwargs, wholes, layout, writable, read_only_wholes = payload.load()
    except _LoadFailed as failed:
        return None, (), (), failed.error
    enter_worker(payload.origin)
    views: list[Array] = []
    before: dict[int, Array] = {}
    for slot, arrived in enumerate(arrays):
        view = arrived
        if writable[slot]:
            if not view.flags.writeable:  # a buffer that arrived read-only
                view = view.copy()
            before[slot] = view.copy()
        elif view.flags.writeable:
            view = view.view()
            view.flags.writeable = False  # as in SharedPool: writes to it raise
        views.append(view)
    private: dict[int, Array] = {}
    args: list[Any] = []
    for position, slot in enumerate(layout):
        if slot >= 0:
            args.append(views[slot])
            continue
        obj = wholes[position]
        if isinstance(obj, np.ndarray) and position not in read_only_wholes and not obj.dtype.hasobject:
            # Every chunk writes to its own copy, so a chunk's writes can be told apart
            # from the spec's pristine copy, which chunks on this worker share.
            obj = private[position] = obj.copy(order="K")
        elif isinstance(obj, np.ndarray) and obj.flags.writeable and position in read_only_wholes:
            obj.flags.writeable = False
        args.append(obj)
    enter_chunk(index, *where)
    try:
        packed, error = call_kernel(kernel, args, kwargs, index)
    finally:
        clear_chunk()
    del args
    # Changes are sent back after an error too: SharedPool keeps what a failing chunk wrote.
    changed = tuple((slot, views[slot]) for slot, old in before.items() if not _same_bytes(old, views[slot]))
    diffs = []
    for position, copy in private.items():
        diff = _element_diff(wholes[position], copy)
        if diff is not None:
            diffs.append((position, *diff))
    return packed, changed, tuple(diffs), error


def run_items(payload: Payload, first: int, items: bytes) -> tuple[bytes, RemoteError | None, float]:
    """Call the payload's function on each item of an imap batch (numbered from ``first``):
    the pickled results of the items that ran, the error that stopped the batch, and the
    seconds the function took (what ``chunksize="auto"`` sizes batches from)."""
    try:
        fn = payload.load()
    except _LoadFailed as failed:
        return _pickling.dumps([]), failed.error, 0.0
    enter_worker(payload.origin)
    results: list[Any] = []
    error: RemoteError | None = None
    start = time.perf_counter()
    try:
        for item in pickle.loads(items):
            results.append(fn(item))
    except Exception as exc:
        error = remote_error(exc, first + len(results))
    work = time.perf_counter() - start
    try:
        return _pickling.dumps(results), error, work
    except Exception:
        good, error = first_unpicklable(list(enumerate(results, first)), "item")
        return _pickling.dumps(results[:good]), error, work


def run_call(fn: bytes, args: bytes, caller: str) -> tuple[bytes | None, RemoteError | None]:
    """``fn(*args, **kwargs)`` for ``submit``: its pickled result, or the error it raised."""
    try:
        function = pickle.loads(fn)
        positional, keywords = pickle.loads(args)
    except Exception as exc:
        return None, remote_error(exc, None)
    enter_worker(caller)
    try:
        value = function(*positional, **keywords)
    except Exception as exc:
        return None, remote_error(exc, None)
    try:
        return _pickling.dumps(value), None
    except Exception:
        return None, first_unpicklable([(0, value)], "call")[1]
