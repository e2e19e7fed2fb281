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
from ._capture import capture_key
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
# pickled by value (lambdas, closures, __main__ functions) are kept with the key of what
# they capture (:mod:`shmpool._capture`) and pickled again when it changed, or every time
# when what they capture could change unseen.
_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()
_by_value: weakref.WeakKeyDictionary[Callable[..., Any], tuple[tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary()
)
_should_pickle_by_reference = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)


def dumps_kernel(kernel: Callable[..., Any], what: str) -> bytes:
    """:func:`dumps_or_raise` for a kernel, kept between calls while its pickle would not
    change (see above)."""
    if _should_pickle_by_reference is None or not inspect.isfunction(kernel):
        return dumps_or_raise(kernel, what)
    data = _by_reference.get(kernel)
    if data is not None:
        return data
    try:
        by_reference = _should_pickle_by_reference(kernel)
    except Exception:
        return dumps_or_raise(kernel, what)
    if by_reference:
        data = _by_reference[kernel] = dumps_or_raise(kernel, what)
        return data
    return _dumps_by_value(kernel, what)


def _dumps_by_value(kernel: Callable[..., Any], what: str) -> bytes:
    key = capture_key(kernel)
    entry = _by_value.get(kernel)
    if key is not None and entry is not None and entry[0] == key:
        return entry[1]
    data = dumps_or_raise(kernel, what)
    if key is not None:
        _by_value[kernel] = (key, data)
    return data
