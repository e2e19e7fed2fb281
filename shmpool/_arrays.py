"""Array references: what a shared array is on the wire, and the views rebuilt from one.

Each process keeps a registry of the blocks it has mapped: the parent registers the
blocks it creates, a worker the blocks it attaches (once; the mapping is kept for later
calls). An :class:`ArrayRef` names a block by path and says where in it the array starts,
its shape, strides and dtype. Turning an array into a ref and back costs no copy: the
rebuilt array is a view on the same memory.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import operator
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._records import record
from ._segments import map_fd

try:  # NumPy 2
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # pragma: no cover - NumPy 1.x
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]

__all__ = [
    "ArrayRef",
    "Mapping",
    "attach",
    "forget",
    "locate",
    "make_lease",
    "ref_of",
    "register",
    "view_from_ref",
]


@record
class ArrayRef:
    """A shared array by reference: block path and size, byte offset, shape, strides, dtype.

    ``dtype`` is the dtype's string (``"<f8"``) when that says all of it, which pickles
    several times faster than a dtype object; structured dtypes travel as themselves.
    """

    path: str
    block_size: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str | np.dtype  # type: ignore[type-arg]
    writeable: bool

    def __reduce__(self) -> tuple[object, ...]:
        return (ArrayRef, _ref_fields(self))


_ref_fields = operator.attrgetter("path", "block_size", "offset", "shape", "strides", "dtype", "writeable")


def _dtype_token(dtype: np.dtype) -> str | np.dtype:  # type: ignore[type-arg]
    return dtype.str if dtype.fields is None and dtype.subdtype is None else dtype


@dataclass(frozen=True, slots=True)
class Mapping:
    """One block mapped into this process.

    ``lease``, where the block's owner gives one (the parent's block store), returns the
    buffer that arrays on the block must be built on: an object whose life is the
    allocation's, so that the owner learns when its last view is gone. Without one
    (workers), views are built on the mmap itself.
    """

    path: str
    size: int
    mmap: mmap.mmap
    address: int
    lease: Callable[[Mapping], object] | None = None

    def buffer(self) -> object:
        """What a new array on this block is built on (see ``lease``)."""
        return self.mmap if self.lease is None else self.lease(self)


_lock = threading.Lock()
_attach_lock = threading.Lock()
_by_path: dict[str, Mapping] = {}
_by_mmap_id: dict[int, Mapping] = {}
_addresses: list[int] = []  # sorted start addresses, parallel to _ordered
_ordered: list[Mapping] = []


def _address_of(mapping: mmap.mmap) -> int:
    data: int = np.frombuffer(mapping, dtype=np.uint8, count=1).__array_interface__["data"][0]
    return data


def register(path: str, mapping: mmap.mmap, lease: Callable[[Mapping], object] | None = None) -> Mapping:
    """Record that ``mapping`` (the whole block at ``path``) is mapped in this process;
    ``lease`` is described at :class:`Mapping`."""
    entry = Mapping(path, len(mapping), mapping, _address_of(mapping), lease)
    with _lock:
        _by_path[path] = entry
        _by_mmap_id[id(mapping)] = entry
        i = bisect.bisect_left(_addresses, entry.address)
        _addresses.insert(i, entry.address)
        _ordered.insert(i, entry)
    return entry


def make_lease(entry: Mapping) -> object:
    """A new buffer object over all of ``entry``'s block, to build one allocation's arrays on.

    A ctypes array: NumPy keeps it as the ``base`` of every array built on it (it unwraps a
    ``memoryview`` to the mmap beneath, which would defeat the purpose), it takes weak
    references, and it holds a buffer export of the mmap, so the mmap cannot be closed
    under it.
    """
    return (ctypes.c_char * entry.size).from_buffer(entry.mmap)


def _at_address(address: int) -> Mapping | None:
    with _lock:
        i = bisect.bisect_left(_addresses, address)
        if i < len(_addresses) and _addresses[i] == address:
            return _ordered[i]
    return None


def forget(path: str) -> None:
    """Drop this process's record of a block.

    The mapping is not closed here: NumPy arrays keep their buffer's owner alive as their
    ``base`` but hold no buffer export, so ``mmap.close()`` would succeed under a live view
    and the next access would crash (numpy/numpy#18294). The mmap object unmaps itself when
    the last array that uses it is garbage-collected; a freed block never crashes a view.
    """
    with _lock:
        entry = _by_path.pop(path, None)
        if entry is None:
            return
        del _by_mmap_id[id(entry.mmap)]
        i = _ordered.index(entry)
        del _ordered[i]
        del _addresses[i]


def attach(path: str, size: int) -> Mapping:
    """The mapping of the block at ``path``, mapping it now if this process has not yet."""
    entry = _by_path.get(path)
    if entry is not None:
        return entry
    with _attach_lock:  # two threads meeting the same new block map it once
        entry = _by_path.get(path)
        if entry is not None:
            return entry
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"shared block {path} no longer exists: the array was freed or its pool shut down"
            ) from None
        try:
            mapping = map_fd(fd, size)
        finally:
            os.close(fd)
        return register(path, mapping)


def locate(array: np.ndarray) -> tuple[Mapping, int] | None:  # type: ignore[type-arg]
    """The block holding all of ``array``'s memory and the byte offset of its first
    element, or None when the array does not live in a block mapped here."""
    if array.size == 0:
        base: object = array
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, ctypes.Array):  # a lease (make_lease): starts where its block does
            entry = _at_address(ctypes.addressof(base))
        else:
            entry = _by_mmap_id.get(id(base)) if isinstance(base, mmap.mmap) else None
        if entry is None:
            return None
        return entry, array.__array_interface__["data"][0] - entry.address
    start = array.__array_interface__["data"][0]
    if array.flags.c_contiguous or array.flags.f_contiguous:
        low, high = start, start + array.nbytes  # byte_bounds' answer, without its second lookup
    else:
        low, high = _byte_bounds(array)
    with _lock:
        i = bisect.bisect_right(_addresses, low) - 1
        if i < 0:
            return None
        entry = _ordered[i]
    if high > entry.address + entry.size:
        return None
    return entry, start - entry.address


def ref_of(array: np.ndarray, found: tuple[Mapping, int] | None = None) -> ArrayRef | None:  # type: ignore[type-arg]
    """The reference of a shared array, or None if it does not live in a block.

    ``found`` is ``locate(array)`` when the caller has it already.
    """
    if found is None:
        found = locate(array)
        if found is None:
            return None
    entry, offset = found
    return ArrayRef(
        entry.path,
        entry.size,
        offset,
        array.shape,
        array.strides,
        _dtype_token(array.dtype),
        bool(array.flags.writeable),
    )


def view_from_ref(ref: ArrayRef) -> np.ndarray:  # type: ignore[type-arg]
    """The array that ``ref`` names, as a view on this process's mapping of its block."""
    entry = attach(ref.path, ref.block_size)
    # Built on the lease where there is one: a view rebuilt in the parent (a kernel's result
    # that views a shared array) keeps the allocation alive like any other view.
    buffer = entry.buffer()
    if 0 in ref.shape:
        # An empty view's offset and strides may point anywhere; any empty view will do.
        view: np.ndarray = np.ndarray(ref.shape, ref.dtype, buffer=buffer)  # type: ignore[type-arg,call-overload]
    else:
        view = np.ndarray(ref.shape, ref.dtype, buffer=buffer, offset=ref.offset, strides=ref.strides)  # type: ignore[call-overload]
    if not ref.writeable:
        view.flags.writeable = False
    return view


def _reset_lock_after_fork() -> None:
    # A fork taken while another thread held a lock would leave the child's copy locked.
    global _lock, _attach_lock
    _lock = threading.Lock()
    _attach_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)
