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
    from ._kernel import Kernel, active_pool, default_pool, kernel
    from .dask_pool import DaskPool as DaskPool  # re-exported lazily, not in __all__
    from .pool import PoolStats, SharedPool, default_start_method, usable_cpus

__version__ = "0.1.0"

_LAZY = {
    "whole": "._args",
    # Imports Dask, which is optional (pip install "shmpool[dask]"): only on first use, and
    # not in __all__, so that "from shmpool import *" never needs Dask.
    "DaskPool": ".dask_pool",
    "Kernel": "._kernel",
    "active_pool": "._kernel",
    "default_pool": "._kernel",
    "kernel": "._kernel",
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
    return sorted([*__all__, "DaskPool"])
