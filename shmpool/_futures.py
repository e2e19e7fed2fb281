"""Futures whose waits Ctrl-C interrupts, and futures that stay pending while their work
runs, so that ``cancel()`` can stop it.

``concurrent.futures`` marks a future RUNNING when its work starts, after which ``cancel()``
refuses. shmpool's futures stay PENDING until the outcome is known: ``cancel()`` then
cancels the future and asks the pool to stop the work (a map's unstarted chunks, a task's
drop). Only public ``Future`` methods are used.

Both kinds' ``result()`` and ``exception()`` called in the main thread wait in steps of
:data:`shmpool._signal_mask.SIGNAL_CHECK_S` (:class:`SteppedFuture`), so that Ctrl-C
interrupts them promptly even when the signal landed on another thread: a plain
``Future.result()`` sleeps until its outcome, however long, when the signal's wake-up went
to a thread that is not waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

from ._signal_mask import signal_step

__all__ = ["PendingFuture", "SteppedFuture"]

T = TypeVar("T")


class SteppedFuture(Future[T]):
    """A Future whose ``result()`` and ``exception()`` in the main thread wait in short
    steps, so that Python runs a pending signal handler (Ctrl-C) between them."""

    def result(self, timeout: float | None = None) -> T:
        """The work's result, as :meth:`Future.result`; interruptible in the main thread."""
        return super().result(self._wait_in_steps(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The work's exception, as :meth:`Future.exception`; interruptible likewise."""
        return super().exception(self._wait_in_steps(timeout))

    def _wait_in_steps(self, timeout: float | None) -> float | None:
        # Waits in short steps in the main thread (where each return lets Python run a
        # pending signal handler); the timeout left for the final, inherited wait.
        step = signal_step()
        if step is None or self.done():
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return 0
            wait([self], timeout=step if left is None else min(step, left))
        return timeout


class PendingFuture(SteppedFuture[T]):
    """A Future that stays pending until its work ends, so cancel() can stop running work."""

    def __init__(self, on_cancel: Callable[[], None] | None = None):
        super().__init__()
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        """Cancel the future; if its work is running, ask the pool to stop it."""
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            self._on_cancel()
        return cancelled

    def settle(self, outcome: Callable[[], T]) -> None:
        """Resolve with ``outcome()``'s value or exception, unless cancelled meanwhile."""
        try:
            value = outcome()
        except BaseException as exc:
            if self.set_running_or_notify_cancel():
                self.set_exception(exc)
            return
        if self.set_running_or_notify_cancel():
            self.set_result(value)
