"""Default worker counts in containers: the cgroup CPU quota bounds them (v2 and v1),
read from simulated cgroup trees; the pools built on them are real."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import shmpool
from shmpool import _cache, _info, _segments, _sizing, _space


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc_file = tmp_path / "proc_cgroup"
    proc_file.write_text(proc + "\n")
    return str(root), str(proc_file)


@pytest.mark.parametrize(
    ("proc", "files", "quota"),
    [
        ("0::/", {"cpu.max": "200000 100000"}, 2),
        ("0::/", {"cpu.max": "150000 100000"}, 2),  # 1.5 CPUs round up
        ("0::/", {"cpu.max": "max 100000"}, None),
        ("0::/docker/abc", {"docker/abc/cpu.max": "50000 100000"}, 1),
        (
            "4:cpu,cpuacct:/",
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            3,
        ),
        (
            "4:cpu,cpuacct:/",
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            None,
        ),
        (
            "3:cpu:/job/7",
            {"cpu/job/7/cpu.cfs_quota_us": "400000", "cpu/job/7/cpu.cfs_period_us": "100000"},
            4,
        ),
        ("1:name=systemd:/", {}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, proc: str, files: dict[str, str], quota: int | None) -> None:
    root, proc_file = _tree(tmp_path, proc, files)
    limits = _sizing.cpu_limits(root, proc_file)
    assert limits.quota == quota
    assert limits.usable == min(limits.affinity, quota or limits.affinity)
    if quota is not None:
        assert limits.quota_source.startswith(root)


def test_a_quota_bounds_the_default_pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 CPUs in the affinity mask, a quota of 2 (docker run --cpus=2 on a big host).
    root, proc_file = _tree(tmp_path, "0::/", {"cpu.max": "200000 100000"})
    monkeypatch.setattr(_sizing, "_CGROUP_ROOT", root)
    monkeypatch.setattr(_sizing, "_PROC_CGROUP", proc_file)
    monkeypatch.setattr(_sizing.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert shmpool.usable_cpus() == 2
    with shmpool.ThreadPool() as threads:
        assert threads.workers == 2
    with shmpool.SharedPool(start_method="fork") as pool:
        assert pool.workers == 2 and len(pool.worker_pids) == 2
    line = next(line for line in _info.info_lines() if line.startswith("usable CPUs"))
    assert "usable CPUs: 2" in line and "affinity mask 64" in line and "quota 2" in line


# ---- memory: the cgroup's headroom bounds a tmpfs folder's free space --------------------

MiB = 2**20


@pytest.mark.parametrize(
    ("proc", "files", "headroom", "source"),
    [
        # v2: limit - usage + inactive page cache
        (
            "0::/",
            {
                "memory.max": str(64 * MiB),
                "memory.current": str(40 * MiB),
                "memory.stat": "inactive_file 4194304",
            },
            28 * MiB,
            "memory.max",
        ),
        ("0::/", {"memory.max": "max", "memory.current": str(40 * MiB)}, None, None),
        # a nested cgroup under a tighter parent: the parent's headroom is what is left
        (
            "0::/job/7",
            {
                "job/7/memory.max": str(512 * MiB),
                "job/7/memory.current": str(10 * MiB),
                "job/memory.max": str(100 * MiB),
                "job/memory.current": str(90 * MiB),
            },
            10 * MiB,
            "job/memory.max",
        ),
        # v1, an unlimited cgroup: the kernel's "no limit" is a huge number
        (
            "4:memory:/x",
            {
                "memory/x/memory.limit_in_bytes": "9223372036854771712",
                "memory/x/memory.usage_in_bytes": "1000",
            },
            None,
            None,
        ),
        (
            "4:memory:/x",
            {
                "memory/x/memory.limit_in_bytes": str(256 * MiB),
                "memory/x/memory.usage_in_bytes": str(250 * MiB),
                "memory/x/memory.stat": "cache 0\ntotal_inactive_file 2097152",
            },
            8 * MiB,
            "memory/x/memory.limit_in_bytes",
        ),
        # usage over the limit (it happens briefly): no room, not a negative figure
        ("0::/", {"memory.max": str(MiB), "memory.current": str(2 * MiB)}, 0, "memory.max"),
        ("1:name=systemd:/", {}, None, None),
    ],
)
def test_cgroup_memory_headroom(
    tmp_path: Path, proc: str, files: dict[str, str], headroom: int | None, source: str | None
) -> None:
    root, proc_file = _tree(tmp_path, proc, files)
    limit = _sizing.memory_limit(root, proc_file)
    assert limit.headroom == headroom
    if source is not None:
        assert limit.source == str(Path(root) / source)
        assert limit.limit is not None
    else:
        assert limit.limit is None


@pytest.fixture
def cgroup_headroom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A simulated cgroup v2 whose memory limit leaves 4 MiB of headroom."""
    root, proc_file = _tree(tmp_path, "0::/", {"memory.max": str(64 * MiB), "memory.current": str(60 * MiB)})
    monkeypatch.setattr(_sizing, "_CGROUP_ROOT", root)
    monkeypatch.setattr(_sizing, "_PROC_CGROUP", proc_file)
    return 4 * MiB


def test_headroom_bounds_only_memory_folders(cgroup_headroom: int, tmp_path: Path) -> None:
    shm = _segments.block_folder()
    assert _space.memory_backed(shm) and not _space.memory_backed(str(tmp_path))
    assert _segments.free_bytes(shm) == cgroup_headroom
    space = _space.folder_space(shm)
    assert space.cgroup_bound and space.folder_free > cgroup_headroom
    # A folder on disk holds page cache, which the kernel reclaims: no cgroup bound.
    assert _segments.free_bytes(str(tmp_path)) > cgroup_headroom


def test_an_allocation_past_the_headroom_raises_naming_the_limit(
    cgroup_headroom: int, start_method: str
) -> None:
    with shmpool.SharedPool(2, start_method=start_method, temp_folder=_segments.block_folder()) as pool:
        x = pool.zeros(MiB // 8)  # 1 MiB fits in 4
        with pytest.raises(shmpool.SharedMemoryFullError) as info:
            pool.zeros(MiB)  # 8 MiB does not, although /dev/shm itself has gigabytes free
        message = str(info.value)
        assert "memory cgroup limit" in message and "memory.max" in message
        assert "out-of-memory killer" in message and "--memory" in message
        assert info.value.available == cgroup_headroom and info.value.requested == 8 * MiB
        assert pool.fallback_folder is None  # a folder chosen: no fallback
        pool.map(np.sqrt, x, x)


def test_the_headroom_sends_blocks_to_the_fallback_folder(
    cgroup_headroom: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    monkeypatch.delenv(_segments.TEMP_FOLDER_ENV, raising=False)
    with shmpool.SharedPool(1, start_method="fork") as pool:
        assert pool.fallback_folder == str(disk)
        with pytest.warns(shmpool.SharedMemoryFallbackWarning, match="memory cgroup limit"):
            big = pool.zeros(MiB)
        assert [os.path.dirname(p) for p in pool.block_paths].count(str(disk)) == 1
        pool.map(np.add, big, shmpool.whole(1.0), big)
        assert big.sum() == MiB
    assert not [n for n in os.listdir(disk) if n.startswith("shmpool_")]


def test_info_reports_each_figure_and_its_source(
    cgroup_headroom: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(_segments.TEMP_FOLDER_ENV, raising=False)
    lines = {line.split(":", 1)[0]: line for line in _info.info_lines()}
    memory = lines["cgroup memory"]
    assert "limit 0.06 GiB" in memory and "headroom 0.00 GiB" in memory and "memory.max" in memory
    folder = lines["block folder"]
    assert "/dev/shm (memory (tmpfs))" in folder and "bounded by the cgroup memory headroom" in folder
    fallback = lines["fallback folder (when the block folder is full)"]
    assert f"{tmp_path} (file-backed)" in fallback and "bounded" not in fallback
    inner = lines["inner thread limit"]
    assert f"{max(1, shmpool.usable_cpus() // shmpool.usable_cpus())} per worker" in inner
    for lib in threadpoolctl.threadpool_info():  # NumPy's BLAS, as threadpoolctl finds it
        assert f"{lib['internal_api']} {lib['num_threads']} threads" in inner
    monkeypatch.setenv(_segments.TEMP_FOLDER_ENV, str(tmp_path))
    lines = {line.split(":", 1)[0]: line for line in _info.info_lines()}
    assert "none, a folder was chosen" in lines["fallback folder (when the block folder is full)"]


def test_the_default_cache_is_bounded_by_the_cgroup_limit(cgroup_headroom: int) -> None:
    assert _cache.default_cache_bytes(_segments.block_folder()) == 64 * MiB // 8  # the limit's eighth
