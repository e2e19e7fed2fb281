"""shmpool: run NumPy kernels in parallel over arrays without copying them.

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
    SharedMemoryFallbackWarning,
    SharedMemoryFullError,
    ShmpoolError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from ._advance import advance
    from ._checks import whole
    from ._cluster_array import ClusterArray as ClusterArray  # DaskPool's arrays, not in __all__
    from ._executor import PoolExecutor
    from ._frontend import Pool, PoolStats
    from ._halo import ChunkInfo, chunk_info, halo
    from ._kernel import Kernel, active_pool, default_pool, kernel
    from ._sizing import usable_cpus
    from .dask_pool import DaskPool as DaskPool  # re-exported lazily, not in __all__
    from .pool import SharedPool, default_start_method
    from .threads import ThreadPool

__version__ = "0.1.0"

_LAZY = {
    "advance": "._advance",
    "whole": "._checks",
    "halo": "._halo",
    "chunk_info": "._halo",
    "ChunkInfo": "._halo",
    # Imports Dask, which is optional (pip install "shmpool[dask]"): only on first use, and
    # not in __all__, so that "from shmpool import *" never needs Dask.
    "DaskPool": ".dask_pool",
    # DaskPool's arrays on the cluster; the class itself imports no Dask.
    "ClusterArray": "._cluster_array",
    "Kernel": "._kernel",
    "active_pool": "._kernel",
    "default_pool": "._kernel",
    "kernel": "._kernel",
    "Pool": "._frontend",
    "PoolStats": "._frontend",
    "PoolExecutor": "._executor",
    "SharedPool": ".pool",
    "ThreadPool": ".threads",
    "default_start_method": ".pool",
    "usable_cpus": "._sizing",
}

__all__ = [
    "ChunkInfo",
    "Kernel",
    "KernelError",
    "ManagerError",
    "Pool",
    "PoolClosedError",
    "PoolExecutor",
    "PoolStats",
    "SharedMemoryFallbackWarning",
    "SharedMemoryFullError",
    "SharedPool",
    "ShmpoolError",
    "ThreadPool",
    "WorkerCrashedError",
    "__version__",
    "active_pool",
    "advance",
    "chunk_info",
    "default_pool",
    "default_start_method",
    "halo",
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
