"""How much room a block folder really has, and where blocks go when ``/dev/shm`` is full.

A folder's free space is what ``statvfs`` says, and for a memory-backed folder (a tmpfs:
``/dev/shm``) also no more than the memory cgroup's headroom (:func:`shmpool._sizing.memory_limit`):
tmpfs pages are charged to the container's memory, and an allocation past its limit brings
the out-of-memory killer instead of a clean error. A file-backed folder's pages are page
cache, which the kernel writes back and reclaims: the cgroup limit does not bound it.

When the default ``/dev/shm`` is too small, a SharedPool puts the blocks that do not fit
there in a file-backed folder on local disk (:func:`fallback_folder`), as joblib does.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

from ._pages import mount_of
from ._sizing import MemoryLimit, memory_limit

__all__ = ["MEMORY_FILE_SYSTEMS", "FolderSpace", "fallback_folder", "folder_space", "memory_backed"]

# File systems whose pages are memory, charged to the cgroup of whoever touches them.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs", "shm"})
# Where a file-backed fallback may go when the system temporary folder is itself a tmpfs:
# /var/tmp is on disk by convention (FHS) and survives reboots, which does not matter here.
_DISK_TEMP = "/var/tmp"


@functools.lru_cache(maxsize=32)
def _file_system(folder: str) -> str:
    """The type of the file system that holds ``folder`` (the longest matching mount
    point of /proc/self/mounts), or "" where that cannot be read. Cached: mounts do not
    change under a pool."""
    mount = mount_of(os.path.realpath(folder))
    return "" if mount is None else mount[1]


def memory_backed(folder: str) -> bool:
    """Whether blocks in ``folder`` are memory (a tmpfs), not file pages of a disk."""
    return _file_system(folder) in MEMORY_FILE_SYSTEMS


@dataclass(frozen=True, slots=True)
class FolderSpace:
    """A folder's room for new blocks, and what bounds it."""

    folder: str
    folder_free: int  # what statvfs gives an unprivileged process
    memory: MemoryLimit | None  # the cgroup's headroom, for a memory-backed folder only

    @property
    def free(self) -> int:
        """The smaller of the folder's free space and the cgroup's memory headroom."""
        if self.memory is None or self.memory.headroom is None:
            return self.folder_free
        return min(self.folder_free, self.memory.headroom)

    @property
    def cgroup_bound(self) -> bool:
        """Whether the cgroup's memory limit, not the folder, is what bounds it."""
        return self.free < self.folder_free


def folder_space(folder: str) -> FolderSpace:
    """The room in ``folder`` now (see :class:`FolderSpace`)."""
    st = os.statvfs(folder)
    memory = memory_limit() if memory_backed(folder) else None
    return FolderSpace(folder, st.f_bavail * st.f_frsize, memory)


def fallback_folder() -> str | None:
    """A file-backed folder on local disk for blocks that do not fit in ``/dev/shm``: the
    system temporary folder (``$TMPDIR``, else ``/tmp``) unless it is a tmpfs too, else
    ``/var/tmp``; None when neither is a writable folder on disk."""
    for folder in (tempfile.gettempdir(), _DISK_TEMP):
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK) and not memory_backed(folder):
            return os.path.abspath(folder)
    return None
