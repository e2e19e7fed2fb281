"""Children that notice their parent's death: workers and the manager exit when it dies.

A child started by multiprocessing gets a sentinel that becomes readable when its parent
exits, killed or not (its end of a pipe closes). Under the fork start method a sibling
forked later can inherit the parent's end of that pipe and keep it open, so the watcher
also compares ``os.getppid()`` with its first value every ``PARENT_CHECK_S`` seconds: the
kernel re-parents a child the moment its parent dies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable

__all__ = ["PARENT_CHECK_S", "watch_parent"]

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
