"""Which pool ``@shmpool.kernel`` runs on, and whether this thread is a worker.

The active pool is the innermost ``with`` pool of the current thread or asyncio task (a
context variable), else the most recently created pool that is still open (so that
``pool = SharedPool()`` in one notebook cell is the pool of a kernel called in the next),
else the default pool. Code running as a worker (a SharedPool or Dask worker process, a
ThreadPool thread) is marked, so that a decorated kernel called there runs in place instead
of submitting to a pool from inside one (which could wait on itself).
"""

from __future__ import annotations

import contextvars
import os
import threading
import weakref
from typing import Any

__all__ = [
    "enter_worker_thread",
    "entered_pools",
    "in_worker",
    "mark_worker_process",
    "newest_open_pool",
    "pop_active",
    "push_active",
    "register_created",
]

_active: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("shmpool_active", default=())
_worker_process = False
_thread = threading.local()
# Pools in creation order, weakly: recording a pool must not keep it (or its workers) alive.
# Each entry carries the creating PID: a forked child inherits the list, not the pools.
_created: list[tuple[int, weakref.ref[Any]]] = []
_created_lock = threading.Lock()


def register_created(pool: Any) -> None:
    """Record that ``pool`` was just created (called by every pool's ``__init__``)."""
    with _created_lock:
        # Drop dead entries as we go, so the list stays as long as the pools alive.
        _created[:] = [(pid, ref) for pid, ref in _created if ref() is not None]
        _created.append((os.getpid(), weakref.ref(pool)))


def newest_open_pool() -> Any | None:
    """The most recently created pool of this process that is still open, or None."""
    pid = os.getpid()
    with _created_lock:
        refs = [ref for owner, ref in _created if owner == pid]
    for ref in reversed(refs):
        pool = ref()
        if pool is not None and not pool.closed:
            return pool
    return None


def push_active(pool: Any) -> None:
    """Make ``pool`` the active pool of the current context (a pool's ``__enter__``)."""
    _active.set((*_active.get(), pool))


def pop_active(pool: Any) -> None:
    """Undo :func:`push_active` for ``pool`` (a pool's ``__exit__``)."""
    stack = _active.get()
    if pool in stack:
        i = len(stack) - 1 - stack[::-1].index(pool)
        _active.set(stack[:i] + stack[i + 1 :])


def entered_pools() -> tuple[Any, ...]:
    """The pools entered with ``with`` in this context, innermost last."""
    return _active.get()


def mark_worker_process() -> None:
    """Mark this whole process as a worker (a SharedPool or Dask worker process)."""
    global _worker_process
    _worker_process = True


def enter_worker_thread() -> None:
    """Mark the calling thread as a worker (a ThreadPool thread)."""
    _thread.worker = True


def in_worker() -> bool:
    """Whether the caller runs as a pool's worker."""
    return _worker_process or getattr(_thread, "worker", False)
