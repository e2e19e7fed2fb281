"""Default worker counts in containers: the cgroup CPU quota bounds them (v2 and v1),
read from simulated cgroup trees; the pools built on them are real."""

from __future__ import annotations

from pathlib import Path

import pytest

import shmpool
from shmpool import _info, _sizing


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
