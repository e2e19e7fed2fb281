"""Shared fixtures. Every test is checked for leaks: shared-memory entries left in
/dev/shm and child processes left running fail the test that left them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import psutil
import pytest

import shmpool

START_METHODS = ["fork", "spawn", "forkserver"]
SHM = "/dev/shm"
# Only what this test process made counts: other programs on the machine (a benchmark run,
# another test session) may create and remove entries at any time. Blocks made by test
# subprocesses are checked by the tests that start them.
_SHM_NAME = re.compile(rf"^shmpool_{os.getpid()}_")
# multiprocessing's per-interpreter helpers, shared by every pool of the test session.
_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
LEAK_GRACE_S = 5.0

_live_shared_pools: list[shmpool.SharedPool] = []


def shm_entries() -> set[str]:
    """The blocks this process has in /dev/shm."""
    return {n for n in os.listdir(SHM) if _SHM_NAME.match(n)}


def pool_fds() -> list[str]:
    """What this process's pools hold open: pipes (workers, wake-up), pidfds, block files.
    Sockets and the like are left out: in a whole test run other tests' clients (Dask,
    Jupyter) open and close theirs meanwhile, which read as two descriptors more at times."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing (or the listing's own descriptor)
        if target.startswith(("pipe:", "anon_inode:[pidfd]")) or "shmpool_" in target:
            held.append(target)
    return held


def child_pids() -> set[int]:
    """This process's descendants, except multiprocessing's session-wide helpers."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not any(h in cmdline for h in _HELPERS):
            pids.add(child.pid)
    return pids


def _owned_by_live_pools() -> tuple[set[str], set[int]]:
    names: set[str] = set()
    pids: set[int] = set()
    for pool in _live_shared_pools:
        names.update(os.path.basename(p) for p in pool.block_paths)
        pids.update(pool.worker_pids)
        if pool.manager_pid is not None:
            pids.add(pool.manager_pid)
    return names, pids


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves /dev/shm entries or processes behind."""
    shm_before, children_before = shm_entries(), child_pids()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        owned_names, owned_pids = _owned_by_live_pools()
        leaked = shm_entries() - shm_before - owned_names
        stray = child_pids() - children_before - owned_pids
        if (not leaked and not stray) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"shared-memory entries leaked: {sorted(leaked)}"
    assert not stray, f"processes left running: {sorted(stray)}"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each of the three start methods."""
    return str(request.param)


@pytest.fixture(scope="module", params=START_METHODS)
def shared_pool(request: pytest.FixtureRequest) -> Iterator[shmpool.SharedPool]:
    """A 2-worker pool per start method, shared by a module's tests to save start-up."""
    pool = shmpool.SharedPool(2, start_method=request.param)
    _live_shared_pools.append(pool)
    names = set()
    try:
        yield pool
    finally:
        _live_shared_pools.remove(pool)
        names = {os.path.basename(p) for p in pool.block_paths}
        pool.close()
    assert not pool.block_paths
    assert not names & shm_entries(), "a closed pool left blocks in /dev/shm"


@pytest.fixture(scope="session", autouse=True)
def no_session_leaks() -> Iterator[None]:
    """Nothing the whole session made may remain in /dev/shm at its end."""
    before = shm_entries()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaked := shm_entries() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"the test session leaked shared-memory entries: {sorted(leaked)}"


@pytest.fixture
def pool(start_method: str) -> Iterator[shmpool.SharedPool]:
    """A fresh 2-worker pool for tests that change or break it."""
    with shmpool.SharedPool(2, start_method=start_method) as p:
        yield p


def run_python(
    *args: str, timeout: float = 60, check: bool = True, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in a fresh interpreter; fail on a non-zero exit (if ``check``)
    and on any resource_tracker complaint or worker traceback on stderr."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_clean_stderr(proc.stderr)
    return proc


def run_script(
    code: str, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """:func:`run_python` of ``code`` given as text."""
    return run_python("-c", textwrap.dedent(code), *args, timeout=timeout, check=check)


def assert_clean_stderr(stderr: str) -> None:
    """No resource_tracker warning, leaked-object report or stray traceback."""
    for bad in ("resource_tracker", "leaked", "Exception ignored", "BufferError"):
        assert bad not in stderr, f"stderr mentions {bad!r}:\n{stderr}"
