"""How many workers a pool gets by default: the CPUs this process may use, within its
container's CPU quota.

``os.sched_getaffinity`` says which CPUs the process may run on, but a container started
with ``--cpus=2`` (a cgroup CPU quota) on a 64-core host still sees 64 of them: 64 workers
would then share two CPUs' worth of time. The quota is read as loky's ``cpu_count`` does:
cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

__all__ = ["CpuLimits", "check_workers", "cpu_limits", "usable_cpus"]

_CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"


@dataclass(frozen=True, slots=True)
class CpuLimits:
    """What bounds the default worker count, and where each figure came from."""

    affinity: int  # CPUs in this process's affinity mask (else os.cpu_count())
    quota: int | None  # the cgroup's CPU quota, rounded up; None when there is none
    quota_source: str  # the file the quota was read from, or why there is none

    @property
    def usable(self) -> int:
        """The smaller of the two, at least 1."""
        return max(1, min(self.affinity, self.quota or self.affinity))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_dirs(root: str, proc_cgroup: str) -> list[tuple[str, str]]:
    """Where this process's CPU controller lives: ``(version, folder)`` candidates, its own
    cgroup first and the mount's root after (inside a container the two are the same)."""
    v2, v1 = [], []
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":
            v2.append(("v2", os.path.join(root, rel)))
        elif "cpu" in controllers.split(","):
            for name in ("cpu,cpuacct", "cpu"):
                v1.append(("v1", os.path.join(root, name, rel)))
    v1 += [("v1", os.path.join(root, "cpu,cpuacct")), ("v1", os.path.join(root, "cpu"))]
    return [*v2, ("v2", root), *v1]


def _quota(root: str, proc_cgroup: str) -> tuple[int | None, str]:
    for version, folder in _cgroup_dirs(root, proc_cgroup):
        if version == "v2":
            text = _read(os.path.join(folder, "cpu.max"))
            if text is None:
                continue
            quota, _, period = text.partition(" ")
            source = os.path.join(folder, "cpu.max")
        else:
            quota = _read(os.path.join(folder, "cpu.cfs_quota_us")) or ""
            period = _read(os.path.join(folder, "cpu.cfs_period_us")) or ""
            if not quota:
                continue
            source = os.path.join(folder, "cpu.cfs_quota_us")
        try:
            q, p = int(quota), int(period)
        except ValueError:  # "max", or a file we cannot read as numbers: no quota here
            return None, f"no CPU quota ({source})"
        if q <= 0 or p <= 0:
            return None, f"no CPU quota ({source})"
        return max(1, math.ceil(q / p)), source
    return None, "no cgroup CPU controller found"


def cpu_limits(root: str | None = None, proc_cgroup: str | None = None) -> CpuLimits:
    """This process's affinity and its cgroup's CPU quota (``python -m shmpool info``);
    ``root`` and ``proc_cgroup`` name the cgroup mount and this process's cgroup file."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        affinity = os.cpu_count() or 1
    quota, source = _quota(root or _CGROUP_ROOT, proc_cgroup or _PROC_CGROUP)
    return CpuLimits(affinity, quota, source)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, within its cgroup's CPU quota."""
    return cpu_limits().usable


def check_workers(workers: object) -> int:
    """``workers`` as a positive int (None: :func:`usable_cpus`); TypeError or ValueError."""
    if workers is None:
        return usable_cpus()
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int or None, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return int(workers)
