"""Kernels, inputs and result checks shared by every system in the benchmark.

Every function a worker runs lives here at module level, so that each system (pickle by
reference, cloudpickle, spawn, forkserver, dask's nannies) imports the same code by name.
Kernels come in pairs: an in-place form ``k(x, out)`` for systems whose workers write into
shared memory, and a returning form ``k_block(x) -> array`` for systems that send results
back by pickling. Both compute exactly what the serial reference computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "ARRAY_KERNELS",
    "SEED",
    "W3_COLS",
    "W6_LENGTH",
    "auto_chunk_len",
    "check",
    "chunk_bounds",
    "COMPARE_CHUNKS",
    "compare_chunk_len",
    "make_input",
    "poison",
    "w1_empty",
    "w1_item",
    "w1_kernel",
    "w2_block",
    "w2_kernel",
    "w2_serial",
    "w3_block",
    "w3_kernel",
    "w3_serial",
    "w4_item",
    "w4_kernel",
    "w6_block",
    "w6_kernel",
    "w7_item",
]

SEED = 20261126
W3_COLS = 256
W6_LENGTH = 4096  # W6's small array: 32 KiB of float64, mapped as 2 chunks

# shmpool's documented automatic chunking (README, "chunks=None"); every other system and
# the ideal bound get the same chunk length, so all of them do the same pieces of work.
_CHUNKS_PER_WORKER = 4
_TARGET_CHUNK_BYTES = 4 << 20
_MAX_AUTO_CHUNKS = 4096

# The result check compares in pieces of this many bytes, so it never holds a second
# full-size reference array (a 1 GiB W2 row would otherwise need 1 GiB more per host).
_CHECK_PIECE_BYTES = 16 << 20


def auto_chunk_len(length: int, bytes_per_index: int, workers: int) -> int:
    """Indices per chunk under shmpool's automatic rule: at least 4 chunks per worker, more
    when chunks would hold over 4 MiB, at most 4096 chunks and at most ``length``."""
    wanted = max(_CHUNKS_PER_WORKER * workers, math.ceil(length * bytes_per_index / _TARGET_CHUNK_BYTES))
    count = max(1, min(wanted, _MAX_AUTO_CHUNKS, length))
    return max(1, -(-length // count))


# The threads-vs-processes comparison (variant "e2e-plain8"): the issue fixes the chunk count
# at 8 whatever the worker count, so the thread peer, ThreadPool and SharedPool all run the
# same 8 slices.
COMPARE_CHUNKS = 8


def compare_chunk_len(length: int) -> int:
    """Indices per chunk for ``COMPARE_CHUNKS`` chunks over ``length`` indices."""
    return max(1, -(-length // COMPARE_CHUNKS))


def chunk_bounds(length: int, chunk_len: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every chunk of ``chunk_len`` indices (the last may be shorter)."""
    return [(s, min(s + chunk_len, length)) for s in range(0, length, chunk_len)]


def poison(a: np.ndarray) -> None:
    """Fill a reused output with NaN, so a repetition that writes nothing fails its check."""
    a[...] = np.nan  # also a DaskPool's cluster array, written on its workers


# ---- W1: dispatch (one-row chunks, trivial kernel) ------------------------------------------


def w1_kernel(x: np.ndarray, out: np.ndarray) -> None:
    """W1's trivial in-place kernel: ``out = x + 1``."""
    np.add(x, 1.0, out=out)


def w1_empty(x: np.ndarray) -> None:
    """W1's empty kernel: pure dispatch cost."""


def w1_item(v: float) -> float:
    """W1's trivial task for systems that map over items: ``v + 1``."""
    return v + 1.0


# ---- W2: memory-bound (out = sqrt(x) * 2 + 1) -----------------------------------------------


def w2_kernel(x: np.ndarray, out: np.ndarray) -> None:
    """W2 in place, without temporaries: ``out = sqrt(x) * 2 + 1``."""
    np.sqrt(x, out=out)
    out *= 2.0
    out += 1.0


def w2_block(x: np.ndarray) -> np.ndarray:
    """W2 returning a new array."""
    out = np.sqrt(x)
    out *= 2.0
    out += 1.0
    return out


def w2_serial(x: np.ndarray) -> np.ndarray:
    """W2 as a NumPy user writes it in one process."""
    return np.sqrt(x) * 2 + 1


# ---- W3: GIL-bound (pure-Python running max per row) ----------------------------------------


def w3_kernel(x: np.ndarray, out: np.ndarray) -> None:
    """W3 in place: the running maximum along each row, one Python step per element."""
    for i in range(x.shape[0]):
        best = -math.inf
        acc = []
        for v in x[i].tolist():
            if v > best:
                best = v
            acc.append(best)
        out[i] = acc


def w3_block(x: np.ndarray) -> np.ndarray:
    """W3 returning a new array."""
    out = np.empty_like(x)
    w3_kernel(x, out)
    return out


def w3_serial(x: np.ndarray) -> np.ndarray:
    """W3's reference result (vectorised, for checking only)."""
    return np.maximum.accumulate(x, axis=1)


# ---- W4, W6, W7 -----------------------------------------------------------------------------


def w4_item(i: int) -> int:
    """W4's trivial task: the identity."""
    return i


def w4_kernel(x: np.ndarray) -> float:
    """W4's trivial chunk kernel for array maps: the chunk's first value."""
    return float(x[0])


def w6_kernel(x: np.ndarray, out: np.ndarray) -> None:
    """W6's small in-place kernel: ``out = x * 2 + 1``."""
    np.multiply(x, 2.0, out=out)
    out += 1.0


def w6_block(x: np.ndarray) -> np.ndarray:
    """W6 returning a new array."""
    out = x * 2.0
    out += 1.0
    return out


def w7_item(i: int) -> int:
    """W7's small item function."""
    return i * 2 + 1


# In-place and returning forms of the array workloads, by workload name.
ARRAY_KERNELS: dict[
    str, tuple[Callable[[np.ndarray, np.ndarray], None], Callable[[np.ndarray], np.ndarray]]
] = {
    "W2": (w2_kernel, w2_block),
    "W3": (w3_kernel, w3_block),
}


# ---- inputs and checks ----------------------------------------------------------------------


def make_input(workload: str, size: int, seed: int = SEED) -> np.ndarray:
    """The input of ``workload``: ``size`` is elements (W2, W5), rows (W3) or items (W1,
    W4, W6, W7). The same seed gives every system the same data."""
    rng = np.random.default_rng(seed)
    if workload in ("W2", "W5"):
        return rng.random(size)
    if workload == "W3":
        return rng.random((size, W3_COLS))
    if workload == "W6":
        return rng.random(W6_LENGTH)
    return np.arange(size, dtype=np.float64)  # W1, W4, W7: item i has value i


def _reference(workload: str, x: np.ndarray) -> np.ndarray:
    if workload == "W1":
        return x + 1.0
    if workload in ("W2", "W5"):
        return w2_serial(x)
    if workload == "W3":
        return w3_serial(x)
    if workload == "W4":
        return x
    if workload == "W6":
        return x * 2.0 + 1.0
    if workload == "W7":
        return x * 2 + 1
    raise ValueError(f"no reference for workload {workload!r}")


def check(workload: str, result: Any, x: np.ndarray, *, copy: bool = False) -> str | None:
    """None if ``result`` equals (``np.allclose``) the serial NumPy result of ``workload`` on
    ``x`` (or ``x`` itself when ``copy``), else a short description of the mismatch."""
    try:
        got = np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return f"result is not numeric ({type(result).__name__}: {exc})"
    if got.shape != x.shape:
        return f"result shape {got.shape}, expected {x.shape}"
    if x.ndim == 0 or x.size == 0:
        return None
    rows = max(1, _CHECK_PIECE_BYTES // max(1, x[0].nbytes if x.ndim > 1 else x.itemsize))
    for start in range(0, x.shape[0], rows):
        piece = slice(start, start + rows)
        want = x[piece] if copy else _reference(workload, x[piece])
        if not np.allclose(got[piece], want):
            bad = ~np.isclose(got[piece], want)
            first = int(np.argwhere(bad)[0][0]) + start
            return (
                f"{int(bad.sum())} values differ in rows {start}:{start + rows}, first at index {first}: "
                f"got {got[first]!r}, expected {(x[first] if copy else _reference(workload, x[first : first + 1])[0])!r}"
            )
    return None
