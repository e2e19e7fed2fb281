"""The ``@shmpool.kernel`` decorator, the active pool and the default pool.

A decorated function, when called, runs as ``pool.map`` on the *active pool*: the innermost
``with SharedPool(...)`` (or ``DaskPool``) block of the current thread or asyncio task (a
context variable), else the default pool, made on first use with one worker per usable CPU
and terminated at interpreter exit. Inside a worker there is no pool to use: a kernel called
there (from another kernel, in a SharedPool or Dask worker) runs in place, on the arrays it
is given, in that worker.

(The module is private, ``_kernel``: a submodule named ``kernel`` would replace the
``shmpool.kernel`` decorator as an attribute of the package once imported.)
"""

from __future__ import annotations

import contextvars
import functools
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, overload

from . import _worker
from ._args import Whole

if TYPE_CHECKING:
    from ._protocol_api import PoolAPI
    from .pool import SharedPool

__all__ = ["Kernel", "active_pool", "default_pool", "kernel"]

_MAP_OPTIONS = ("axis", "chunks", "progress", "timeout")

_active: contextvars.ContextVar[tuple[PoolAPI, ...]] = contextvars.ContextVar("shmpool_active", default=())
_default: SharedPool | None = None
_default_lock = threading.Lock()


def push_active(pool: PoolAPI) -> None:
    """Make ``pool`` the active pool of the current context (``__enter__`` of a pool)."""
    _active.set((*_active.get(), pool))


def pop_active(pool: PoolAPI) -> None:
    """Undo :func:`push_active` for ``pool`` (``__exit__`` of a pool)."""
    stack = _active.get()
    if pool in stack:
        i = len(stack) - 1 - stack[::-1].index(pool)
        _active.set(stack[:i] + stack[i + 1 :])


def default_pool() -> SharedPool:
    """The process-wide default pool, started on first use (workers = usable CPUs).

    It is terminated at interpreter exit; a closed default pool is replaced on next use.
    """
    global _default
    from .pool import SharedPool

    with _default_lock:
        if _default is None or _default.closed:
            _default = SharedPool()
        return _default


def active_pool() -> PoolAPI:
    """The innermost pool entered with ``with`` in this context, else the default pool."""
    stack = _active.get()
    for pool in reversed(stack):
        if not pool.closed:
            return pool
    return default_pool()


class Kernel:
    """A function that runs as ``pool.map`` on the active pool when called.

    ``kernel.func`` (also ``__wrapped__``) is the undecorated function. The decorator's
    options (``axis``, ``chunks``, ``progress``, ``timeout``) are the defaults of every
    call; a call may override them with keywords of the same names. Other keywords go to
    the function.
    """

    func: Callable[..., Any]
    options: dict[str, Any]
    __qualname__: str

    def __init__(self, func: Callable[..., Any], **options: Any):
        if not callable(func):
            raise TypeError(f"@shmpool.kernel decorates a function, got {func!r}")
        _check_options(options)
        self.func = func
        self.options = options
        functools.update_wrapper(self, func)

    def _split_options(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        options = dict(self.options)
        for name in _MAP_OPTIONS:
            if name in kwargs:
                options[name] = kwargs.pop(name)
        return options, kwargs

    def __call__(self, *arrays: Any, **kwargs: Any) -> list[Any]:
        """``active_pool().map(func, *arrays, **options, **kwargs)``; in a worker, run in place."""
        options, kwargs = self._split_options(kwargs)
        if _worker.IN_WORKER:
            args = [a.obj if isinstance(a, Whole) else a for a in arrays]
            return [self.func(*args, **kwargs)]
        return active_pool().map(self.func, *arrays, **options, **kwargs)

    def map_async(self, *arrays: Any, **kwargs: Any) -> Future[list[Any]]:
        """``active_pool().map_async(func, ...)``: a Future of the list of results."""
        options, kwargs = self._split_options(kwargs)
        return active_pool().map_async(self.func, *arrays, **options, **kwargs)

    def __repr__(self) -> str:
        return f"<shmpool.kernel {self.__qualname__} {self.options}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A module-level kernel pickles by name, like a function; one that cannot be found
        # by name (defined in __main__, or nested) carries its function.
        module = sys.modules.get(self.__module__)
        if self.__module__ != "__main__" and module is not None:
            found: Any = module
            for part in self.__qualname__.split("."):
                found = getattr(found, part, None)
            if found is self:
                return str(self.__qualname__)
        return (_rebuild_kernel, (self.func, self.options))


def _check_options(options: dict[str, Any]) -> None:
    unknown = set(options) - set(_MAP_OPTIONS)
    if unknown:
        raise TypeError(f"unknown kernel option(s) {sorted(unknown)}; options are {_MAP_OPTIONS}")


def _rebuild_kernel(func: Callable[..., Any], options: dict[str, Any]) -> Kernel:
    return Kernel(func, **options)


@overload
def kernel(func: Callable[..., Any], /) -> Kernel: ...
@overload
def kernel(
    *,
    axis: int = 0,
    chunks: int | Iterable[int] | None = None,
    progress: bool | dict[str, Any] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Kernel]: ...
def kernel(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Decorate a kernel so that calling it runs ``pool.map`` on the active pool.

    Use bare (``@shmpool.kernel``) or with map options
    (``@shmpool.kernel(axis=1, chunks=64, progress=True)``).
    """
    _check_options(options)
    if func is None:
        return functools.partial(Kernel, **options)
    return Kernel(func, **options)
