"""``python -m shmpool info``: what a user needs to diagnose a deployment."""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
from importlib import metadata

import numpy as np

from ._block_files import BlockEntry, pid_alive, scan_blocks
from ._kernel import default_pool_kind
from ._pages import huge_pages_line
from ._segments import TEMP_FOLDER_ENV, block_folder, free_bytes
from ._sizing import cpu_limits
from .pool import default_start_method

__all__ = ["describe_block", "info_lines", "library_versions"]

# What a bug report needs besides Python and NumPy: shmpool's dependencies, then the
# optional libraries it works with (only named when installed).
_REQUIRED = ("cloudpickle", "tqdm", "threadpoolctl")
_OPTIONAL = ("dask", "distributed", "joblib")


def library_versions() -> str:
    """``name version`` of each dependency and each optional library that is installed.

    Read from the installed distributions' metadata: nothing is imported, so a broken or
    slow optional library cannot break ``info``.
    """
    found = []
    for name in (*_REQUIRED, *_OPTIONAL):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name in _REQUIRED:
                found.append(f"{name} (not installed!)")
    return ", ".join(found)


def _process_uid(pid: int) -> int | None:
    """The real user ID of a running process, or None where /proc cannot tell."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def describe_block(entry: BlockEntry) -> str:
    """What an entry named like a block is, and what a pool start will do with it.

    Only this user's regular files count as blocks; anything else (another user's file,
    a directory, a symlink, a FIFO) is named as such and is never touched by shmpool.
    """
    st = entry.stat
    if not entry.is_ours:
        what = "file" if entry.kind == "file" else entry.kind
        return f"a {what} of uid {st.st_uid}, not this user's block: shmpool leaves it alone"
    size = f"{st.st_size:,} bytes"
    if not pid_alive(entry.pid):
        return f"{size}; creator {entry.pid} is gone: a leftover (removed by the next pool start)"
    uid = _process_uid(entry.pid)
    if uid is not None and uid != os.geteuid():
        # PIDs are reused: our creator ran as us, so this is a stranger's later process.
        return f"{size}; PID {entry.pid} is now a process of uid {uid}: probably a leftover, kept while that PID lives"
    return f"{size}; in use by process {entry.pid} of this user"


def _cpus_line() -> str:
    limits = cpu_limits()
    quota = "none" if limits.quota is None else str(limits.quota)
    return (
        f"usable CPUs: {limits.usable} (affinity mask {limits.affinity}, os.cpu_count() "
        f"{os.cpu_count()}, cgroup CPU quota {quota}: {limits.quota_source})"
    )


def info_lines() -> list[str]:
    """The diagnostic report, one line per fact."""
    from . import __version__

    lines = [
        f"shmpool {__version__}",
        f"Python {platform.python_version()} ({sys.executable}), NumPy {np.__version__}",
        f"libraries: {library_versions()}",
        f"platform: {platform.platform()}",
        f"start methods: {', '.join(multiprocessing.get_all_start_methods())}; "
        f"shmpool default: {default_start_method()}",
        _cpus_line(),
        "default pool (what @shmpool.kernel runs on when no pool is open): {} because {}".format(
            *default_pool_kind()
        ),
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
    lines.append(huge_pages_line(folder))
    entries = scan_blocks(folder)
    ours = [e for e in entries if e.is_ours]
    live = [e for e in ours if pid_alive(e.pid)]
    lines.append(
        f"shmpool blocks present: {len(ours)} of this user ({len(live)} of running processes, "
        f"{len(ours) - len(live)} leftovers); {len(entries) - len(ours)} other entries named like blocks"
    )
    lines.extend(f"  {entry.path} ({describe_block(entry)})" for entry in entries)
    return lines
