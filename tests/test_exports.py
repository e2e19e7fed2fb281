"""The public surface is exactly what __all__ says, and importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import shmpool

from .conftest import run_python

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(shmpool.__all__) == EXPECTED
    for name in shmpool.__all__:
        assert getattr(shmpool, name) is not None
    assert set(dir(shmpool)) >= EXPECTED


def test_errors_hierarchy() -> None:
    assert issubclass(shmpool.PoolClosedError, shmpool.ShmpoolError)
    assert issubclass(shmpool.PoolClosedError, RuntimeError)
    assert issubclass(shmpool.WorkerCrashedError, RuntimeError)
    assert issubclass(shmpool.SharedMemoryFullError, MemoryError)
    assert issubclass(shmpool.ManagerError, shmpool.ShmpoolError)
    assert issubclass(shmpool.KernelError, shmpool.ShmpoolError)


def test_unknown_attribute() -> None:
    try:
        shmpool.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_private_modules_do_not_import_numpy() -> None:
    # The manager process only needs shmpool._segments; under spawn it must stay light.
    code = "import sys, shmpool._segments; print('numpy' in sys.modules, 'cloudpickle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_map_does_not_import_what_it_does_not_use() -> None:
    # The first map of a fresh process once paid 17 ms to import numpy.ma, to refuse masked
    # arrays, which cannot exist before it is imported.
    code = (
        "import sys, shmpool\n"
        "with shmpool.SharedPool(1, start_method='fork') as pool:\n"
        "    pool.map(abs, pool.zeros(4))\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    assert run_python("-c", code).stdout.split() == ["False"]


def test_the_fork_server_boots_while_the_backend_is_imported() -> None:
    # The fork server's interpreter (NumPy and shmpool's worker, about 100 ms) and the
    # parent's import of the process backend are a first pool's two longest steps; started
    # in this order they overlap. Seen from the parent: the server is asked to start before
    # the backend's modules are loaded, and only then are they loaded.
    code = (
        "import sys\n"
        "from multiprocessing import forkserver\n"
        "import shmpool\n"
        "heavy = ('shmpool._process_backend', 'shmpool._dispatch', 'shmpool._blocks')\n"
        "seen = []\n"
        "real = forkserver.ensure_running\n"
        "def watched():\n"
        "    seen.append([name in sys.modules for name in heavy])\n"
        "    real()\n"
        "forkserver.ensure_running = watched\n"
        "shmpool.SharedPool\n"
        "print('after attribute', [name in sys.modules for name in heavy])\n"
        "with shmpool.SharedPool(2, start_method='forkserver') as pool:\n"
        "    assert pool.map(len, pool.zeros(4), chunks=2) == [2, 2]\n"
        "print('at first start', seen[0])\n"
        "print('after the pool', [name in sys.modules for name in heavy])\n"
    )
    lines = run_python("-c", code).stdout.splitlines()
    assert lines == [
        "after attribute [False, False, False]",
        "at first start [False, False, False]",
        "after the pool [True, True, True]",
    ]
