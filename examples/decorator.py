"""The @shmpool.kernel decorator: a kernel that runs as pool.map when called.

Run: python examples/decorator.py
"""

from __future__ import annotations

import numpy as np

import shmpool


@shmpool.kernel
def saxpy(x: np.ndarray, y: np.ndarray, out: np.ndarray, *, a: float) -> None:
    """out = a * x + y, in place, one chunk at a time."""
    out[:] = a * x + y


@shmpool.kernel(axis=1, chunks=64)
def column_norms(m: np.ndarray) -> np.ndarray:
    """Norms of a block of columns; the results of all chunks are concatenated."""
    return np.sqrt((m * m).sum(axis=0))


def main() -> None:
    with shmpool.SharedPool() as pool:  # the active pool inside this block
        x = pool.asarray(np.linspace(0, 1, 1_000_000))
        y = pool.full(x.shape, 2.0)
        out = pool.empty_like(x)
        saxpy(x, y, out, a=3.0)  # == pool.map(saxpy.func, x, y, out, a=3.0)
        assert np.allclose(out, 3.0 * x + 2.0)

        m = pool.asarray(np.random.default_rng(0).random((500, 1000)))
        norms = np.concatenate(column_norms(m))
        assert np.allclose(norms, np.linalg.norm(m, axis=0))

        future = saxpy.map_async(x, x, out, a=1.0)  # the asynchronous form
        future.result()
        assert np.allclose(out, 2.0 * x)

    # Outside any with-block the default pool (one worker per CPU) is used.
    z = np.ones(10)
    saxpy(z, z, z, a=2.0)  # plain arrays: staged into shared memory and copied back
    assert np.allclose(z, 3.0)
    print("saxpy and column_norms match NumPy on the active pool and on the default pool")


if __name__ == "__main__":
    main()
