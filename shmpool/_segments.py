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
notices that (https://github.com/python/cpython/issues/81158). The manager runs in a process
group of its own, so a signal to the pool's whole group leaves it alive to clean up, and it
cleans up before a SIGTERM or SIGHUP ends it (see :mod:`shmpool._lifeline`). What is left
when even the manager was killed outright, :func:`sweep_dead_blocks` removes at a later
pool start.

The folder may be shared with other users (``/dev/shm`` is world-writable and sticky).
Anything in it that this process did not create itself is touched only if it is a regular
file that this user owns, looked at with ``lstat`` and removed relative to an open
descriptor of the folder: never a symlink's target, a directory, a FIFO or another user's
file, whatever its name, so nothing another user plants there can stop a pool or be
deleted by one (even one run as root).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.managers import (  # type: ignore[attr-defined]
    SharedMemoryManager,
    SharedMemoryServer,
    dispatch,
)
from typing import Any

from ._lifeline import clean_up_on_signals, leave_process_group, watch_parent
from ._pages import HUGE_PAGE, huge_page_plan
from .errors import ManagerError, SharedMemoryFullError

__all__ = [
    "BLOCK_PREFIX",
    "BlockEntry",
    "map_fd",
    "new_pool_tag",
    "raise_fd_limit",
    "TEMP_FOLDER_ENV",
    "BlockManager",
    "block_folder",
    "create_block",
    "free_bytes",
    "list_blocks",
    "pid_alive",
    "scan_blocks",
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

_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# posix_fallocate errors that mean "this file system cannot reserve", not "it is full".
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ENOSYS}
# Python 3.12's mmap lacks the name; Linux's value since 5.14 (older kernels: EINVAL).
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


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
    Where huge pages can be had, :func:`_advise` reserves instead (README, Performance).
    """
    size = max(size, 1)  # mmap refuses empty mappings; a zero-size array still gets a block
    available = free_bytes(folder)
    if size > available:
        raise _full_error(folder, size, available)
    while True:
        path = os.path.join(folder, f"{BLOCK_PREFIX}{os.getpid()}_{pool_tag}_{secrets.token_hex(6)}")
        try:
            # O_EXCL refuses any existing name, a planted symlink included; O_NOFOLLOW says
            # so twice, in case a platform's O_EXCL ever did follow one.
            fd = os.open(path, _CREATE_FLAGS, 0o600)
        except FileExistsError:
            continue  # taken, by us or by anyone else: draw another name
        break
    try:
        os.ftruncate(fd, size)
        advise, huge = huge_page_plan(folder) if size >= HUGE_PAGE else (False, False)
        if not huge:
            _reserve(fd, size, folder)
        mapping = map_fd(fd, size)
        if advise:
            _advise(mapping, fd, size, folder, populate=huge)
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


def _advise(mapping: mmap.mmap, fd: int, size: int, folder: str, populate: bool) -> None:
    """Advise huge pages; where they will be had, allocate, zero and map every page then.

    fallocate would allocate before any mapping is advised, so on a ``huge=advise`` tmpfs
    it makes 4 KiB pages. MADV_POPULATE_WRITE takes the advice and, where a page cannot be
    had, fails with EFAULT or ENOMEM instead of a SIGBUS; it allocates for real, so no one
    can take the space between a check and a touch. Before Linux 5.14: EINVAL, fallocate.
    """
    try:
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
            if populate:
                mapping.madvise(_POPULATE_WRITE)
        except OSError as exc:
            if exc.errno in (errno.EFAULT, errno.ENOMEM):
                raise _full_error(folder, size, free_bytes(folder)) from exc
            if exc.errno != errno.EINVAL:
                raise
            _reserve(fd, size, folder)
    except BaseException:
        mapping.close()
        raise


def unlink_quietly(path: str) -> None:
    """Remove ``path``; a file already gone is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True)
class BlockEntry:
    """An entry of a block folder named like a block, as ``lstat`` saw it."""

    path: str
    pid: int  # the creator's PID, from the name
    tag: str  # the creator's pool tag, from the name
    stat: os.stat_result  # of the entry itself, not of what a symlink points to

    @property
    def name(self) -> str:
        """The entry's name in its folder."""
        return os.path.basename(self.path)

    @property
    def is_ours(self) -> bool:
        """Whether it is a regular file that this user owns: the only kind of entry that
        shmpool ever removes unless it created that very file itself."""
        return stat.S_ISREG(self.stat.st_mode) and self.stat.st_uid == os.geteuid()

    @property
    def kind(self) -> str:
        """'file', 'directory', 'symlink', 'FIFO', 'socket' or 'device'."""
        mode = self.stat.st_mode
        for test, kind in (
            (stat.S_ISREG, "file"),
            (stat.S_ISDIR, "directory"),
            (stat.S_ISLNK, "symlink"),
            (stat.S_ISFIFO, "FIFO"),
            (stat.S_ISSOCK, "socket"),
        ):
            if test(mode):
                return kind
        return "device"


def _open_folder(folder: str) -> int | None:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _scan_fd(folder: str, dir_fd: int) -> list[BlockEntry]:
    entries = []
    try:
        with os.scandir(dir_fd) as found:
            names = [e.name for e in found]
    except OSError:
        return []
    for name in sorted(names):
        match = _NAME_RE.match(name)
        if match is None:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue  # gone since the listing (or unreadable): nothing to report or remove
        entries.append(BlockEntry(os.path.join(folder, name), int(match[1]), match[2], st))
    return entries


def scan_blocks(folder: str) -> list[BlockEntry]:
    """Every entry of ``folder`` named like a block, of any user and any kind."""
    dir_fd = _open_folder(folder)
    if dir_fd is None:
        return []
    try:
        return _scan_fd(folder, dir_fd)
    finally:
        os.close(dir_fd)


def list_blocks(folder: str) -> list[str]:
    """The paths of the entries in ``folder`` named like blocks (of any process or user)."""
    return [entry.path for entry in scan_blocks(folder)]


def _remove_own(folder: str, select: Callable[[BlockEntry], bool]) -> list[str]:
    """Unlink the block files of ``folder`` that this user owns and ``select`` picks.

    Relative to a descriptor of the folder, so a folder swapped for a symlink midway
    cannot redirect the unlink; each entry is checked with ``lstat`` again just before it
    is removed, so an entry replaced since the scan is left alone. In a sticky folder
    (``/dev/shm``) nobody but this user or root can replace a file this user owns, so what
    is unlinked is what was checked. Errors skip the entry: a sweep never stops a pool.
    """
    dir_fd = _open_folder(folder)
    if dir_fd is None:
        return []
    removed = []
    try:
        for entry in _scan_fd(folder, dir_fd):
            if not entry.is_ours or not select(entry):
                continue
            try:
                now = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                if (now.st_dev, now.st_ino) != (entry.stat.st_dev, entry.stat.st_ino):
                    continue
                os.unlink(entry.name, dir_fd=dir_fd)
            except OSError:
                continue
            removed.append(entry.path)
    finally:
        os.close(dir_fd)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_blocks(folder: str) -> list[str]:
    """Unlink this user's blocks whose creating process no longer exists; return their paths.

    Needed after the manager itself was killed outright (SIGKILL to every process, the OOM
    killer). The creator's PID is in the name; a block whose creator is alive is never
    touched, nor anything that is not this user's regular file (see :func:`_remove_own`).
    Caveat: processes in another PID namespace sharing the folder look dead from here.
    """
    return _remove_own(folder, lambda entry: not pid_alive(entry.pid))


def _pool_prefix(path: str) -> tuple[str, str]:
    """The folder and the ``shmpool_<pid>_<pool tag>_`` prefix of a block path."""
    folder, name = os.path.split(path)
    return folder, name[: name.rindex("_") + 1]


class _BlockServer(SharedMemoryServer):  # type: ignore[misc]
    """The manager's server: tracks block paths and unlinks them at shutdown, when its
    parent dies, and before a SIGTERM or SIGHUP ends it.

    It is built in the manager process's main thread, before it serves: that is where the
    process leaves its parent's group and installs its signal handlers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paths: set[str] = set()
        # The shmpool_<pid>_<tag>_ prefix of every block ever tracked, kept after release,
        # to find a block the parent created but had not handed over when it died.
        self._prefixes: set[tuple[str, str]] = set()
        self._paths_lock = threading.Lock()
        leave_process_group()
        clean_up_on_signals(self._clean_up)
        watch_parent(self._clean_up)

    def track_segment(self, c: Any, segment_name: str) -> None:
        with self._paths_lock:
            self._paths.add(segment_name)
            self._prefixes.add(_pool_prefix(segment_name))

    def release_segment(self, c: Any, segment_name: str) -> None:
        with self._paths_lock:
            self._paths.discard(segment_name)
        unlink_quietly(segment_name)

    def shutdown(self, c: Any) -> Any:
        self._unlink_all()
        return super().shutdown(c)

    def _clean_up(self) -> None:
        """The pool is ending without a shutdown call (its process died, or this one was
        told to end): unlink what we track, and any block of our pool that the parent made
        but had not handed to us yet (it died between creating the file and the track
        call): of those, only this user's regular files (:func:`_remove_own`)."""
        prefixes = self._unlink_all()

        def of_our_pool(entry: BlockEntry) -> bool:
            return _pool_prefix(entry.path) in prefixes

        for folder in {folder for folder, _ in prefixes}:
            _remove_own(folder, of_our_pool)

    def _unlink_all(self) -> set[tuple[str, str]]:
        # A signal handler runs this in the main thread, which never holds the lock itself;
        # the bounded wait keeps a handler from hanging on a request thread stuck mid-call.
        locked = self._paths_lock.acquire(timeout=1.0)
        try:
            paths, self._paths = self._paths, set()
            prefixes = set(self._prefixes)
        finally:
            if locked:
                self._paths_lock.release()
        for path in paths:
            unlink_quietly(path)
        return prefixes


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
