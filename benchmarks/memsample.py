"""Memory of a process tree, read from /proc: PSS sums, their peak during a call, and the
tmpfs-aware total.

PSS (proportional set size) splits each shared page among the processes that map it, so
the sum over a tree counts a shared page once. It misses tmpfs pages (``/dev/shm``) that no
process maps at that moment, so the *tmpfs-aware* total adds ``/dev/shm``'s used bytes to
the private and file-backed part instead: ``sum(Pss_Anon + Pss_File) + /dev/shm used``.
``/dev/shm`` is system-wide, so compare differences taken in one run, not absolute values.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Peak", "PeakSampler", "Snapshot", "descendants", "rollup", "snapshot"]

SHM_FOLDER = "/dev/shm"

# Pause between samples. Reading smaps_rollup walks the page tables of every mapping, a few
# ms for a GiB of 4 KiB pages, so sampling faster than this mostly measures itself.
SAMPLE_INTERVAL_S = 0.005

_ROLLUP_KEYS = {"Pss:": "pss", "Pss_Anon:": "pss_anon", "Pss_File:": "pss_file", "Pss_Shmem:": "pss_shmem"}


def _children(pid: int) -> list[int] | None:
    """Children of ``pid`` from /proc/PID/task/*/children (None if the kernel lacks it)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended
            return None
        except OSError:
            continue
    return kids


def _parents() -> dict[int, int]:
    """pid -> ppid of every process, by scanning /proc (the slow fallback)."""
    table: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(name)] = int(fields[1])
    return table


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    found = [root]
    queue = [root]
    while queue:
        pid = queue.pop()
        kids = _children(pid)
        if kids is None:
            parents = _parents()
            found = [root]
            frontier = {root}
            while frontier:
                frontier = {p for p, pp in parents.items() if pp in frontier}
                found.extend(sorted(frontier))
            return found
        found.extend(kids)
        queue.extend(kids)
    return found


def rollup(pid: int) -> dict[str, int] | None:
    """Pss, Pss_Anon, Pss_File and Pss_Shmem of ``pid`` in bytes (None if it is gone)."""
    values = dict.fromkeys(_ROLLUP_KEYS.values(), 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(" ")
                name = _ROLLUP_KEYS.get(key)
                if name is not None:
                    values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return values


def shm_used() -> int:
    """Bytes used in /dev/shm (system-wide)."""
    st = os.statvfs(SHM_FOLDER)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading of a process tree (bytes)."""

    pss: int
    anon_file: int  # sum of Pss_Anon + Pss_File
    shm_used: int
    mem_available: int
    procs: int

    @property
    def tmpfs_aware(self) -> int:
        """Private and file-backed PSS plus everything in /dev/shm, each page once."""
        return self.anon_file + self.shm_used


def snapshot(root: int) -> Snapshot:
    """Read the tree under ``root`` now."""
    pss = anon_file = procs = 0
    for pid in descendants(root):
        values = rollup(pid)
        if values is None:
            continue
        procs += 1
        pss += values["pss"]
        anon_file += values["pss_anon"] + values["pss_file"]
    return Snapshot(pss, anon_file, shm_used(), mem_available(), procs)


@dataclass
class Peak:
    """The highest value of each measure over a sampling period (lowest MemAvailable)."""

    pss: int = 0
    tmpfs_aware: int = 0
    shm_used: int = 0
    min_mem_available: int = 1 << 62
    procs: int = 0
    samples: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (s, pss, tmpfs-aware)

    def add(self, snap: Snapshot, t: float) -> None:
        """Fold one snapshot in."""
        self.pss = max(self.pss, snap.pss)
        self.tmpfs_aware = max(self.tmpfs_aware, snap.tmpfs_aware)
        self.shm_used = max(self.shm_used, snap.shm_used)
        self.min_mem_available = min(self.min_mem_available, snap.mem_available)
        self.procs = max(self.procs, snap.procs)
        self.samples += 1
        self.timeline.append((round(t, 4), snap.pss, snap.tmpfs_aware))


class PeakSampler:
    """Samples a process tree in a background thread until :meth:`stop`.

    The thread spends its time in file reads (the GIL is released), so it barely disturbs
    a caller that is waiting on another process.
    """

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL_S):
        self._root = root
        self._interval = interval
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self.peak = Peak()
        self._thread = threading.Thread(target=self._run, name="memsample", daemon=True)

    def start(self) -> PeakSampler:
        """Take a first sample now, then keep sampling in the background."""
        self.peak.add(snapshot(self._root), 0.0)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak.add(snapshot(self._root), time.perf_counter() - self._t0)

    def stop(self) -> Peak:
        """Stop sampling, take a last sample, and return the peaks."""
        self._stop.set()
        self._thread.join()
        self.peak.add(snapshot(self._root), time.perf_counter() - self._t0)
        return self.peak
