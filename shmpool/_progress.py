"""Progress bars: tqdm (``tqdm.auto``, so notebooks get a widget), ticked from the parent.

Workers never send a message per chunk for a bar: the parent reads their done counters
in the control block every ``TICK_S`` seconds while it waits. With no bar, nothing ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TICK_S", "open_bar", "resolve_progress"]

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
    from tqdm.auto import tqdm

    settings: dict[str, Any] = {"total": total, "unit": unit, "desc": desc}
    settings.update(options)
    try:
        return tqdm(**settings)
    except (KeyError, TypeError) as exc:  # tqdm's TqdmKeyError is a KeyError
        raise TypeError(f"progress options must be tqdm's keyword arguments: {exc}") from exc
