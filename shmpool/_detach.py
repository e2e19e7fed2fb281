"""Move a mapped block's contents onto private memory at the same address.

``free(a)`` promises both that the block's space is given back at once and that views of
``a`` that remain stay valid, data included. The space of a tmpfs file comes back only
when no process maps it or it is truncated, and a truncated file kills whoever touches
its pages (SIGBUS). So, before the file is truncated, the parent's mapping is replaced in
place by anonymous memory holding a copy of the data: the views keep their addresses and
contents, the file's pages are no longer referenced here, and truncating it frees them.

Linux only (``mremap`` with ``MREMAP_FIXED``); elsewhere :func:`detach` says it could not,
and the space comes back when the last view is gone instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

__all__ = ["detach"]

_MAP_FAILED = ctypes.c_void_p(-1).value
_MREMAP_MAYMOVE = 1
_MREMAP_FIXED = 2


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.mremap.restype = ctypes.c_void_p
        # mremap is variadic; its fifth argument (the new address) is a pointer, passed
        # like any other on the ABIs Linux runs on.
        libc.mremap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def detach(mapping: mmap.mmap, address: int) -> bool:
    """Give the mapping at ``address`` (all of ``mapping``) private memory with the same
    contents, in place; whether it was done.

    The caller makes sure nothing writes to the block meanwhile (it is being freed).
    """
    if _libc is None:
        return False
    length = -(-len(mapping) // mmap.PAGESIZE) * mmap.PAGESIZE
    fresh = _libc.mmap(
        None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
    )
    if fresh is None or fresh == _MAP_FAILED:
        return False
    ctypes.memmove(fresh, address, len(mapping))
    moved = _libc.mremap(fresh, length, length, _MREMAP_MAYMOVE | _MREMAP_FIXED, address)
    if moved != address:
        _libc.munmap(fresh, length)
        return False
    return True
