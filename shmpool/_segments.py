"""Shared-memory blocks: where they live, how they are made, owned and torn down.

A block is a file in the pool's *block folder* (``/dev/shm`` by default, a tmpfs, so a
block is exactly what ``shm_open`` would make there), reserved with ``posix_fallocate`` and
mapped with ``mmap``. Using the folder directly, instead of ``multiprocessing.shared_memory``,
keeps the resource tracker out of the picture (no attach-registers-the-segment bug before
Python 3.13, https://github.com/python/cpython/issues/82300) and lets a file-backed folder
stand in for ``/dev/shm`` when that is too small.

Ownership: every block is tracked by the pool's :class:`BlockManager`, a
``multiprocessing.managers.SharedMemoryManager`` whose server unlinks every block it tracks
when the pool shuts down, and also when it sees its parent die: the stock server never
notices that (https://github.com/python/cpython/issues/81158). A kill of the whole process
group kills the manager too; :func:`sweep_dead_blocks` removes what such owners left behind.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import sys
import tempfile
import threading
from multiprocessing.managers import (  # type: ignore[attr-defined]
    SharedMemoryManager,
    SharedMemoryServer,
    dispatch,
)
from typing import Any

from ._lifeline import watch_parent
from .errors import ManagerError, SharedMemoryFullError

__all__ = [
    "BLOCK_PREFIX",
    "map_fd",
    "new_pool_tag",
    "raise_fd_limit",
    "TEMP_FOLDER_ENV",
    "BlockManager",
    "block_folder",
    "create_block",
    "free_bytes",
    "list_blocks",
    "sweep_dead_blocks",
    "unlink_quietly",
]

BLOCK_PREFIX = "shmpool_"
TEMP_FOLDER_ENV = "SHMPOOL_TEMP_FOLDER"
_SHM_FOLDER = "/dev/shm"
# shmpool_<creator pid>_<pool tag>_<random>: the PID lets a later pool start sweep blocks
# of dead creators; the pool tag lets a manager sweep its own pool's blocks and nothing
# else, even when the kernel has reused its dead parent's PID for a new process.
_NAME_RE = re.compile(rf"^{BLOCK_PREFIX}(\d+)_([0-9a-f]+)_[0-9a-f]+$")

# posix_fallocate errors that mean "this file system cannot reserve", not "it is full".
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ENOSYS}


def block_folder(temp_folder: str | os.PathLike[str] | None = None) -> str:
    """The folder where blocks live: the argument, else ``$SHMPOOL_TEMP_FOLDER``, else
    ``/dev/shm`` where it exists, else the system temporary folder."""
    chosen = temp_folder if temp_folder is not None else os.environ.get(TEMP_FOLDER_ENV) or None
    if chosen is not None:
        folder = os.fspath(chosen)
        if not os.path.isdir(folder):
            raise ValueError(f"temp_folder {folder!r} is not an existing folder")
        return os.path.abspath(folder)
    if os.path.isdir(_SHM_FOLDER):
        return _SHM_FOLDER
    return tempfile.gettempdir()


def free_bytes(folder: str) -> int:
    """Bytes an unprivileged process may still allocate in ``folder``."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _full_error(folder: str, requested: int, available: int) -> SharedMemoryFullError:
    fix = (
        "Give the container a larger /dev/shm (docker run --shm-size=8g, or a Kubernetes "
        "emptyDir with medium: Memory), free some blocks (pool.free), or put blocks in a "
        f"file-backed folder: SharedPool(temp_folder=...) or ${TEMP_FOLDER_ENV}."
    )
    return SharedMemoryFullError(
        f"cannot allocate {requested:,} bytes of shared memory in {folder}: "
        f"only {available:,} bytes are free. {fix}",
        requested=requested,
        available=available,
        folder=folder,
    )


def new_pool_tag() -> str:
    """A random tag naming one pool's blocks."""
    return secrets.token_hex(4)


def create_block(folder: str, size: int, pool_tag: str) -> tuple[str, mmap.mmap]:
    """Create, reserve and map a new block of ``size`` bytes; return its path and mapping.

    The space is checked and then reserved before anything touches the pages, so a full
    folder raises :class:`SharedMemoryFullError` instead of killing a process with SIGBUS
    (https://github.com/python/cpython/issues/114390). On any failure the file is removed.
    """
    size = max(size, 1)  # mmap refuses empty mappings; a zero-size array still gets a block
    available = free_bytes(folder)
    if size > available:
        raise _full_error(folder, size, available)
    while True:
        path = os.path.join(folder, f"{BLOCK_PREFIX}{os.getpid()}_{pool_tag}_{secrets.token_hex(6)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        break
    try:
        os.ftruncate(fd, size)
        _reserve(fd, size, folder)
        mapping = map_fd(fd, size)
    except BaseException:
        unlink_quietly(path)
        raise
    finally:
        os.close(fd)
    return path, mapping


def map_fd(fd: int, size: int) -> mmap.mmap:
    """Map ``size`` bytes of ``fd`` shared and writable, without keeping a descriptor.

    Before Python 3.13 an mmap object holds a duplicate of the descriptor for its whole
    life, one per block in every process that maps it; :func:`raise_fd_limit` makes room.
    """
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False)
    return mmap.mmap(fd, size)


def raise_fd_limit() -> None:
    """Raise this process's soft limit on open files to the hard limit (Python < 3.13).

    Each mapped block costs a descriptor there, and the usual soft limit (1024) would cap a
    pool at about a thousand live arrays.
    """
    if sys.version_info >= (3, 13):
        return
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _reserve(fd: int, size: int, folder: str) -> None:
    if not hasattr(os, "posix_fallocate"):
        return  # macOS: the statvfs check above is all we can do
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
            raise _full_error(folder, size, free_bytes(folder)) from exc
        if exc.errno not in _NO_FALLOCATE:
            raise


def unlink_quietly(path: str) -> None:
    """Remove ``path``; a file already gone is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_blocks(folder: str) -> list[str]:
    """The shmpool block files in ``folder`` (of any process)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if _NAME_RE.match(n))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_blocks(folder: str) -> list[str]:
    """Unlink blocks whose creating process no longer exists; return their paths.

    Needed after the whole process group was killed (the manager died with its parent).
    The creator's PID is in the name; a block whose creator is alive is never touched.
    Caveat: processes in another PID namespace sharing the folder look dead from here.
    """
    removed = []
    for path in list_blocks(folder):
        match = _NAME_RE.match(os.path.basename(path))
        if match and not _pid_alive(int(match.group(1))):
            unlink_quietly(path)
            removed.append(path)
    return removed


def _pool_prefix(path: str) -> tuple[str, str]:
    """The folder and the ``shmpool_<pid>_<pool tag>_`` prefix of a block path."""
    folder, name = os.path.split(path)
    return folder, name[: name.rindex("_") + 1]


class _BlockServer(SharedMemoryServer):  # type: ignore[misc]
    """The manager's server: tracks block paths and unlinks them at shutdown or parent death."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paths: set[str] = set()
        self._paths_lock = threading.Lock()
        watch_parent(self._parent_died)

    def track_segment(self, c: Any, segment_name: str) -> None:
        with self._paths_lock:
            self._paths.add(segment_name)

    def release_segment(self, c: Any, segment_name: str) -> None:
        with self._paths_lock:
            self._paths.discard(segment_name)
        unlink_quietly(segment_name)

    def list_segments(self, c: Any) -> list[str]:
        with self._paths_lock:
            return sorted(self._paths)

    def shutdown(self, c: Any) -> Any:
        self._unlink_all()
        return super().shutdown(c)

    def _parent_died(self) -> None:
        # Unlink what we track, and also any block of our pool that the parent made but had
        # not handed to us yet (it died between creating the file and the track call).
        with self._paths_lock:
            prefixes = {_pool_prefix(p) for p in self._paths}
        self._unlink_all()
        for folder, prefix in prefixes:
            for path in list_blocks(folder):
                if os.path.basename(path).startswith(prefix):
                    unlink_quietly(path)

    def _unlink_all(self) -> None:
        with self._paths_lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            unlink_quietly(path)


class BlockManager(SharedMemoryManager):
    """A SharedMemoryManager that owns shmpool's block files.

    The pool creates each block itself (so that it can reserve the space and report a full
    folder), then hands the path to the manager, which owns it from then on: it unlinks it
    on :meth:`release`, at shutdown, and when the pool's process dies.
    """

    _Server = _BlockServer

    def _call(self, method: str, *args: object) -> Any:
        try:
            with self._Client(self._address, authkey=self._authkey) as conn:  # type: ignore[attr-defined]
                return dispatch(conn, None, method, args)
        except (OSError, EOFError) as exc:
            raise ManagerError(
                f"the pool's shared-memory manager process is not reachable ({exc!r}); "
                "it was killed or has shut down, so no block can be allocated or released"
            ) from exc

    def track(self, path: str) -> None:
        """Make the manager the owner of the block file at ``path``."""
        self._call("track_segment", path)

    def release(self, path: str) -> None:
        """Unlink the block at ``path`` and stop tracking it."""
        self._call("release_segment", path)

    def tracked(self) -> list[str]:
        """The block paths the manager owns now."""
        result: list[str] = self._call("list_segments")
        return result
