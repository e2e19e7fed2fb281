"""Telling the caller where an exception from the user's code was raised.

Every pool raises a kernel's exception with its own type and, as ``__cause__``, a
:class:`~shmpool.errors.RemoteTraceback` whose header names what raised it (the kernel, the
chunk and its indices) followed by the traceback where it ran; on Python 3.11+ the same is
added as a note. The process pools rebuild the exception first (:mod:`shmpool._remote`);
the ThreadPool has the exception object itself.
"""

from __future__ import annotations

import sys
import traceback

from .errors import RemoteTraceback

__all__ = ["attach_origin", "traceback_text"]


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback as text; never raises (an exception's ``__str__`` may)."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return f"{type(exc).__qualname__}: <the exception's text could not be formatted>\n"


def attach_origin(exc: BaseException, where: str, type_name: str, text: str) -> BaseException:
    """Attach where ``exc`` (of type ``type_name``, traceback ``text``) was raised."""
    header = f"{where} raised {type_name} in a worker:"
    exc.__cause__ = RemoteTraceback(f'\n"""\n{header}\n{text}"""')
    if sys.version_info >= (3, 11):
        exc.add_note(f"shmpool: {where}")
    return exc
