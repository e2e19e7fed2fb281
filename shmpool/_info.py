"""``python -m shmpool info``: what a user needs to diagnose a deployment."""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
from importlib import metadata

import numpy as np

from ._block_files import BlockEntry, pid_alive, scan_blocks
from ._inner import AUTO, THREAD_ENV_VARS, check_inner_threads
from ._kernel import default_pool_kind
from ._pages import huge_pages_line
from ._segments import TEMP_FOLDER_ENV, block_folder, fallback_for
from ._sizing import cpu_limits, memory_limit
from ._space import folder_space, memory_backed
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


def _memory_line() -> str:
    limit = memory_limit()
    if limit.limit is None or limit.headroom is None:
        return f"cgroup memory: {limit.source}"
    return (
        f"cgroup memory: limit {limit.limit / 2**30:.2f} GiB, headroom {limit.headroom / 2**30:.2f} GiB "
        f"(limit less usage plus inactive page cache; {limit.source}): bounds shared memory in tmpfs folders"
    )


def _inner_line(workers: int) -> str:
    """What a default SharedPool does to its workers' native thread pools, and what is
    loaded in this process now."""
    limit = check_inner_threads(AUTO, workers, workers)
    try:
        from threadpoolctl import threadpool_info

        loaded = ", ".join(
            f"{lib.get('internal_api')} {lib.get('num_threads')} threads" for lib in threadpool_info()
        )
    except ImportError:  # pragma: no cover - a dependency, but info must not fail
        loaded = "threadpoolctl not installed"
    set_here = [f"{name}={os.environ[name]}" for name in THREAD_ENV_VARS if name in os.environ]
    return (
        f"inner thread limit: {limit} per worker for a default SharedPool ({workers} workers: "
        f"max(1, usable CPUs // workers); inner_threads= changes it, None leaves them alone); "
        f"loaded here: {loaded or 'no BLAS/OpenMP'}; thread variables set here: {', '.join(set_here) or 'none'}"
    )


def _folder_line(what: str, folder: str) -> str:
    st = os.statvfs(folder)
    space = folder_space(folder)
    kind = "memory (tmpfs)" if memory_backed(folder) else "file-backed"
    bound = ", bounded by the cgroup memory headroom" if space.cgroup_bound else ""
    return (
        f"{what}: {folder} ({kind}); size {st.f_blocks * st.f_frsize / 2**30:.2f} GiB, "
        f"folder free {space.folder_free / 2**30:.2f} GiB, free for blocks {space.free / 2**30:.2f} GiB{bound}"
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
        _memory_line(),
        _inner_line(cpu_limits().usable),
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
    lines.append(_folder_line("block folder", folder))
    fallback = fallback_for()
    if fallback is None:
        why = "a folder was chosen" if os.environ.get(TEMP_FOLDER_ENV) else "no file-backed folder found"
        lines.append(f"fallback folder (when the block folder is full): none, {why}: a full folder raises")
    else:
        lines.append(_folder_line("fallback folder (when the block folder is full)", fallback))
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
