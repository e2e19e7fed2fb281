"""Pickling for everything that crosses the process boundary.

cloudpickle, so lambdas, closures and functions defined in ``__main__`` work under every
start method, with two additions: an ndarray that lives in a shared block, wherever it sits
(an argument, a keyword, a closure's cell, a result), is pickled as its :class:`ArrayRef`
and rebuilt as a view on the same memory, never copied; and code pickled by value keeps
its file name and, from a notebook cell, its source (:mod:`shmpool._source`).
"""

from __future__ import annotations

import inspect
import io
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

from ._arrays import ref_of, view_from_ref
from ._source import SourcePickler

__all__ = ["dumps", "dumps_kernel", "dumps_or_raise", "loads"]

PROTOCOL = 5


class _SharedArrayPickler(SourcePickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            ref = ref_of(obj)
            if ref is not None:
                return view_from_ref, (ref,)
            return NotImplemented
        return super().reducer_override(obj)


# Plain data pickles the same with plain pickle, which skips building a cloudpickle
# pickler (a few microseconds a call, paid per map and per imap batch otherwise).
_PLAIN = frozenset({int, float, bool, complex, str, bytes, type(None)})
_PLAIN_SCAN_LIMIT = 64  # containers longer than this take the general path


def _plain(obj: object, depth: int = 0) -> bool:
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if depth > 2:
        return False
    if isinstance(obj, (list, tuple)) and (kind is list or kind is tuple):
        return len(obj) <= _PLAIN_SCAN_LIMIT and all(_plain(x, depth + 1) for x in obj)
    if isinstance(obj, dict) and kind is dict:
        return len(obj) <= _PLAIN_SCAN_LIMIT and all(
            _plain(k, depth + 1) and _plain(v, depth + 1) for k, v in obj.items()
        )
    return False


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` with cloudpickle, shared arrays by reference."""
    if _plain(obj):
        return pickle.dumps(obj, PROTOCOL)
    buffer = io.BytesIO()
    _SharedArrayPickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """Unpickle what :func:`dumps` made."""
    return pickle.loads(data)


def dumps_or_raise(obj: object, what: str) -> bytes:
    """Pickle ``obj`` for the workers; TypeError naming ``what`` if it cannot be."""
    try:
        return dumps(obj)
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
