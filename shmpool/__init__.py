"""shmpool: run NumPy kernels in parallel worker processes over arrays in shared memory.

import numpy as np, shmpool

def smooth(x, out):
    out[:] = np.sqrt(x) * 2 + 1

with shmpool.SharedPool() as pool:
    x = pool.asarray(np.random.rand(10_000_000))
    y = pool.empty_like(x)
    pool.map(smooth, x, y)
"""

from __future__ import annotations

from ._args import whole
from .errors import (
    KernelError,
    ManagerError,
    PoolClosedError,
    SharedMemoryFullError,
    ShmpoolError,
    WorkerCrashedError,
)
from .kernel import Kernel, active_pool, default_pool, kernel
from .pool import PoolStats, SharedPool, default_start_method, usable_cpus

__version__ = "0.1.0"

__all__ = [
    "Kernel",
    "KernelError",
    "ManagerError",
    "PoolClosedError",
    "PoolStats",
    "SharedMemoryFullError",
    "SharedPool",
    "ShmpoolError",
    "WorkerCrashedError",
    "__version__",
    "active_pool",
    "default_pool",
    "default_start_method",
    "kernel",
    "usable_cpus",
    "whole",
]
