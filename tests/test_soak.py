"""Soak: many maps and imap items on one pool; descriptors, blocks and memory stay flat.

CI runs the short version. The long one (10,000 maps, 100,000 items) is marked slow:
``python -m pytest -m slow tests/test_soak.py``.
"""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest

import shmpool

from . import kernels
from .conftest import shm_entries


def _soak(maps: int, items: int) -> None:
    process = psutil.Process()
    with shmpool.SharedPool(2, start_method="forkserver") as pool:
        x = pool.asarray(np.arange(1000.0))
        plain = np.ones(100)

        def state() -> tuple[int, int, int]:
            gc.collect()
            return process.num_fds(), len(shm_entries()), len(pool.block_paths)

        # Warm-up: first-use allocations in the parent and the workers.
        for _ in range(50):
            pool.map(kernels.double_in_place, plain)
        before, rss = state(), process.memory_info().rss
        for i in range(maps):
            pool.map(kernels.first_index, x, chunks=100)
            if i % 10 == 0:
                pool.map(kernels.double_in_place, plain)  # staging: a block made and freed
                plain[:] = 1
        assert sum(pool.imap(kernels.square, range(items), chunksize=50)) == sum(i * i for i in range(items))
        assert state() == before
        growth = process.memory_info().rss - rss
        assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
        assert pool.stats.maps >= maps


def test_soak_short() -> None:
    _soak(maps=1_000, items=20_000)


@pytest.mark.slow
def test_soak_long() -> None:
    _soak(maps=10_000, items=100_000)
