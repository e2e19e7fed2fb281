"""The ideal-parallel bound: what N processes achieve with no coordination at all.

N processes are started once and each builds its own private, pre-faulted 1/N of the input
and of the output. At a common start signal (a barrier) every process runs the workload's
kernel over its share, in the same chunk length the systems use, and records when it
started and finished. The bound of one repetition is the time from the first start to the
last finish. Nothing is shared, nothing is dispatched, nothing is copied: a system that
matches this bound has no overhead left to remove on this machine.

Each process also checks its own share against the serial NumPy result after every
repetition (outside the timed part), and fills its output with NaN before the next.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import kernels

__all__ = ["IdealBound"]

# How long to wait for an ideal process's reply before giving up on it.
REPLY_TIMEOUT_S = 600.0


def _worker(conn: Connection, barrier: Any, index: int, parts: int) -> None:
    x: np.ndarray | None = None
    out: np.ndarray | None = None
    workload = ""
    chunk_len = 1
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        command = message[0]
        if command == "prepare":
            _, workload, size, chunk_len = message
            x = out = None
            full_rows = size
            share = -(-full_rows // parts)
            rows = max(0, min(share, full_rows - index * share))
            # Each process draws its own share (same distribution as the systems' input).
            whole = kernels.make_input(workload, rows, seed=kernels.SEED + 1 + index)
            x = np.ascontiguousarray(whole)
            out = np.empty_like(x)
            out.fill(0.0)  # pre-fault the output
            conn.send(("ok", rows))
        elif command == "run":
            assert x is not None and out is not None
            inplace, _ = kernels.ARRAY_KERNELS[workload]
            kernels.poison(out)
            barrier.wait()
            start = time.perf_counter()
            for low, high in kernels.chunk_bounds(x.shape[0], chunk_len):
                inplace(x[low:high], out[low:high])
            end = time.perf_counter()
            problem = kernels.check(workload, out, x)
            conn.send(("ok", start, end, problem))
        elif command == "release":
            x = out = None
            conn.send(("ok",))
        elif command == "stop":
            conn.send(("ok",))
            return


class IdealBound:
    """``workers`` persistent processes holding private shares of one workload's data."""

    def __init__(self, workers: int):
        # Fork: this runs in a host process of its own that has no other threads.
        ctx = multiprocessing.get_context("fork")
        self._barrier = ctx.Barrier(workers)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, self._barrier, i, workers), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _ask_all(self, message: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        for conn in self._conns:
            conn.send(message)
        replies = []
        for conn in self._conns:
            if not conn.poll(REPLY_TIMEOUT_S):
                raise TimeoutError(f"an ideal-bound process did not answer {message[0]!r}")
            replies.append(conn.recv())
        return replies

    def prepare(self, workload: str, size: int, chunk_len: int) -> None:
        """Give every process its private, pre-faulted share of ``workload``'s input
        (``size`` elements or rows in all) and output."""
        self._ask_all(("prepare", workload, size, chunk_len))

    def run(self) -> tuple[float, str | None]:
        """One repetition: (seconds from the first start to the last finish, a check
        failure or None)."""
        replies = self._ask_all(("run",))
        first = min(r[1] for r in replies)
        last = max(r[2] for r in replies)
        problems = [f"share {i}: {r[3]}" for i, r in enumerate(replies) if r[3] is not None]
        return last - first, "; ".join(problems) or None

    def release(self) -> None:
        """Drop the shares."""
        self._ask_all(("release",))

    def close(self) -> None:
        """Stop the processes."""
        try:
            self._ask_all(("stop",))
        except (OSError, EOFError, TimeoutError):
            pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
