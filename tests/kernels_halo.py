"""Kernels for the halo tests, importable by name in workers of every start method."""

from __future__ import annotations

from typing import Any

import numpy as np

import shmpool

Array = np.ndarray  # type: ignore[type-arg]


def convolve(x: Array, out: Array, *, weights: Array, before: int, after: int, along: int) -> None:
    """``out`` = a 1-D convolution of ``x`` along axis ``along`` (the map's) over ``before`` + 1 + ``after``
    neighbours; the part of the margin a ``"none"`` boundary leaves out reads as zeros."""
    info = shmpool.chunk_info()
    assert info is not None
    got_before, got_after = info.margins[0]
    pad = [(0, 0)] * x.ndim
    pad[along] = (before - got_before, after - got_after)
    ext = np.pad(x, pad)
    n = out.shape[along]
    total = np.zeros_like(out)
    for k, w in enumerate(weights):
        total += w * np.take(ext, np.arange(k, k + n), axis=along)
    out[...] = total


def convolve_serial(padded: Array, weights: Array, n: int, axis: int) -> Array:
    """The same convolution, serially, over an already padded array."""
    total = np.zeros_like(np.take(padded, np.arange(n), axis=axis))
    for k, w in enumerate(weights):
        total += w * np.take(padded, np.arange(k, k + n), axis=axis)
    return total


def where(x: Array, *rest: Any) -> tuple[Any, ...]:
    """What a kernel is given: chunk_info's fields and the halo view's values."""
    info = shmpool.chunk_info()
    assert info is not None
    return info.index, info.start, info.stop, info.length, info.margin, dict(info.margins), x.copy()


def itself(x: Array) -> Array:
    """Returns its view: a view of a shared array comes back as a view of it."""
    return x


def info_only(x: Array) -> Any:
    """chunk_info() in a map without halo arguments."""
    return shmpool.chunk_info()


def write_halo(x: Array) -> None:
    """Writes through a halo view, which is refused."""
    x[...] = 0


def diffuse(u: Array, out: Array) -> None:
    """One explicit step of 1-D diffusion along axis 0 with a reflecting boundary."""
    b, _ = shmpool.chunk_info().margin  # type: ignore[union-attr]
    n = out.shape[0]
    out[...] = u[b : b + n] + 0.25 * (u[b - 1 : b - 1 + n] - 2 * u[b : b + n] + u[b + 1 : b + 1 + n])


@shmpool.kernel(chunks=3)
def smooth3(x: Array, out: Array) -> None:
    """A three-point mean along axis 0, over a halo of depth 1 (decorated)."""
    b, _ = shmpool.chunk_info().margin  # type: ignore[union-attr]
    n = out.shape[0]
    out[...] = (x[b - 1 : b - 1 + n] + x[b : b + n] + x[b + 1 : b + 1 + n]) / 3


def diffuse_wide(u: Array, out: Array, *, depth: int) -> None:
    """One explicit diffusion step along axis 0 over ``depth`` rows each side (axis 1, if
    any, reflects): a margin that the ``"none"`` boundary leaves short is padded with the
    edge row here, so every boundary gives a result."""
    b, a = shmpool.chunk_info().margin  # type: ignore[union-attr]
    ext = np.pad(u, [(depth - b, depth - a)] + [(0, 0)] * (u.ndim - 1), mode="edge")
    n = out.shape[0]
    centre = ext[depth : depth + n]
    total = -2.0 * depth * centre
    for k in range(1, depth + 1):
        total += ext[depth - k : depth - k + n] + ext[depth + k : depth + k + n]
    if u.ndim == 2:
        side = np.pad(centre, ((0, 0), (1, 1)), mode="symmetric")
        total += side[:, :-2] + side[:, 2:] - 2 * centre
    out[...] = centre + 0.1 * total / depth
