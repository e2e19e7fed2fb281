"""What this process's container allows it: how many CPUs (the default worker count) and
how much memory (the room shared memory really has).

``os.sched_getaffinity`` says which CPUs the process may run on, but a container started
with ``--cpus=2`` (a cgroup CPU quota) on a 64-core host still sees 64 of them: 64 workers
would then share two CPUs' worth of time. The quota is read as loky's ``cpu_count`` does:
cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up.

Memory: pages of a tmpfs such as ``/dev/shm`` are charged to the memory cgroup of the
process that touches them, so a container's ``/dev/shm`` can show gigabytes free while its
memory limit has room for far less. Past that limit ``posix_fallocate`` on the tmpfs does
not fail: the kernel's out-of-memory killer ends the process (seen with Linux 6.18, cgroup
v1; README, "Shared memory in containers"). :func:`memory_limit` gives the headroom that
:mod:`shmpool._space` then counts as the folder's free space.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

__all__ = ["CpuLimits", "MemoryLimit", "check_workers", "cpu_limits", "memory_limit", "usable_cpus"]

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


def _cgroup_dirs(root: str, proc_cgroup: str, controller: str = "cpu") -> list[tuple[str, str]]:
    """Where this process's ``controller`` lives: ``(version, folder)`` candidates, its own
    cgroup first and the mount's root after (inside a container the two are the same)."""
    v1_names = ("cpu,cpuacct", "cpu") if controller == "cpu" else (controller,)
    v2, v1 = [], []
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":
            v2.append(("v2", os.path.join(root, rel)))
        elif controller in controllers.split(","):
            for name in v1_names:
                v1.append(("v1", os.path.join(root, name, rel)))
    v1 += [("v1", os.path.join(root, name)) for name in v1_names]
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


# A limit this large is the kernel's way of saying "none" (v1 reports 2**63 rounded down
# to a page; no machine has 2**60 bytes).
_NO_LIMIT = 2**60


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """The memory cgroup's room for more pages, and where the figures came from."""

    headroom: int | None  # bytes the cgroup may still charge before its limit; None: no limit
    limit: int | None  # the tightest limit found, in bytes; None when there is none
    source: str  # the limit file, or why there is no limit


def _number(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:  # "max": no limit
        return None


def _inactive_file(folder: str, key: str) -> int:
    """The cgroup's inactive page cache: the kernel reclaims it before it kills anyone."""
    for line in (_read(os.path.join(folder, "memory.stat")) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _number(value) or 0
    return 0


def _ancestors(folder: str, top: str) -> list[str]:
    """``folder`` and each folder above it up to ``top``: every one of their limits holds."""
    found = [folder]
    while os.path.normpath(folder) != os.path.normpath(top) and folder.startswith(top):
        folder = os.path.dirname(folder)
        found.append(folder)
    return found


def memory_limit(root: str | None = None, proc_cgroup: str | None = None) -> MemoryLimit:
    """The headroom of this process's memory cgroup: its limit less what is charged to it,
    plus its inactive page cache (which the kernel reclaims before the limit bites), the
    tightest over the cgroup and its ancestors. cgroup v2 ``memory.max`` and ``memory.current``, else
    v1 ``memory.limit_in_bytes`` and ``memory.usage_in_bytes``. ``root`` and ``proc_cgroup``
    name the cgroup mount and this process's cgroup file (tests simulate both)."""
    root = root or _CGROUP_ROOT
    best: MemoryLimit | None = None
    for version, folder in _cgroup_dirs(root, proc_cgroup or _PROC_CGROUP, "memory"):
        if version == "v2":
            names, inactive, top = ("memory.max", "memory.current"), "inactive_file", root
        else:
            names, inactive = ("memory.limit_in_bytes", "memory.usage_in_bytes"), "total_inactive_file"
            top = os.path.join(root, "memory")
        if not os.path.isfile(os.path.join(folder, names[0])):
            continue
        for level in _ancestors(folder, top):
            limit = _number(_read(os.path.join(level, names[0])))
            usage = _number(_read(os.path.join(level, names[1])))
            if limit is None or usage is None or limit >= _NO_LIMIT:
                continue
            headroom = max(0, limit - usage + _inactive_file(level, inactive))
            if best is None or best.headroom is None or headroom < best.headroom:
                best = MemoryLimit(headroom, limit, os.path.join(level, names[0]))
        if best is not None:
            return best
        return MemoryLimit(None, None, f"no memory limit ({os.path.join(folder, names[0])})")
    return MemoryLimit(None, None, "no cgroup memory controller found")
