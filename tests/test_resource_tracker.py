"""The resource tracker across Python versions.

Before 3.13, attaching a multiprocessing.shared_memory segment registers it with the
resource tracker, and a process with its own tracker destroys the segment when it exits
(https://github.com/python/cpython/issues/82300); 3.13 added ``track=False``. shmpool maps
block files itself and never registers them, so on every version a process that attached
a block can exit without harm, and the tracker never warns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shmpool
from shmpool import _arrays

from . import kernels
from .conftest import assert_clean_stderr

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_cpython_attach_hazard_on_this_version() -> None:
    """What shmpool avoids: CPython's own attach, from a process with its own tracker."""
    from multiprocessing import shared_memory

    segment = shared_memory.SharedMemory(create=True, size=64)
    try:
        attach = """
            import sys
            from multiprocessing import shared_memory
            kwargs = {"track": False} if sys.version_info >= (3, 13) else {}
            shared_memory.SharedMemory(sys.argv[1], **kwargs).close()
        """
        _python(attach, segment.name)
        survived = os.path.exists(f"/dev/shm/{segment.name}")
        if sys.version_info >= (3, 13):
            assert survived, "track=False must leave the segment alone"
        else:
            assert not survived, "before 3.13 an attaching process's tracker unlinks the segment"
    finally:
        try:
            segment.unlink()
        except FileNotFoundError:
            from multiprocessing import resource_tracker

            resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
        segment.close()


def test_an_unrelated_process_attaching_a_block_cannot_destroy_it(shared_pool: shmpool.SharedPool) -> None:
    x = shared_pool.full(16, 5.0)
    ref = _arrays.ref_of(x)
    assert ref is not None
    attach = """
        import pickle, sys
        from shmpool import _arrays
        ref = pickle.loads(bytes.fromhex(sys.argv[1]))
        view = _arrays.view_from_ref(ref)
        view[0] = 7.0
        print(view.sum())
    """
    import pickle

    proc = _python(attach, pickle.dumps(ref).hex())
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == 82.0
    assert_clean_stderr(proc.stderr)
    assert os.path.exists(ref.path) and x[0] == 7.0  # still there, written through


def test_workers_exiting_never_unlink_blocks(pool: shmpool.SharedPool) -> None:
    x = pool.asarray(np.arange(10.0))
    pool.map(kernels.double_in_place, x)  # every worker attaches
    for pid in pool.worker_pids:
        os.kill(pid, 9)
    path = _arrays.ref_of(x).path  # type: ignore[union-attr]
    assert pool.map(kernels.double_in_place, x, chunks=5) == [None, None]
    assert os.path.exists(path) and x.tolist() == [4.0 * i for i in range(10)]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_no_tracker_warning_at_exit(method: str) -> None:
    proc = _python(
        """
        import sys, numpy as np, shmpool
        from tests import kernels
        if __name__ == "__main__":
            with shmpool.SharedPool(2, start_method=sys.argv[1]) as pool:
                x = pool.asarray(np.arange(100.0))
                pool.map(kernels.double_in_place, x)
                pool.free(x)
                y = pool.zeros(10)
            pool2 = shmpool.SharedPool(1, start_method=sys.argv[1])
            pool2.map(kernels.double_in_place, np.zeros(3))
            print("done")
        """,
        method,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    assert_clean_stderr(proc.stderr)
