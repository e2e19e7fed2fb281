"""Children that notice their parent's death: workers and the manager exit when it dies.

A child started by multiprocessing gets a sentinel that becomes readable when its parent
exits, killed or not (its end of a pipe closes). Under the fork start method a sibling
forked later can inherit the parent's end of that pipe and keep it open, so the watcher
also compares ``os.getppid()`` with its first value every ``PARENT_CHECK_S`` seconds: the
kernel re-parents a child the moment its parent dies.

The manager also leaves its parent's process group (:func:`leave_process_group`) and ends
on a termination signal only after cleaning up (:func:`clean_up_on_signals`), so that the
pool's blocks go however the pool's process ends: a signal to the whole group (a Jupyter
kernel shut down: SIGKILL to the kernel's group; a terminal closed: SIGHUP) misses the
manager, which then sees its parent die; a signal to each process (ipykernel's SIGTERM to
its children, systemd stopping a unit) reaches a manager that unlinks before it exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType

__all__ = [
    "ENDING_SIGNALS",
    "PARENT_CHECK_S",
    "clean_up_on_signals",
    "default_ending_signals",
    "forget_in_forked_children",
    "leave_process_group",
    "watch_parent",
]

# Signals that end a process by default and are sent to end it: a service manager's stop,
# kill's default, a closed terminal. SIGINT is not one: Ctrl-C reaches the whole foreground
# group, and the pool turns it into a cancellation of the map in flight, not an ending.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# Upper bound on how long a child outlives its parent when the sentinel cannot fire.
PARENT_CHECK_S = 0.25


def watch_parent(on_death: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread that calls ``on_death()`` and then ``os._exit(0)`` once this
    process's parent has died."""

    def watch() -> None:
        parent = multiprocessing.parent_process()
        sentinels = [parent.sentinel] if parent is not None else []
        first_ppid = os.getppid()
        while not multiprocessing.connection.wait(sentinels, timeout=PARENT_CHECK_S):
            if os.getppid() != first_ppid:
                break
        try:
            on_death()
        finally:
            os._exit(0)

    thread = threading.Thread(target=watch, name="shmpool-parent-watch", daemon=True)
    thread.start()
    return thread


def leave_process_group() -> None:
    """Move this process into a session (and process group) of its own.

    A signal sent to the parent's whole group (``os.killpg``, a Jupyter kernel's forced
    shutdown, a terminal hang-up) then does not reach this process, which stays alive to
    see its parent die and clean up after it; it still ends within ``PARENT_CHECK_S`` of
    the parent through :func:`watch_parent`, so it never outlives the pool.
    """
    with contextlib.suppress(OSError):  # already a group leader: nothing to leave
        os.setsid()


def clean_up_on_signals(cleanup: Callable[[], None]) -> None:
    """On any of :data:`ENDING_SIGNALS`, call ``cleanup()`` and then ``os._exit(0)``.

    Must be called from the main thread. The handlers replace any inherited from a forked
    parent (an application's own SIGTERM handler must not run in a pool's process).
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            cleanup()
        finally:
            os._exit(0)

    for signum in ENDING_SIGNALS:
        signal.signal(signum, handler)


def default_ending_signals() -> None:
    """Let :data:`ENDING_SIGNALS` end this process at once, whatever a forked parent had
    installed for them: a worker owns nothing that must be cleaned up, and a handler of
    the application's (which might raise into the kernel running, or ignore the signal)
    would keep it from ending quietly when asked to."""
    for signum in ENDING_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


# Processes a pool started (workers, its manager), held weakly. A child forked from the
# pool's process by os.fork (a web server's workers, a test runner) inherits
# multiprocessing's record of them, and at its exit multiprocessing's own exit handler
# would SIGTERM the daemonic ones and try to join the others, which are not its children:
# the parent's pool would lose its workers to its child's exit.
_started: weakref.WeakSet[multiprocessing.process.BaseProcess] = weakref.WeakSet()


def forget_in_forked_children(process: multiprocessing.process.BaseProcess) -> None:
    """Make children forked later from this process leave ``process`` alone at their exit."""
    _started.add(process)


def _forget_started() -> None:
    # multiprocessing keeps no public way to drop a process from its set of children; the
    # set is only read by active_children() and the exit handler, which must not see these.
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        for process in list(_started):
            children.discard(process)
    _started.clear()


os.register_at_fork(after_in_child=_forget_started)
