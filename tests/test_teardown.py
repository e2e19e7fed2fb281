"""Teardown under outside faults: the parent killed or terminated, the manager killed, a
small /dev/shm, many pools. Each case ends with no block left and no process left."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

import shmpool
from shmpool import _block_files, _segments

from . import kernels
from .conftest import assert_clean_stderr, pool_fds, shm_entries

ROOT = Path(__file__).resolve().parent.parent

# A child that builds a pool, reports what it made, then waits to be killed.
CHILD = """
import json, sys, time, numpy as np, shmpool
from tests import kernels
method, folder = sys.argv[1], sys.argv[2] or None
pool = shmpool.SharedPool(2, start_method=method, temp_folder=folder)
x = pool.asarray(np.arange(1_000_000.0))
pool.map(kernels.double_in_place, x)
busy = pool.map_async(kernels.sleep_chunk, np.zeros(2), chunks=1, seconds=60)  # one busy, one idle later
report = {
    "blocks": pool.block_paths,
    "pids": [*pool.worker_pids, pool.manager_pid],
}
print(json.dumps(report), flush=True)
time.sleep(120)
"""


def _spawn_child(
    method: str, folder: str = "", new_session: bool = False, code: str = CHILD
) -> tuple[subprocess.Popen[str], dict]:  # type: ignore[type-arg]
    """Start ``code`` (a script that prints one JSON line about its pool) and read the line."""
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), method, folder],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=new_session,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"child failed: {proc.communicate()[1]}")
    return proc, json.loads(line)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie), even if it exits as we look."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone_within(report: dict, seconds: float) -> tuple[list[str], list[int]]:  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    while True:
        blocks = [p for p in report["blocks"] if os.path.exists(p)]
        pids = [p for p in report["pids"] if _running(p)]
        if (not blocks and not pids) or time.monotonic() > deadline:
            return blocks, pids
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_parent_killed(start_method: str, sig: int) -> None:
    proc, report = _spawn_child(start_method)
    assert all(os.path.exists(p) for p in report["blocks"])
    proc.send_signal(sig)
    proc.wait(timeout=10)
    blocks, pids = _gone_within(report, 5.0)
    assert not blocks, f"blocks left after the parent died: {blocks}"
    assert not pids, f"workers or manager outlived the parent: {pids}"
    assert_clean_stderr(proc.stderr.read() if proc.stderr else "")


def test_parent_killed_with_temp_folder(tmp_path: Path) -> None:
    proc, report = _spawn_child("forkserver", str(tmp_path))
    assert all(p.startswith(str(tmp_path)) for p in report["blocks"])
    proc.kill()
    proc.wait(timeout=10)
    blocks, pids = _gone_within(report, 5.0)
    assert not blocks and not pids


def test_everything_killed_then_swept(tmp_path: Path) -> None:
    # The manager runs in a group of its own, so killing the pool's group leaves it to clean
    # up (tests/test_hardening_platform.py); killed outright first, it cannot: the next
    # pool start sweeps what it left.
    proc, report = _spawn_child("fork", str(tmp_path), new_session=True)
    os.kill(report["pids"][-1], signal.SIGKILL)  # the manager
    _, pids = _gone_within({"blocks": [], "pids": report["pids"][-1:]}, 5.0)
    assert not pids
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    _, pids = _gone_within({"blocks": [], "pids": report["pids"]}, 5.0)
    assert not pids
    assert all(os.path.exists(p) for p in report["blocks"])  # nobody was left to clean up
    with shmpool.SharedPool(1, start_method="fork", temp_folder=tmp_path):
        assert not any(os.path.exists(p) for p in report["blocks"])


def test_sweep_spares_live_owners(tmp_path: Path) -> None:
    mine = tmp_path / f"shmpool_{os.getpid()}_0a0b_abc123"
    mine.write_bytes(b"x")
    dead_pid = _a_dead_pid()
    theirs = tmp_path / f"shmpool_{dead_pid}_0a0b_abc123"
    theirs.write_bytes(b"x")
    other = tmp_path / "not_ours"
    other.write_bytes(b"x")
    assert _block_files.sweep_dead_blocks(str(tmp_path)) == [str(theirs)]
    assert mine.exists() and other.exists() and not theirs.exists()


def _a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_manager_killed_during_use(start_method: str) -> None:
    pool = shmpool.SharedPool(2, start_method=start_method)
    try:
        x = pool.asarray(np.arange(100.0))
        blocks = pool.block_paths
        manager = psutil.Process(pool.manager_pid)
        manager.kill()
        manager.wait(5)
        start = time.monotonic()
        with pytest.raises(shmpool.ManagerError, match="manager process"):
            pool.empty(10)
        with pytest.raises(shmpool.ManagerError):
            pool.map(kernels.double_in_place, np.zeros(4))  # a plain array needs staging
        assert time.monotonic() - start < 2.0
        pool.map(kernels.double_in_place, x)  # arrays that exist still work
        assert x[3] == 6.0
    finally:
        pool.close()
    assert not any(os.path.exists(p) for p in blocks if p)  # the pool unlinked them itself


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, like a container's small /dev/shm."""
    mount = tmp_path / "shm"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_small_tmpfs_raises_instead_of_sigbus(tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with shmpool.SharedPool(2, start_method="forkserver", temp_folder=tiny_tmpfs) as pool:
        small = pool.zeros(100_000)  # 800 kB fits
        with pytest.raises(shmpool.SharedMemoryFullError) as info:
            pool.zeros(1_000_000)  # 8 MB does not: caught by the free-space check
        assert info.value.folder == str(tiny_tmpfs) and info.value.requested == 8_000_000
        # Past the advisory check, posix_fallocate is what stops it: no SIGBUS either.
        monkeypatch.setattr(_segments, "free_bytes", lambda folder: 10**12)
        with pytest.raises(shmpool.SharedMemoryFullError, match="only"):
            pool.zeros(1_000_000)
        monkeypatch.undo()
        with pytest.raises(shmpool.SharedMemoryFullError):
            pool.map(kernels.double_in_place, np.zeros(1_000_000))  # staging a plain array
        pool.map(kernels.double_in_place, small)
        assert sorted(os.listdir(tiny_tmpfs)) == sorted(os.path.basename(p) for p in pool.block_paths)
    assert os.listdir(tiny_tmpfs) == []


def test_many_pools_at_once_and_in_a_loop() -> None:
    process = psutil.Process()

    def snapshot() -> tuple[int, int, int]:
        gc.collect()  # closed pools' pipes are closed by finalizers
        # What pools hold, not every descriptor: on 3.13 in a whole run another test's
        # sockets once read here as two more.
        return len(pool_fds()), threading.active_count(), len(shm_entries())

    with shmpool.SharedPool(1, start_method="fork"):
        pass  # warm up one-time state (the resource tracker, imports)
    pools = [shmpool.SharedPool(1, start_method=m) for m in ("fork", "forkserver", "fork", "forkserver")]
    arrays = [p.full(100, float(i)) for i, p in enumerate(pools)]
    for p, a in zip(pools, arrays, strict=True):
        p.map(kernels.double_in_place, a)
    for p in pools:
        p.close()
    assert [a[0] for a in arrays] == [0.0, 2.0, 4.0, 6.0]
    del pools, arrays, p, a  # a live array keeps its mapping (and before 3.13 a descriptor)
    before = snapshot()
    fds_before = pool_fds()
    rss_before = process.memory_info().rss
    for i in range(LOOP_POOLS):
        with shmpool.SharedPool(1, start_method="fork") as pool:
            x = pool.zeros(10)
            pool.map(kernels.double_in_place, x)
        if i == 20:
            rss_before = process.memory_info().rss  # after allocator warm-up
    del pool, x

    # Threads and descriptors of the last pool go as its helper threads end; on a loaded
    # machine that can take a moment. A leak never recovers, so a bounded wait stays strict.
    # A leak of any pool shows as LOOP_POOLS descriptors or more (one per pool at least).
    # Two more than before, never reproduced alone or in the suite's tail, came up in two of
    # four whole CI runs (pipes or pidfds on 3.10; descriptors of any kind on 3.13), so two
    # of drift are let through, and a failure names what appeared.
    drift = (2, 0, 0)

    def grew() -> bool:  # descriptors left by earlier tests may close meanwhile
        return any(now > then + d for now, then, d in zip(snapshot(), before, drift, strict=True))

    deadline = time.monotonic() + 15
    while grew() and time.monotonic() < deadline:
        time.sleep(0.05)
    new_fds = sorted(set(pool_fds()) - set(fds_before))  # what a failure names
    assert not grew(), (snapshot(), before, new_fds)
    assert process.memory_info().rss - rss_before < 30 * 2**20


LOOP_POOLS = int(os.environ.get("SHMPOOL_LOOP_POOLS", "1000"))


def test_a_dying_parent_sweeps_only_its_own_pool(tmp_path: Path) -> None:
    # Blocks of another pool whose name starts with the same PID (the kernel reuses PIDs)
    # must survive when a manager cleans up after its dead parent.
    proc, report = _spawn_child("fork", str(tmp_path))
    pid = os.path.basename(report["blocks"][0]).split("_")[1]
    stranger = tmp_path / f"shmpool_{pid}_ffffffff_0123456789ab"
    stranger.write_bytes(b"x")
    untracked = report["blocks"][0].rsplit("_", 1)[0] + "_feedfeedfeed"  # same pool, not tracked
    Path(untracked).write_bytes(b"x")
    proc.kill()
    proc.wait(timeout=10)
    blocks, pids = _gone_within({"blocks": [*report["blocks"], untracked], "pids": report["pids"]}, 5.0)
    assert not blocks and not pids
    assert stranger.exists()
    stranger.unlink()
