"""Kernels pickled by value keep where they were written, so that their tracebacks in a
worker name the file (or notebook cell), the line and its source, as they would locally.

cloudpickle replaces the file name of every code object it pickles by value (a function
of ``__main__``, a notebook cell, a lambda, a closure) with ``<dynamic-code>``, to make its
payloads independent of where the code was defined. :class:`SourcePickler` puts the name
back: each such code object travels as cloudpickle's own pickle of it plus its file name,
and is given that name again when it is rebuilt (:func:`code_from`).

A worker reads a script's lines from the file, as the caller would. A notebook cell (in
ipykernel 6+ a name such as ``/tmp/ipykernel_123/456.py``) or a REPL input exists only in
the caller's ``linecache``: its lines travel with the code and the worker adds them to its
own ``linecache``, where ``traceback`` finds them.
"""

from __future__ import annotations

import functools
import linecache
import os
import types
from typing import Any

import cloudpickle

__all__ = ["SourcePickler", "code_from"]

# cloudpickle's name for the file of code it pickles by value.
_DYNAMIC = "<dynamic-code>"
# Source larger than this stays behind (a cell or input is far smaller; this bounds the
# cost of a pathological one, sent with every map of a kernel defined in it).
MAX_SOURCE_CHARS = 256 * 1024


@functools.lru_cache(maxsize=256)
def _on_disk(filename: str) -> bool:
    return os.path.isfile(filename)


def _lines_to_send(filename: str) -> tuple[str, ...] | None:
    """The caller's lines of ``filename`` when a worker could not read them itself."""
    if _on_disk(filename):
        return None
    lines = linecache.getlines(filename)
    if not lines or sum(map(len, lines)) > MAX_SOURCE_CHARS:
        return None
    return tuple(lines)


def code_from(code: types.CodeType, filename: str, lines: tuple[str, ...] | None) -> types.CodeType:
    """``code`` with its file name ``filename`` again; ``lines`` of that file, when sent,
    become this process's ``linecache`` entry for it (unless it has one)."""
    if lines is not None and filename not in linecache.cache:
        # No modification time: linecache.checkcache keeps such entries (as IPython's).
        linecache.cache[filename] = (sum(map(len, lines)), None, list(lines), filename)
    return code.replace(co_filename=filename)


class SourcePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, with code objects that keep their file name."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType and obj.co_filename != _DYNAMIC:
            # The renamed copy comes back here and takes cloudpickle's own path.
            filename = obj.co_filename
            return code_from, (obj.replace(co_filename=_DYNAMIC), filename, _lines_to_send(filename))
        return super().reducer_override(obj)
