"""shmpool: run NumPy kernels in parallel worker processes over arrays in shared memory.

    import numpy as np, shmpool

    def smooth(x, out):
        out[:] = np.sqrt(x) * 2 + 1

    with shmpool.SharedPool() as pool:
        x = pool.asarray(np.random.rand(10_000_000))
        y = pool.empty_like(x)
        pool.map(smooth, x, y)

Public names are imported on first use: a process that only needs a private module (the
pool's manager process, started with spawn) does not pay for NumPy and cloudpickle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    KernelError,
    ManagerError,
    PoolClosedError,
    SharedMemoryFullError,
    ShmpoolError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from ._args import whole
    from .kernel import Kernel, active_pool, default_pool, kernel
    from .pool import PoolStats, SharedPool, default_start_method, usable_cpus

__version__ = "0.1.0"

_LAZY = {
    "whole": "._args",
    "Kernel": ".kernel",
    "active_pool": ".kernel",
    "default_pool": ".kernel",
    "kernel": ".kernel",
    "PoolStats": ".pool",
    "SharedPool": ".pool",
    "default_start_method": ".pool",
    "usable_cpus": ".pool",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shmpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
