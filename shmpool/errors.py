"""The exceptions shmpool raises.

Two families, kept apart so callers can tell them apart: "you closed it"
(:class:`PoolClosedError`) and "the world broke it" (:class:`WorkerCrashedError`,
:class:`SharedMemoryFullError`, :class:`ManagerError`). A kernel's own exception is never
wrapped: it reaches the caller with its own type, the remote traceback as ``__cause__``.
:class:`KernelError` stands in only for exceptions that cannot cross the process boundary.
"""

from __future__ import annotations

__all__ = [
    "KernelError",
    "ManagerError",
    "PoolClosedError",
    "SharedMemoryFallbackWarning",
    "SharedMemoryFullError",
    "ShmpoolError",
    "WorkerCrashedError",
]


class ShmpoolError(Exception):
    """Base class of the errors that shmpool itself raises."""


class PoolClosedError(ShmpoolError, RuntimeError):
    """A call was made on a pool that was closed or terminated."""


class WorkerCrashedError(ShmpoolError, RuntimeError):
    """A worker process died while it ran a call (a signal, ``os._exit``, a segfault).

    ``exitcode`` is the process's exit code (negative: the signal number), ``chunk`` the
    index of the chunk or item it was running, or None if it was between chunks.
    ``attempts`` lists, for a call made with ``retries`` or ``chunk_timeout``, every death
    in it: ``(chunk or item index or None, start, stop, reason)``, where ``start:stop`` are
    the chunk's indices along the split axis (for an item, its number and number + 1) and
    ``reason`` says how the worker ended.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        chunk: int | None = None,
        attempts: tuple[tuple[int | None, int, int, str], ...] = (),
    ):
        super().__init__(message)
        self.exitcode = exitcode
        self.chunk = chunk
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.exitcode, self.chunk, self.attempts))


def _rebuild_crash(
    message: str,
    exitcode: int | None,
    chunk: int | None,
    attempts: tuple[tuple[int | None, int, int, str], ...] = (),
) -> WorkerCrashedError:
    return WorkerCrashedError(message, exitcode=exitcode, chunk=chunk, attempts=attempts)


class SharedMemoryFullError(ShmpoolError, MemoryError):
    """Not enough free space where shared memory lives for an allocation.

    Raised before any byte is written, so a full ``/dev/shm`` is an exception and never a
    SIGBUS. ``requested`` and ``available`` are in bytes; ``folder`` is where blocks live.
    """

    def __init__(self, message: str, *, requested: int = 0, available: int = 0, folder: str = ""):
        super().__init__(message)
        self.requested = requested
        self.available = available
        self.folder = folder

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_full,
            (str(self), self.requested, self.available, self.folder),
        )


def _rebuild_full(message: str, requested: int, available: int, folder: str) -> SharedMemoryFullError:
    return SharedMemoryFullError(message, requested=requested, available=available, folder=folder)


class SharedMemoryFallbackWarning(RuntimeWarning):
    """A SharedPool put blocks in a file-backed folder on disk because the default
    ``/dev/shm`` was too small (warned once per pool; the message says how to avoid it)."""


class ManagerError(ShmpoolError, RuntimeError):
    """The pool's SharedMemoryManager process is gone, so no block can be allocated."""


class KernelError(ShmpoolError):
    """A kernel raised an exception that could not be sent back as itself.

    It happens when the exception cannot be pickled, or cannot be rebuilt in the parent
    (a constructor with unusual arguments). ``type_name`` is the original exception's
    qualified type name, ``message`` its ``str()``, ``remote_traceback`` the traceback text.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (KernelError, (self.type_name, self.message, self.remote_traceback))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as ``__cause__``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
