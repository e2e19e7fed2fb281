"""PoolAPI: the one list of what every shmpool pool offers (SharedPool, DaskPool).

Code written against a pool (the ``@shmpool.kernel`` decorator, a user's functions) may take
any of them. Two checks keep the pools from drifting apart:

- statically, mypy checks below that each pool class is a :class:`PoolAPI`;
- at run time, :func:`api_mismatches` compares each method's parameters (names, kinds,
  defaults, annotations) with the protocol's, which the tests assert for every pool.

Annotations here are written exactly as ``SharedPool`` writes them, so the run-time check
can compare them as text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .dask_pool import DaskPool
    from .pool import PoolStats, SharedPool

__all__ = ["POOL_METHODS", "POOL_PROPERTIES", "PoolAPI", "api_mismatches", "check_pool_api"]

T = TypeVar("T")
P = TypeVar("P", bound="PoolAPI")

POOL_PROPERTIES = ("workers", "closed", "stats")
POOL_METHODS = (
    "close",
    "terminate",
    "__enter__",
    "__exit__",
    "empty",
    "zeros",
    "full",
    "empty_like",
    "zeros_like",
    "asarray",
    "is_shared",
    "free",
    "map",
    "map_async",
    "submit",
    "imap",
)
# What each pool's __enter__ returns is the pool itself, so its annotation names the class.
_RETURNS_SELF = frozenset({"__enter__"})


@runtime_checkable
class PoolAPI(Protocol):
    """What SharedPool and DaskPool both offer, with the same signatures and meaning."""

    @property
    def workers(self) -> int:
        """How many workers (SharedPool: processes; DaskPool: the cluster's threads)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether close() or terminate() was called."""
        ...

    @property
    def stats(self) -> PoolStats:
        """Counters of what the pool has done."""
        ...

    def close(self) -> None:
        """Wait for the calls in flight, then shut down. Idempotent."""
        ...

    def terminate(self) -> None:
        """Stop now; calls in flight raise PoolClosedError. Idempotent."""
        ...

    def __enter__(self: P) -> P:
        """Make the pool the active pool of ``@shmpool.kernel`` until the block ends."""
        ...

    def __exit__(self, *exc_info: object) -> None:
        """close() after a normal exit, terminate() after an exception."""
        ...

    def empty(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array."""
        ...

    def zeros(self, shape: int | Iterable[int], dtype: Any = float, order: str = "C") -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros."""
        ...

    def full(
        self, shape: int | Iterable[int], fill_value: Any, dtype: Any = None, order: str = "C"
    ) -> np.ndarray:  # type: ignore[type-arg]
        """A new array filled with ``fill_value``."""
        ...

    def empty_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new uninitialised array shaped like ``a``."""
        ...

    def zeros_like(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """A new array of zeros shaped like ``a``."""
        ...

    def asarray(self, a: Any, dtype: Any = None) -> np.ndarray:  # type: ignore[type-arg]
        """``a`` as the pool's array: itself if the pool made it, else a copy."""
        ...

    def is_shared(self, a: Any) -> bool:
        """Whether ``a`` (or the array it views) is the pool's and was not freed."""
        ...

    def free(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
        """Give ``a``'s memory back to the pool's care now."""
        ...

    def map(
        self,
        kernel: Callable[..., Any],
        /,
        *arrays: Any,
        axis: int = 0,
        chunks: int | Iterable[int] | None = None,
        progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Run ``kernel`` over chunks of ``arrays`` in place; its results in chunk order."""
        ...

    def map_async(
        self,
        kernel: Callable[..., Any],
        /,
        *arrays: Any,
        axis: int = 0,
        chunks: int | Iterable[int] | None = None,
        progress: bool | dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[list[Any]]:
        """:meth:`map` without waiting: a Future of its list of results."""
        ...

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run one call in a worker: a Future of its result."""
        ...

    def imap(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        progress: bool | dict[str, Any] | None = None,
    ) -> Iterator[T]:
        """A lazy iterator of ``fn(item)`` for each item, run in the workers."""
        ...


def api_mismatches(pool: object) -> list[str]:
    """How ``pool`` (a pool or its class) departs from :class:`PoolAPI`; empty if it does not.

    Each method must take the same parameters as the protocol's: names, kinds (positional
    only, keyword only, ``*args``, ``**kwargs``), defaults and annotations (as text). Each
    property must be a property.
    """
    cls = pool if isinstance(pool, type) else type(pool)
    problems: list[str] = []
    for name in POOL_PROPERTIES:
        if not isinstance(inspect.getattr_static(cls, name, None), property):
            problems.append(f"{cls.__name__}.{name} is not a property")
    for name in POOL_METHODS:
        method = getattr(cls, name, None)
        if not callable(method):
            problems.append(f"{cls.__name__}.{name} is missing")
            continue
        want = inspect.signature(getattr(PoolAPI, name))
        got = inspect.signature(method)
        if len(want.parameters) != len(got.parameters):
            problems.append(f"{cls.__name__}.{name}{got} has other parameters than PoolAPI.{name}{want}")
            continue
        for (w_name, w), (g_name, g) in zip(
            list(want.parameters.items())[1:], list(got.parameters.items())[1:], strict=True
        ):
            if (w_name, w.kind, w.default, w.annotation) != (g_name, g.kind, g.default, g.annotation):
                problems.append(f"{cls.__name__}.{name}: parameter {g} differs from PoolAPI's {w}")
        if name not in _RETURNS_SELF and want.return_annotation != got.return_annotation:
            problems.append(
                f"{cls.__name__}.{name} returns {got.return_annotation}, PoolAPI's {want.return_annotation}"
            )
    return problems


def check_pool_api(pool: object) -> None:
    """Raise TypeError listing how ``pool`` departs from :class:`PoolAPI`, if it does."""
    problems = api_mismatches(pool)
    if problems:
        raise TypeError("not a PoolAPI:\n  " + "\n  ".join(problems))


if TYPE_CHECKING:
    # mypy checks that both pools are structurally PoolAPI (every signature, every type).
    def _shared_pool_is_a_pool(pool: SharedPool) -> PoolAPI:
        return pool

    def _dask_pool_is_a_pool(pool: DaskPool) -> PoolAPI:
        return pool
