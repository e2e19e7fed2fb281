"""Telling the caller where an exception from the user's code was raised.

Every pool raises a kernel's exception with its own type and, as ``__cause__``, a
:class:`~shmpool.errors.RemoteTraceback` whose header names what raised it (the kernel, the
chunk and its indices) followed by the traceback where it ran; on Python 3.11+ the same is
added as a note. The process pools rebuild the exception first (:mod:`shmpool._remote`);
the ThreadPool has the exception object itself.

The traceback starts at the user's code: the frames of shmpool that called it (a worker's
loop, a thread's runner) are left out (:func:`user_frames`), so it reads as the kernel
would have failed locally. In IPython (a notebook), a frame of a cell is named as IPython
names it locally, ``Cell In[6], line 3`` (:func:`name_cells`), not by the cell's file name.
"""

from __future__ import annotations

import re
import sys
import traceback
from types import TracebackType

from .errors import RemoteTraceback

__all__ = ["attach_origin", "name_cells", "traceback_text", "user_frames"]

_FILE_LINE = re.compile(r'^( *)File "([^"\n]+)", line (\d+)', re.MULTILINE)


def _in_shmpool(tb: TracebackType) -> bool:
    name = tb.tb_frame.f_globals.get("__name__")
    return isinstance(name, str) and (name == "shmpool" or name.startswith("shmpool."))


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame outside shmpool on: the library frames that called the
    user's code are left out. All of ``tb`` when every frame is shmpool's (an error of
    shmpool's own, whose frames are what there is to show)."""
    first = tb
    while first is not None and _in_shmpool(first):
        first = first.tb_next
    return tb if first is None else first


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback as text, from the user's code on (:func:`user_frames`); never
    raises (an exception's ``__str__`` may)."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, user_frames(exc.__traceback__)))
    except Exception:
        return f"{type(exc).__qualname__}: <the exception's text could not be formatted>\n"


def name_cells(text: str) -> str:
    """``text`` with each ``File "<a cell's file>", line N`` of a traceback written as
    IPython writes it, ``Cell In[6], line N``, when this process runs IPython."""
    ipython = sys.modules.get("IPython")  # never imported here: only if it runs already
    get_shell = getattr(ipython, "get_ipython", None)
    try:
        shell = get_shell() if get_shell is not None else None
    except Exception:
        return text
    format_code_name = getattr(getattr(shell, "compile", None), "format_code_name", None)
    if format_code_name is None:
        return text

    def rename(match: re.Match[str]) -> str:
        try:
            label = format_code_name(match[2])
        except Exception:
            label = None
        if not label:
            return match[0]
        return f"{match[1]}{label[0]} {label[1]}, line {match[3]}"

    return _FILE_LINE.sub(rename, text)


def attach_origin(exc: BaseException, where: str, type_name: str, text: str) -> BaseException:
    """Attach where ``exc`` (of type ``type_name``, traceback ``text``) was raised."""
    text = name_cells(text)
    header = f"{where} raised {type_name} in a worker:"
    exc.__cause__ = RemoteTraceback(f'\n"""\n{header}\n{text}"""')
    if sys.version_info >= (3, 11):
        exc.add_note(f"shmpool: {where}")
    return exc
