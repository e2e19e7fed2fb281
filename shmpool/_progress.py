"""Progress bars: tqdm (``tqdm.auto``, so notebooks get a widget), ticked from the parent.

Workers never send a message per chunk for a bar: the parent reads their done counters
in the control block every ``TICK_S`` seconds while it waits. With no bar, nothing ticks.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["TICK_S", "open_bar", "own_bar_lock", "resolve_progress"]

# Refresh period of a bar; the wait itself never depends on it.
TICK_S = 0.1


def resolve_progress(progress: object, default: object) -> dict[str, Any] | None:
    """tqdm keyword arguments for a call's ``progress=`` option, or None for no bar.

    None takes the pool's default; True means a bar with default settings; a mapping is
    passed to tqdm; False means no bar.
    """
    if progress is None:
        progress = default
    if progress is None or progress is False:
        return None
    if progress is True:
        return {}
    if isinstance(progress, Mapping):
        return dict(progress)
    raise TypeError(f"progress must be True, False, None or a dict of tqdm options, got {progress!r}")


def open_bar(total: int | None, options: dict[str, Any], unit: str, desc: str) -> Any:
    """A tqdm bar for ``total`` steps (None: unknown) with the caller's ``options``."""
    asked = time.perf_counter()
    from tqdm.auto import tqdm

    settings: dict[str, Any] = {"total": total, "unit": unit, "desc": desc}
    settings.update(options)
    try:
        bar = tqdm(**settings)
    except (KeyError, TypeError) as exc:  # tqdm's TqdmKeyError is a KeyError
        raise TypeError(f"progress options must be tqdm's keyword arguments: {exc}") from exc
    # tqdm starts its clock at the end of its __init__. The first bar of a process first
    # imports tqdm.auto and draws itself (70 ms and more, longer than a short map), so the
    # clock started after most of the call was over and a 0.1 s map showed 200,000+
    # chunk/s. Start it when the bar was asked for, so elapsed time and rate are the call's.
    opening = time.perf_counter() - asked
    bar.start_t -= opening
    bar.last_print_t -= opening
    return bar


def own_bar_lock() -> None:
    """In a child forked from the pool's process (a worker or the manager under the fork
    start method): give tqdm a lock of this process's own.

    tqdm's write lock holds a semaphore shared by every process forked after it was made.
    A child that takes it (a kernel's own bar, or a bar inherited from the parent that the
    child's garbage collector closes) and dies holding it, killed or crashed, would leave
    every bar of the parent waiting for it forever. Without tqdm imported there is nothing
    to replace, and nothing is imported.
    """
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is not None:
        tqdm_std.tqdm.set_lock(threading.RLock())
