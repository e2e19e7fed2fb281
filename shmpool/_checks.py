"""Checking a call's arguments before anything is allocated or sent: the front end's gate.

Every pool runs the same checks (:func:`check_map`, :func:`check_imap`, :func:`check_shape`,
...), so a bad argument raises the same error, with the same message, on every pool, and
always before a worker runs. What passes comes out as one frozen record per call
(:class:`MapRequest`, :class:`ItemRequest`) that the backends read and never re-check.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from ._chunks import ChunkPlan, plan_chunks
from ._halo import Halo, HaloSpec, check_halos
from ._progress import resolve_progress
from ._records import record

__all__ = [
    "ItemRequest",
    "MapRequest",
    "SplitArgs",
    "Whole",
    "check_callable",
    "check_chunk_timeout",
    "check_dtype",
    "check_imap",
    "check_map",
    "check_order",
    "check_retries",
    "check_shape",
    "check_timeout",
    "find_overlap",
    "kernel_name",
    "order_of",
    "split_args",
    "whole",
]

T = TypeVar("T")
Array = np.ndarray  # type: ignore[type-arg]


@dataclass(frozen=True, slots=True)
class Whole(Generic[T]):
    """Marks an argument that every kernel call receives whole (see :func:`whole`)."""

    obj: T


def whole(obj: T) -> Whole[T]:
    """Pass ``obj`` to every kernel call of a ``map`` whole instead of chunked.

    For a lookup table, a parameter vector or a shared array read as a whole. A pool array
    (or view of one) arrives as a view on the same memory; a plain writable NumPy array on a
    SharedPool is staged like a chunked one (copied in, and back after the map).
    """
    return Whole(obj)


def kernel_name(kernel: Callable[..., Any]) -> str:
    """A readable name for messages: the qualified name, else the repr."""
    return getattr(kernel, "__qualname__", None) or repr(kernel)


def check_callable(fn: object, what: str) -> None:
    """TypeError unless ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {fn!r}")


def check_dtype(dtype: np.dtype) -> np.dtype:  # type: ignore[type-arg]
    """Refuse dtypes that hold Python objects (anywhere, structured fields included): their
    bytes are pointers into one process."""
    if dtype.hasobject:
        raise TypeError(
            f"dtype {dtype} holds Python objects, which cannot live in shared memory; "
            "use a numeric, bool, string or structured dtype without object fields"
        )
    return dtype


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(value)
    return int(value)


def check_shape(shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints; TypeError or ValueError otherwise."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(_index(d) for d in shape)  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed, got shape {dims}")
    return dims


def check_order(order: object) -> str:
    """``order`` if it is "C" or "F"; ValueError otherwise."""
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    return str(order)


def order_of(a: Array) -> str:
    """The memory order an array shaped like ``a`` should get: "F" for Fortran arrays."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds: None, or a finite positive number (a bool is not one).

    An infinite timeout is refused rather than taken as None: ``threading.Event.wait``
    overflows on it, and "no timeout" is spelled None everywhere in the standard library.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
    value = float(timeout)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    return value


def check_retries(retries: object) -> int:
    """``retries`` as a non-negative int (a bool is not one)."""
    if type(retries) is int and retries >= 0:  # the common case, without an ABC check
        return retries
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
        raise TypeError(f"retries must be a non-negative int, got {retries!r}")
    if retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    return int(retries)


def check_chunk_timeout(chunk_timeout: object) -> float | None:
    """``chunk_timeout`` as seconds: None, or a finite positive number."""
    if chunk_timeout is None:
        return None
    try:
        return check_timeout(chunk_timeout)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("timeout", "chunk_timeout", 1)) from None


# np.shares_memory solves a small integer program per pair; past this much work it gives up,
# and the pair is taken to overlap (refused, never silently wrong).
_OVERLAP_MAX_WORK = 100_000
_TOO_HARD: type[Exception] = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)  # NumPy < 1.25


def find_overlap(arrays: dict[int, Array]) -> tuple[int, int] | None:
    """Two positions whose distinct arrays share memory while one of them is writable, or
    None. Interleaved views (``x[::2]`` and ``x[1::2]``) share no element and pass."""
    items = list(arrays.items())
    for n, (i, a) in enumerate(items):
        for j, b in items[n + 1 :]:
            if a is b or not (a.flags.writeable or b.flags.writeable):
                continue
            try:
                if np.shares_memory(a, b, max_work=_OVERLAP_MAX_WORK):
                    return i, j
            except _TOO_HARD:
                return i, j
    return None


@record
class SplitArgs:
    """The validated positional arguments of a map."""

    chunked: dict[int, Array]  # position -> array
    axes: dict[int, int]  # position -> non-negative axis of that array
    wholes: dict[int, Any]  # position -> object
    length: int
    bytes_per_index: int
    count: int  # positional arguments in all
    # position -> how far its views reach past the chunk (halo() arguments, which are also
    # in ``chunked``, as read-only views: the kernel reads them only).
    halos: dict[int, HaloSpec] = field(default_factory=dict)


def _check_array(arg: Any, what: str) -> None:
    # Looked up, not imported: a masked array exists only once numpy.ma is imported, and
    # np.ma on first use imports it (about 17 ms, paid by the first map of a fresh process).
    masked = sys.modules.get("numpy.ma")
    if masked is not None and isinstance(arg, masked.MaskedArray):
        # Its data without its mask would be silently wrong; its mask is a second array.
        raise TypeError(
            f"{what} is a masked array, which map cannot pass on with its mask; pass "
            "a.data and a.mask as two arrays (or np.ma.filled(a, value))"
        )
    # A subclass (np.matrix, a user's class) would arrive as a plain ndarray; a memmap is
    # only an ndarray over a file, and stays welcome.
    if type(arg) is not np.ndarray and not isinstance(arg, np.memmap):
        raise TypeError(
            f"{what} is a {type(arg).__name__}, an ndarray subclass that map would pass on "
            "as a plain ndarray; pass np.asarray(a) if that is what you want"
        )
    check_dtype(arg.dtype)


def split_args(args: tuple[Any, ...], axis: object) -> SplitArgs:
    """Sort positional arguments into chunked arrays and whole objects and check them."""
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise ValueError(f"axis must be an int, got {axis!r}")
    axis = int(axis)
    chunked: dict[int, Array] = {}
    axes: dict[int, int] = {}
    wholes: dict[int, Any] = {}
    halos: dict[int, HaloSpec] = {}
    for i, given in enumerate(args):
        arg = given
        if isinstance(given, Halo):
            if not isinstance(given.array, np.ndarray):  # a DaskPool's cluster array, elsewhere
                raise TypeError(
                    f"positional argument {i} of map is a halo() of a {type(given.array).__name__}, "
                    "which only its own DaskPool maps over; here, pass a halo() of a NumPy array"
                )
            halos[i] = given.spec
            arg = given.array.view()  # read-only: neighbouring chunks read its margins
            arg.flags.writeable = False
        if isinstance(arg, Whole):
            if isinstance(arg.obj, np.ndarray):
                _check_array(arg.obj, f"the whole() argument {i}")
            wholes[i] = arg.obj
            continue
        if not isinstance(arg, np.ndarray):
            raise TypeError(
                f"positional argument {i} of map is a {type(arg).__name__}, not a NumPy array; "
                "pass arrays to split, wrap other objects in shmpool.whole(), or pass them "
                "as keyword arguments"
            )
        _check_array(arg, f"positional argument {i} of map")
        if arg.ndim == 0:
            raise ValueError(
                f"positional argument {i} of map is a 0-d array, which has no axis to split; "
                "wrap it in shmpool.whole() to pass it to every call"
            )
        if not -arg.ndim <= axis < arg.ndim:
            raise ValueError(f"axis {axis} is out of bounds for argument {i} of shape {arg.shape}")
        chunked[i] = arg
        axes[i] = axis % arg.ndim
    if not chunked:
        raise ValueError("map needs at least one NumPy array to split into chunks")
    lengths = {i: a.shape[axes[i]] for i, a in chunked.items()}
    if len(set(lengths.values())) > 1:
        shapes = ", ".join(f"argument {i}: {a.shape}" for i, a in chunked.items())
        raise ValueError(f"arrays split along axis {axis} must have the same length along it; got {shapes}")
    length = next(iter(lengths.values()))
    per_index = sum(a.nbytes // a.shape[axes[i]] if a.shape[axes[i]] else 0 for i, a in chunked.items())
    if halos:
        others = {j: a for j, a in [*chunked.items(), *wholes.items()] if j not in halos}
        check_halos(halos, {i: args[i].array for i in halos}, others, length)
    return SplitArgs(chunked, axes, wholes, length, per_index, len(args), halos)


@record
class MapRequest:
    """A map call, checked: what every backend needs to run it."""

    kernel: Callable[..., Any]
    name: str
    split: SplitArgs
    plan: ChunkPlan
    kwargs: dict[str, Any]
    bar_options: dict[str, Any] | None
    timeout: float | None
    retries: int = 0  # runs more of a chunk whose worker died (see check_retries)
    chunk_timeout: float | None = None  # seconds one chunk may run

    def where(self, chunk: int | None) -> str:
        """What raised, for messages: the kernel, and the chunk with its indices."""
        if chunk is None:
            return f"kernel {self.name!r}"
        low, high = self.plan.bounds(chunk)
        return f"kernel {self.name!r} on chunk {chunk} (indices {low}:{high} of the split axis)"


def check_map(
    kernel: Callable[..., Any],
    arrays: tuple[Any, ...],
    axis: object,
    chunks: object,
    progress: object,
    default_progress: object,
    timeout: object,
    workers: int,
    kwargs: dict[str, Any],
    own: Callable[[], tuple[SplitArgs, ChunkPlan] | None] = lambda: None,
    retries: object = 0,
    chunk_timeout: object = None,
    no_chunk_timeout: tuple[str, str | None] = ("pool", None),
) -> MapRequest:
    """Check the arguments of a map for a pool of ``workers``; raise on bad input.

    ``own()``: the backend's split and plan when the arrays are of its own kind (see
    ``Backend.split_own``), else None, and they are checked here as NumPy arrays.
    ``no_chunk_timeout``: the pool's kind, and why it cannot stop one chunk (None: it can).
    """
    check_callable(kernel, "kernel")
    mine = own()
    if mine is None:
        split = split_args(arrays, axis)
        plan = plan_chunks(split.length, chunks, workers, split.bytes_per_index)
    else:
        split, plan = mine
    bar_options = resolve_progress(progress, default_progress)
    seconds = check_timeout(timeout)
    tries = check_retries(retries)
    per_chunk = check_chunk_timeout(chunk_timeout)
    if per_chunk is not None and no_chunk_timeout[1] is not None:
        raise ValueError(f"chunk_timeout is not available on a {no_chunk_timeout[0]}: {no_chunk_timeout[1]}")
    return MapRequest(
        kernel, kernel_name(kernel), split, plan, kwargs, bar_options, seconds, tries, per_chunk
    )


@record
class ItemRequest:
    """An imap (or submit) call, checked. ``chunksize`` None means "auto"."""

    fn: Callable[..., Any]
    name: str
    chunksize: int | None
    ordered: bool
    bar_options: dict[str, Any] | None
    total: int | None
    retries: int = 0  # runs more of an item whose worker died


def check_imap(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    ordered: object,
    chunksize: object,
    progress: object,
    default_progress: object,
    retries: object = 0,
) -> ItemRequest:
    """Check the arguments of an imap; raise on bad input."""
    check_callable(fn, "fn")
    tries = check_retries(retries)
    if chunksize != "auto" and (
        isinstance(chunksize, bool) or not isinstance(chunksize, numbers.Integral) or chunksize < 1  # type: ignore[operator]
    ):
        raise ValueError(f"chunksize must be a positive int or 'auto', got {chunksize!r}")
    if not isinstance(iterable, Iterable):
        raise TypeError(f"imap needs an iterable, got {type(iterable).__name__}")
    bar_options = resolve_progress(progress, default_progress)
    try:
        total: int | None = len(iterable)  # type: ignore[arg-type]
    except TypeError:
        total = None
    fixed = None if chunksize == "auto" else int(chunksize)  # type: ignore[call-overload]
    return ItemRequest(fn, kernel_name(fn), fixed, bool(ordered), bar_options, total, tries)
