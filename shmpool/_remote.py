"""Turning a worker's :class:`RemoteError` back into an exception in the parent.

The caller gets the kernel's own exception type, as concurrent.futures does, with the
remote traceback as ``__cause__``; where the kernel ran (chunk, indices) is named in that
traceback's header and, on Python 3.11+, in a note. An exception that cannot be rebuilt
becomes a :class:`~shmpool.errors.KernelError` carrying its type name, message and text.
"""

from __future__ import annotations

from . import _pickling
from ._origin import attach_origin
from ._protocol import RemoteError
from .errors import KernelError, WorkerCrashedError

__all__ = ["initializer_failed", "rebuild_error"]


def rebuild_error(error: RemoteError, where: str) -> BaseException:
    """The exception that ``error`` describes; ``where`` says what raised it."""
    exc: object = None
    if error.pickled is not None:
        try:
            exc = _pickling.loads(error.pickled)
        except BaseException:  # its unpickling may raise anything: the text still travels
            exc = None
    if isinstance(exc, BaseException):
        try:
            return attach_origin(exc, where, error.type_name, error.traceback)
        except BaseException:  # an exception type that refuses attributes
            pass
    return attach_origin(
        KernelError(error.type_name, error.message, error.traceback), where, error.type_name, error.traceback
    )


def initializer_failed(worker: int, error: RemoteError) -> WorkerCrashedError:
    """What breaks a pool whose worker ``worker``'s initializer raised ``error`` (the
    initializer's own exception as its cause)."""
    broken = WorkerCrashedError(
        f"worker {worker}'s initializer raised {error.type_name}: {error.message}; the pool cannot run calls"
    )
    broken.__cause__ = rebuild_error(error, "the worker initializer")
    return broken
