"""Shared-memory blocks: where they live and how they are made and mapped.

A block is a file in the pool's *block folder* (``/dev/shm`` by default, a tmpfs, so a
block is exactly what ``shm_open`` would make there), reserved with ``posix_fallocate`` and
mapped with ``mmap``. Using the folder directly, instead of ``multiprocessing.shared_memory``,
keeps the resource tracker out of the picture (no attach-registers-the-segment bug before
Python 3.13, https://github.com/python/cpython/issues/82300) and lets a file-backed folder
stand in for ``/dev/shm`` when that is too small.

How much room a folder has (its free space and, for ``/dev/shm``, the container's memory
headroom) and where blocks go when the default ``/dev/shm`` is full: :mod:`shmpool._space`.

Who owns a block once made: :mod:`shmpool._manager`. How blocks are named, found and swept
without touching anyone else's files: :mod:`shmpool._block_files`.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import tempfile

from ._block_files import block_name, random_hex, unlink_quietly
from ._pages import HUGE_PAGE, huge_page_plan
from ._space import fallback_folder, folder_space, memory_backed
from .errors import SharedMemoryFullError

__all__ = [
    "TEMP_FOLDER_ENV",
    "block_folder",
    "create_block",
    "fallback_for",
    "free_bytes",
    "map_fd",
    "new_pool_tag",
    "raise_fd_limit",
]

TEMP_FOLDER_ENV = "SHMPOOL_TEMP_FOLDER"
_SHM_FOLDER = "/dev/shm"

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


def fallback_for(temp_folder: str | os.PathLike[str] | None = None) -> str | None:
    """Where blocks go when the default folder is full: a file-backed folder on disk, but
    only when the user chose no folder (neither ``temp_folder`` nor ``$SHMPOOL_TEMP_FOLDER``:
    a folder chosen is a folder meant, and a full one raises) and the default is memory."""
    if temp_folder is not None or os.environ.get(TEMP_FOLDER_ENV):
        return None
    folder = block_folder()
    if not memory_backed(folder):
        return None
    fallback = fallback_folder()
    return None if fallback == folder else fallback


def free_bytes(folder: str) -> int:
    """Bytes an unprivileged process may still allocate in ``folder``: its free space, and
    for a memory-backed folder no more than the memory cgroup's headroom."""
    return folder_space(folder).free


def _full_error(folder: str, requested: int, available: int) -> SharedMemoryFullError:
    space = folder_space(folder)
    memory = space.memory
    if memory is not None and memory.headroom is not None and memory.headroom < space.folder_free:
        why = (
            f"the folder has {space.folder_free:,} bytes free, but this process's memory cgroup "
            f"limit ({memory.limit:,} bytes, {memory.source}) leaves room for only "
            f"{memory.headroom:,}: pages in {folder} count against that limit, and past it the "
            "out-of-memory killer would end a process"
        )
        fix = (
            "Raise the container's memory limit (docker run --memory=..., a Kubernetes "
            "resources.limits.memory), free some blocks (pool.free), or put blocks in a "
            f"file-backed folder: SharedPool(temp_folder=...) or ${TEMP_FOLDER_ENV}."
        )
    else:
        why = f"only {available:,} bytes are free"
        fix = (
            "Give the container a larger /dev/shm (docker run --shm-size=8g, or a Kubernetes "
            "emptyDir with medium: Memory), free some blocks (pool.free), or put blocks in a "
            f"file-backed folder: SharedPool(temp_folder=...) or ${TEMP_FOLDER_ENV}."
        )
    return SharedMemoryFullError(
        f"cannot allocate {requested:,} bytes of shared memory in {folder}: {why}. {fix}",
        requested=requested,
        available=available,
        folder=folder,
    )


def new_pool_tag() -> str:
    """A random tag naming one pool's blocks."""
    return random_hex(4)


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
        path = os.path.join(folder, block_name(pool_tag))
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
