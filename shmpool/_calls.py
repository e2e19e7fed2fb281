"""A map or a submit in flight, as the front end sees it: wait, stop, finish, choose the error.

Every backend's map goes through :class:`MapCall`: wait for the run (deadline, bar tick),
stop it on a timeout, an interrupt or an abort (cancel, grace, kill), ``finish()`` it exactly
once, then raise the lowest chunk's kernel error, else the reason it was stopped, else the
pool's failure, or return the results. A call holds no reference to its pool: the pool
passes in what to do when the call ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, Protocol

from ._backend import CANCEL_GRACE_S, BatchOutcome, ItemBatch, ItemStream, MapOutcome, MapRun
from ._checks import ItemRequest, MapRequest
from ._futures import PendingFuture
from ._progress import TICK_S
from ._signal_mask import signal_step
from .errors import PoolClosedError

__all__ = ["KILL_GRACE_S", "Call", "MapCall", "SubmitCall"]

# After a kill, how long the backend gets to report the run over before the caller stops
# waiting. A run given up on this way never lends its memory to a later call.
KILL_GRACE_S = 5.0


class Call(Protocol):
    """What a pool can do to any call in flight: stop it with an error (terminate, close)."""

    def abort(self, error: BaseException) -> None:
        """Stop from any thread; the call raises ``error``."""
        ...


class MapCall:
    """One map through the front end (see the module docstring)."""

    def __init__(self, request: MapRequest, bar: Any, ended: Callable[[MapCall, MapOutcome | None], None]):
        self.request = request
        self.bar = bar
        self.run: MapRun | None = None
        self.stop: BaseException | None = None
        self._ended = ended
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Stop from any thread (``future.cancel()``): unstarted chunks are skipped."""
        self.abort(CancelledError(f"map of kernel {self.request.name!r} was cancelled"))

    def abort(self, error: BaseException) -> None:
        """Stop from any thread; the map raises ``error`` (unless a kernel error is first)."""
        with self._lock:
            if self.stop is None:
                self.stop = error
        if self.run is not None:
            self.run.cancel()
            if isinstance(error, PoolClosedError):  # terminate(): running chunks stop too
                self.run.kill()

    def run_to_end(self) -> list[Any]:
        """Wait for the map, finish it, and return its results or raise its error."""
        run = self.run
        assert run is not None
        outcome: MapOutcome | None = None
        try:
            self._wait(run)
        finally:
            try:
                outcome = run.finish()
            finally:
                self._ended(self, outcome)
                if self.bar is not None:
                    self.bar.close()
        return self._assemble(outcome)

    def _wait(self, run: MapRun) -> None:
        bar, timeout = self.bar, self.request.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Woken now and then in the main thread, so that Ctrl-C stops the map promptly.
        idle_step = signal_step()
        try:
            while True:
                step = TICK_S if bar is not None else idle_step
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    step = left if step is None else min(step, left)
                if run.wait(step):
                    break
                if bar is not None:
                    bar.update(run.indices_done() - bar.n)
                if deadline is not None and time.monotonic() >= deadline:
                    self.abort(
                        TimeoutError(f"map of kernel {self.request.name!r} did not finish within {timeout} s")
                    )
                    run.kill()
                    run.wait(KILL_GRACE_S)
                    return
            if bar is not None:
                bar.update(run.indices_done() - bar.n)
        except BaseException:  # Ctrl-C, or a failure of our own: stop the run before leaving
            run.cancel()
            if not run.wait(CANCEL_GRACE_S):
                run.kill()
                run.wait(KILL_GRACE_S)
            raise

    def _assemble(self, outcome: MapOutcome) -> list[Any]:
        if outcome.errors:
            first = min(outcome.errors, key=lambda e: -1 if e.index is None else e.index)
            raise first.build(self.request.where(first.index))
        if self.stop is not None:
            raise self.stop
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.results


class SubmitCall:
    """One ``submit``: a stream of one batch, settling a PendingFuture when it lands."""

    def __init__(self, request: ItemRequest, stream: ItemStream, ended: Callable[[SubmitCall], None]):
        self.request = request
        self.stream = stream
        self.stop: BaseException | None = None
        self.future: PendingFuture[Any] = PendingFuture(on_cancel=stream.cancel)
        self._ended = ended

    def abort(self, error: BaseException) -> None:
        """Stop from any thread; the future raises ``error``."""
        self.stop = error
        self.stream.cancel()

    def landed(self, batch: ItemBatch) -> None:
        """The batch's ``on_landed``: settle the future."""
        outcome = batch.outcome()
        self.stream.close()
        # End first: a done-callback may close the pool, which waits for calls in flight.
        self._ended(self)
        self.future.settle(lambda: self._result(outcome))

    def _result(self, outcome: BatchOutcome) -> Any:
        if outcome.error is not None:
            raise outcome.error.build(f"{self.request.name!r}")
        if self.stop is not None:
            raise self.stop
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.results[0]
