"""The ideal-parallel bound: what N processes achieve with no coordination at all.

N processes are started once and each builds its own private, pre-faulted 1/N of the input
and of the output. At a common start signal (a barrier) every process runs the workload's
kernel over its share and records when it started and finished; the time of one run is
from the first start to the last finish. Nothing is shared, nothing is dispatched, nothing
is copied: a system that matches this bound has no overhead left to remove on this machine.

The chunking matters as much as the processes: over a whole share a kernel's temporaries
are as large as the share and page-fault on every run, while pieces of a few MiB keep them
in cache and reused. So one repetition runs the share whole, in pieces of 4 MiB, 1 MiB and
256 KiB, and in the systems' chunk length, each from its own barrier, and the bound is the
fastest of them: the best any chunking achieves, not one a system might beat.

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
# The piece sizes tried besides the whole share and the systems' chunk length.
PIECE_BYTES = (4 << 20, 1 << 20, 256 << 10)


def chunkings(rows: int, row_bytes: int, chunk_len: int) -> list[int]:
    """The chunk lengths (in rows) one repetition tries: whole, the piece sizes, the
    systems' own; duplicates dropped."""
    lengths = [max(rows, 1), *(max(1, b // max(row_bytes, 1)) for b in PIECE_BYTES), max(chunk_len, 1)]
    return sorted(set(lengths), reverse=True)


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
            row_bytes = x.itemsize * int(np.prod(x.shape[1:]))  # from the shape: a share may be empty
            # Every process has the same count of shares' rows (up to one), so the same list.
            runs = []
            for length in chunkings(-(-size // parts), row_bytes, chunk_len):
                kernels.poison(out)
                barrier.wait()
                start = time.perf_counter()
                for low, high in kernels.chunk_bounds(x.shape[0], length):
                    inplace(x[low:high], out[low:high])
                end = time.perf_counter()
                runs.append((length, start, end, kernels.check(workload, out, x)))
            conn.send(("ok", runs))
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

    def run(self) -> tuple[float, str | None, int]:
        """One repetition: (seconds from the first start to the last finish of the fastest
        chunking, a check failure of any chunking or None, that chunking's length)."""
        replies = [r[1] for r in self._ask_all(("run",))]
        best: tuple[float, int] | None = None
        problems = []
        for k, (length, *_rest) in enumerate(replies[0]):
            first = min(r[k][1] for r in replies)
            last = max(r[k][2] for r in replies)
            if best is None or last - first < best[0]:
                best = (last - first, length)
            problems += [
                f"share {i}, chunks of {length}: {r[k][3]}" for i, r in enumerate(replies) if r[k][3]
            ]
        assert best is not None
        return best[0], "; ".join(problems) or None, best[1]

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
