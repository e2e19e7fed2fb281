"""Block files in a block folder: their names, and scanning and sweeping them safely.

A block's name says who made it: ``shmpool_<creator pid>_<pool tag>_<random>``. The PID
lets a later pool start sweep the blocks of dead creators; the pool tag lets a manager
sweep its own pool's blocks and nothing else, even when the kernel has reused its dead
parent's PID for a new process.

The folder may be shared with other users (``/dev/shm`` is world-writable and sticky).
Anything in it that this process did not create itself is touched only if it is a regular
file that this user owns, looked at with ``lstat`` and removed relative to an open
descriptor of the folder: never a symlink's target, a directory, a FIFO or another user's
file, whatever its name, so nothing another user plants there can stop a pool or be
deleted by one (even one run as root).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "random_hex",
    "BLOCK_PREFIX",
    "BlockEntry",
    "block_name",
    "list_blocks",
    "pid_alive",
    "pool_prefix",
    "remove_own_blocks",
    "scan_blocks",
    "sweep_dead_blocks",
    "unlink_quietly",
]

BLOCK_PREFIX = "shmpool_"
_NAME_RE = re.compile(rf"^{BLOCK_PREFIX}(\d+)_([0-9a-f]+)_[0-9a-f]+$")


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes from the system's source, as hex (block names, pool tags)."""
    return os.urandom(nbytes).hex()


def block_name(pool_tag: str) -> str:
    """A fresh, random name for a block of this process's pool ``pool_tag``."""
    return f"{BLOCK_PREFIX}{os.getpid()}_{pool_tag}_{random_hex(6)}"


def pool_prefix(path: str) -> tuple[str, str]:
    """The folder and the ``shmpool_<pid>_<pool tag>_`` prefix of a block path."""
    folder, name = os.path.split(path)
    return folder, name[: name.rindex("_") + 1]


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


def remove_own_blocks(folder: str, select: Callable[[BlockEntry], bool]) -> list[str]:
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
    touched, nor anything that is not this user's regular file (see :func:`remove_own_blocks`).
    Caveat: processes in another PID namespace sharing the folder look dead from here.
    """
    return remove_own_blocks(folder, lambda entry: not pid_alive(entry.pid))
