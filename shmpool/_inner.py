"""Inner thread pools: how many threads BLAS and OpenMP may use inside each worker.

N workers each running a BLAS or OpenMP that starts one thread per CPU oversubscribe the
machine N times (a ``np.linalg`` call per chunk with 8 workers on 8 CPUs: 64 threads). By
default each worker's native thread pools get ``max(1, cpus // workers)`` threads.

Two mechanisms, because libraries read their thread count at different times:

- environment variables (:data:`THREAD_ENV_VARS`), read when a library loads. A spawned
  worker imports NumPy before any of our code runs in it, so the pool sets them around the
  worker's start (:func:`environment`); every worker also sets them in its own
  ``os.environ`` at start (:func:`limit_this_process`), for libraries it loads later.
- threadpoolctl's ``threadpool_limits``, for libraries already loaded: under fork and
  forkserver NumPy (and its BLAS) was loaded before the worker existed, and the variables
  come too late for it.

A ThreadPool's threads share one process, where a BLAS thread limit is process-wide
(OpenBLAS, MKL) and an OpenMP limit is per thread: :class:`ThreadLimiter` lowers the
process-wide limits while a map runs and each pool thread's OpenMP limit for good.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "AUTO",
    "THREAD_ENV_VARS",
    "ThreadLimiter",
    "check_inner_threads",
    "controller",
    "environment",
    "limit_this_process",
    "thread_env",
    "worker_start",
]

AUTO = "auto"
# The variables joblib's loky backend sets for the same reason (OpenMP, OpenBLAS, MKL,
# BLIS, Apple Accelerate, numexpr, numba).
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)

# os.environ is one per process: starts that set it for a moment take turns.
_environ_lock = threading.Lock()


def check_inner_threads(value: object, workers: int, cpus: int) -> int | None:
    """``inner_threads`` as a thread count, or None (leave the libraries alone).

    ``"auto"`` (the default) is ``max(1, cpus // workers)``; an int must be at least 1.
    """
    if value is None:
        return None
    if value == AUTO:
        return max(1, cpus // workers)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"inner_threads must be an int, 'auto' or None, got {value!r}")
    if value < 1:
        raise ValueError(f"inner_threads must be at least 1, got {value}")
    return int(value)


def thread_env(limit: int) -> dict[str, str]:
    """The environment variables that limit native thread pools to ``limit`` threads."""
    return dict.fromkeys(THREAD_ENV_VARS, str(limit))


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Set ``env`` in this process's environment for the duration, then put it back.

    For spawned children, which inherit the environment at exec and import NumPy before
    any code of ours runs there. Other threads of this process see the variables for that
    moment too; libraries already loaded here do not read them again.
    """
    if not env:
        yield
        return
    with _environ_lock:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _release_control() -> None:
    """Let any thread change OpenBLAS's limit next.

    threadpoolctl (3.6 and later) lets only the first thread that set OpenBLAS's
    process-wide limit change it again, and silently ignores the others; a limit we set in
    one thread must be restorable from another (a map_async ends on a helper thread), and
    must not lock the user's own threads out. Older versions have no such rule.
    """
    import threadpoolctl

    openblas = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(openblas, "clear_controlling_thread", None)
    if clear is not None:
        clear()


_controller: Any = None
_controller_lock = threading.Lock()


def controller() -> Any:
    """This process's threadpoolctl controller, made once.

    Finding the loaded libraries costs milliseconds (and importing threadpoolctl about
    ten): a pool makes it in the parent before its workers start, so that workers forked
    from it inherit it (a worker start costs microseconds more, not tens of milliseconds).
    Libraries loaded after it was made read the environment variables instead.
    """
    global _controller
    with _controller_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller


def limit_this_process(limit: int) -> None:
    """Limit this process's native thread pools to ``limit`` threads: the ones loaded now
    (threadpoolctl) and the ones loaded later (the environment variables)."""
    os.environ.update(thread_env(limit))
    # Only the libraries not at the limit already: setting one costs milliseconds in a
    # forked worker (OpenBLAS restarts its thread server), which a pool whose limit changes
    # nothing (one worker on two CPUs) need not pay. Never restored: the process is ours.
    changed = [lib for lib in controller().lib_controllers if lib.num_threads != limit]
    for lib in changed:
        lib.set_num_threads(limit)
    if changed:
        _release_control()


def worker_start(limit: int | None, initializer: Any, initargs: tuple[Any, ...]) -> None:
    """A SharedPool worker's initializer: limit its thread pools, then run the user's."""
    if limit is not None:
        limit_this_process(limit)
    if initializer is not None:
        initializer(*initargs)


class ThreadLimiter:
    """Native thread limits for a ThreadPool of ``threads`` threads, each running BLAS.

    BLAS limits (OpenBLAS, MKL, BLIS) are process-wide: they are lowered to ``limit`` when
    the first map of any limiting pool starts and restored when the last one ends, so they
    also bind the process's other threads meanwhile. OpenMP limits are per thread: each pool
    thread sets its own once (:meth:`limit_thread`), for good.
    """

    # Shared by every ThreadPool of the process: the limits they change are too.
    _lock = threading.Lock()
    _active = 0
    _restore: Any = None

    def __init__(self, limit: int | None):
        self.limit = limit

    def limit_thread(self) -> None:
        """In a pool thread: lower this thread's OpenMP limit to ``limit``."""
        if self.limit is None:
            return
        with ThreadLimiter._lock:
            controller().select(user_api="openmp").limit(limits=self.limit)

    def enter(self) -> None:
        """A map starts: lower the process-wide BLAS limits, if it is the first."""
        if self.limit is None:
            return
        with ThreadLimiter._lock:
            if ThreadLimiter._active == 0:
                # The libraries loaded when the process's controller was made (see
                # controller()): one loaded later is limited by nothing here.
                ThreadLimiter._restore = controller().limit(limits=self.limit, user_api="blas")
                _release_control()
            ThreadLimiter._active += 1

    def exit(self) -> None:
        """A map has ended: restore the BLAS limits, if it was the last."""
        if self.limit is None:
            return
        with ThreadLimiter._lock:
            ThreadLimiter._active -= 1
            if ThreadLimiter._active == 0 and ThreadLimiter._restore is not None:
                ThreadLimiter._restore.restore_original_limits()
                ThreadLimiter._restore = None
                _release_control()
