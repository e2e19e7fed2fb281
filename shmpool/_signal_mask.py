"""The pool's own threads leave the process's signals to the application's threads.

A signal sent to the whole process (Ctrl-C's SIGINT, a service manager's SIGTERM, a timer's
SIGALRM) is delivered by the kernel to any one thread that does not block it. Python runs
its handlers in the main thread only, and a main thread asleep in a wait (a ``map`` waiting
for its chunks) is woken only when the signal lands on it: one that lands on a pool's
supervisor or helper thread sets Python's flag but leaves the main thread asleep, so Ctrl-C
takes effect only when the map ends on its own. Every thread a pool starts therefore blocks
these signals, from its birth (:func:`start_quietly`) or from its first step
(:func:`keep_signals_out`, for executors' threads); the kernel then always picks a thread of
the application's. Faults (SIGSEGV, SIGBUS, ...) are the faulting thread's own and stay
unblocked.

Threads the pool does not own can still take such a signal (NumPy's BLAS threads, started
at import with nothing blocked, or the application's own), so a pool's wait in the main
thread also wakes every :data:`SIGNAL_CHECK_S` (:func:`signal_step`): Python then runs the
handler, and Ctrl-C stops a ``map`` within that time wherever the signal landed.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["PROCESS_SIGNALS", "SIGNAL_CHECK_S", "keep_signals_out", "signal_step", "start_quietly"]

# The longest a pool's wait in the main thread sleeps at once: the longest a signal that
# another thread took waits for its handler (a wake-up costs microseconds).
SIGNAL_CHECK_S = 0.1

PROCESS_SIGNALS: frozenset[signal.Signals] = frozenset(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGCHLD",
        "SIGWINCH",
    )
    if hasattr(signal, name)
)


def keep_signals_out() -> None:
    """Block :data:`PROCESS_SIGNALS` in the calling thread (where the platform can)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)


def start_quietly(thread: threading.Thread) -> None:
    """Start ``thread`` so that it never takes a signal sent to the whole process: it is
    started while the caller blocks them, and a thread inherits its creator's mask. The
    caller's mask is restored at once; a signal that arrived meanwhile waited, and is then
    delivered to it."""
    if not hasattr(signal, "pthread_sigmask"):
        thread.start()
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def signal_step() -> float | None:
    """How long a blocking wait in the calling thread may sleep at once: ``SIGNAL_CHECK_S``
    in the main thread, where Python runs signal handlers, else no limit."""
    return SIGNAL_CHECK_S if threading.current_thread() is threading.main_thread() else None
