"""Helper threads: the work the dispatcher's supervisor thread must not do itself.

The supervisor (:mod:`shmpool._dispatch`) is the only reader of the workers' pipes, so it
must never block on anything but its poll. Two kinds of work would block it: ``on_done``
callbacks (user code, which may submit, wait for another call or terminate the pool) and
flushes of a worker's outbox (sends, which block on a full pipe). It posts both here.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from ._signal_mask import start_quietly

__all__ = ["HELPER_IDLE_S", "Helpers"]

# A helper thread with nothing to do for this long exits; the next callback starts one.
HELPER_IDLE_S = 2.0


class Helpers:
    """Threads that run what the supervisor must not: ``on_done`` callbacks (user code,
    which may block or submit) and flushes of outboxes (sends, which block on a full pipe).

    Elastic: an item that finds no idle thread starts a new one, so a callback that blocks
    (waiting for another future of the same pool) never holds up the callbacks that would
    release it. Idle threads exit after ``HELPER_IDLE_S``, or at once after :meth:`close`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Callable[[], None]] = collections.deque()
        self._idle = 0
        self._closed = False
        self._threads: set[threading.Thread] = set()

    def post(self, item: Callable[[], None]) -> None:
        with self._cond:
            self._items.append(item)
            if self._idle >= len(self._items):
                self._cond.notify()
                return
            thread = threading.Thread(target=self._serve, name="shmpool-helper", daemon=True)
            self._threads.add(thread)
        start_quietly(thread)

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._items:
                    if self._closed:
                        self._threads.discard(me)
                        return
                    self._idle += 1
                    woken = self._cond.wait(HELPER_IDLE_S)
                    self._idle -= 1
                    if not woken and not self._items:
                        self._threads.discard(me)
                        return
                item = self._items.popleft()
            try:
                item()
            except Exception:  # a callback's bug must not kill the thread serving others
                pass

    def close(self, timeout: float) -> None:
        """Let the threads exit once nothing is left; wait for them (but not for the
        calling thread, when it is one of them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(timeout)
