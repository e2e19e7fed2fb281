"""Futures that stay pending while their work runs, so that ``cancel()`` can stop it.

``concurrent.futures`` marks a future RUNNING when its work starts, after which ``cancel()``
refuses. shmpool's futures stay PENDING until the outcome is known: ``cancel()`` then
cancels the future and asks the pool to stop the work (a map's unstarted chunks, a task's
drop). Only public ``Future`` methods are used.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["PendingFuture"]

T = TypeVar("T")


class PendingFuture(Future[T]):
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
