"""The pool's block manager: the process that owns every block and unlinks it in the end.

:class:`BlockManager` is a ``multiprocessing.managers.SharedMemoryManager`` whose server
unlinks every block it tracks when the pool shuts down, and also when it sees its parent
die: the stock server never notices that (https://github.com/python/cpython/issues/81158).
The manager runs in a process group of its own, so a signal to the pool's whole group
leaves it alive to clean up, and it cleans up before a SIGTERM or SIGHUP ends it (see
:mod:`shmpool._lifeline`). What is left when even the manager was killed outright,
:func:`shmpool._block_files.sweep_dead_blocks` removes at a later pool start.
"""

from __future__ import annotations

import threading
from multiprocessing.managers import (  # type: ignore[attr-defined]
    SharedMemoryManager,
    SharedMemoryServer,
    dispatch,
)
from typing import Any

from ._block_files import BlockEntry, pool_prefix, remove_own_blocks, unlink_quietly
from ._lifeline import clean_up_on_signals, leave_process_group, watch_parent
from ._progress import own_bar_lock
from .errors import ManagerError

__all__ = ["BlockManager"]


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
        own_bar_lock()
        leave_process_group()
        clean_up_on_signals(self._clean_up)
        watch_parent(self._clean_up)

    def track_segment(self, c: Any, segment_name: str) -> None:
        with self._paths_lock:
            self._paths.add(segment_name)
            self._prefixes.add(pool_prefix(segment_name))

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
        call): of those, only this user's regular files (:func:`~shmpool._block_files.remove_own_blocks`)."""
        prefixes = self._unlink_all()

        def of_our_pool(entry: BlockEntry) -> bool:
            return pool_prefix(entry.path) in prefixes

        for folder in {folder for folder, _ in prefixes}:
            remove_own_blocks(folder, of_our_pool)

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
