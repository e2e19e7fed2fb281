"""``python -m shmpool info``: what a user needs to diagnose a deployment."""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys

import numpy as np

from ._segments import TEMP_FOLDER_ENV, block_folder, free_bytes, list_blocks
from ._sizing import usable_cpus
from .pool import default_start_method

__all__ = ["info_lines"]


def _pid_state(path: str) -> str:
    pid = int(os.path.basename(path).split("_")[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"creator {pid} is gone: a leftover (removed by the next pool start)"
    except PermissionError:
        pass
    return f"creator {pid} is running"


def info_lines() -> list[str]:
    """The diagnostic report, one line per fact."""
    from . import __version__

    lines = [
        f"shmpool {__version__}",
        f"Python {platform.python_version()} ({sys.executable}), NumPy {np.__version__}",
        f"platform: {platform.platform()}",
        f"start methods: {', '.join(multiprocessing.get_all_start_methods())}; "
        f"shmpool default: {default_start_method()}",
        f"usable CPUs: {usable_cpus()} (os.cpu_count() = {os.cpu_count()})",
    ]
    env = os.environ.get(TEMP_FOLDER_ENV)
    lines.append(f"{TEMP_FOLDER_ENV}: {env if env else '(not set)'}")
    try:
        folder = block_folder()
    except ValueError as exc:
        lines.append(f"block folder: error: {exc}")
        return lines
    st = os.statvfs(folder)
    lines.append(
        f"block folder: {folder}; size {st.f_blocks * st.f_frsize / 2**30:.2f} GiB, "
        f"free {free_bytes(folder) / 2**30:.2f} GiB"
    )
    blocks = list_blocks(folder)
    lines.append(f"shmpool blocks present: {len(blocks)}")
    lines.extend(f"  {path} ({os.path.getsize(path):,} bytes; {_pid_state(path)})" for path in blocks)
    return lines
