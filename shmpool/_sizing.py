"""How many workers a pool gets by default: the CPUs this process may use."""

from __future__ import annotations

import numbers
import os

__all__ = ["check_workers", "usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def check_workers(workers: object) -> int:
    """``workers`` as a positive int (None: :func:`usable_cpus`); TypeError or ValueError."""
    if workers is None:
        return usable_cpus()
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int or None, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return int(workers)
