"""The ``@shmpool.kernel`` decorator, the active pool and the default pool.

A decorated function, when called, runs as ``pool.map`` on the *active pool*: the innermost
``with SharedPool(...)`` (or ``DaskPool``) block of the current thread or asyncio task (a
context variable), else the most recently created pool that is still open, else the
default pool, made on first use with one worker per usable CPU and terminated at
interpreter exit. Inside a worker there is no pool to use: a kernel called
there (from another kernel, in a SharedPool or Dask worker) runs in place, on the arrays it
is given, in that worker.

(The module is private, ``_kernel``: a submodule named ``kernel`` would replace the
``shmpool.kernel`` decorator as an attribute of the package once imported.)
"""

from __future__ import annotations

import functools
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, overload

from numpy.typing import NDArray

from ._active import entered_pools, in_worker, newest_open_pool
from ._checks import Whole
from ._frontend import Pool
from ._halo import Halo

__all__ = ["Kernel", "active_pool", "default_pool", "kernel"]

_MAP_OPTIONS = ("axis", "chunks", "progress", "timeout", "retries", "chunk_timeout")

_default: Pool[NDArray[Any]] | None = None
_default_lock = threading.Lock()


def default_pool_kind() -> tuple[str, str]:
    """Which pool class :func:`default_pool` makes here ("SharedPool" or "ThreadPool"),
    and why, in words (``python -m shmpool info`` prints both)."""
    check = getattr(sys, "_is_gil_enabled", None)
    free_threaded_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if check is not None and not check():
        return "ThreadPool", (
            "this is a free-threaded Python running without the GIL: threads run Python code "
            "in parallel, with no copies and no processes"
        )
    if free_threaded_build:
        return "SharedPool", (
            "this is a free-threaded build, but the GIL is enabled at run time (PYTHON_GIL=1, "
            "-X gil=1, or an extension module without free-threading support): only processes "
            "run Python code in parallel"
        )
    return "SharedPool", "this Python has a GIL: only processes run Python code in parallel"


def default_pool() -> Pool[NDArray[Any]]:
    """The process-wide default pool, started on first use (workers = usable CPUs).

    A SharedPool, except on a free-threaded interpreter running without the GIL, where
    threads run Python code in parallel and a ThreadPool needs no copies and no processes.
    It is terminated at interpreter exit; a closed default pool is replaced on next use.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            if default_pool_kind()[0] == "SharedPool":
                from .pool import SharedPool

                _default = SharedPool()
            else:
                from .threads import ThreadPool

                _default = ThreadPool()
        return _default


def active_pool() -> Pool[Any]:
    """The pool ``@shmpool.kernel`` runs on now: the innermost pool entered with ``with`` in
    this context (thread or asyncio task), else the most recently created pool that is
    still open, else :func:`default_pool` (started on first use)."""
    for pool in reversed(entered_pools()):
        if not pool.closed:
            return pool  # type: ignore[no-any-return]
    newest = newest_open_pool()
    if newest is not None:
        return newest  # type: ignore[no-any-return]
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
        if in_worker():
            # In place, one call over all of each array: a halo() has no margin beyond it.
            args = [a.obj if isinstance(a, Whole) else a.array if isinstance(a, Halo) else a for a in arrays]
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
