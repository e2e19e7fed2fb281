"""Pickling for everything that crosses the process boundary.

cloudpickle, so lambdas, closures and functions defined in ``__main__`` work under every
start method, with one addition: an ndarray that lives in a shared block, wherever it sits
(an argument, a keyword, a closure's cell, a result), is pickled as its :class:`ArrayRef`
and rebuilt as a view on the same memory, never copied.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle
import numpy as np

from ._arrays import ref_of, view_from_ref

__all__ = ["dumps", "loads"]

PROTOCOL = 5


class _SharedArrayPickler(cloudpickle.Pickler):  # type: ignore[misc]
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            ref = ref_of(obj)
            if ref is not None:
                return view_from_ref, (ref,)
            return NotImplemented
        return super().reducer_override(obj)


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` with cloudpickle, shared arrays by reference."""
    buffer = io.BytesIO()
    _SharedArrayPickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """Unpickle what :func:`dumps` made."""
    return pickle.loads(data)
