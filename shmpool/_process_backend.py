"""The process backend of :class:`shmpool.SharedPool`: worker processes and shared blocks.

:class:`ProcessBackend` wires the pieces together: the block store and its manager process
(:mod:`shmpool._blocks`, :mod:`shmpool._segments`, :mod:`shmpool._manager`), the workers
and their supervisor (:mod:`shmpool._dispatch`), and the maps and streams
(:mod:`shmpool._procmap`). These are most of the pool's import time, so :mod:`shmpool.pool`
imports this module only when a pool is made, after the fork server has started booting.

Teardown (close, terminate, garbage collection of an unclosed pool, interpreter exit) is
one path, :meth:`ProcessBackend.shutdown`: stop the workers, have the manager unlink every
block, and unmap each block once no array uses it: arrays handed out stay valid after the
pool is gone.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np

from ._backend import ItemStream, MapRun
from ._block_files import sweep_dead_blocks, unlink_quietly
from ._blocks import BlockStore
from ._checks import ItemRequest, MapRequest
from ._control import ControlBlock
from ._dispatch import Dispatcher
from ._lifeline import forget_in_forked_children
from ._manager import BlockManager
from ._procmap import ProcessMapRun, ProcessStream
from ._segments import create_block, new_pool_tag, raise_fd_limit
from ._without_main import without_main
from .errors import PoolClosedError

__all__ = ["ProcessBackend"]

Array = np.ndarray  # type: ignore[type-arg]


class ProcessBackend:
    """Worker processes and shared blocks (see :class:`shmpool._backend.Backend`).

    Under forkserver, :class:`shmpool.SharedPool` has called
    :func:`shmpool._forkserver.boot_forkserver` already, before importing this module.
    """

    kind = "SharedPool"
    # imap chunksize="auto": a batch costs one message each way, a few microseconds.
    batch_target_s = 0.01
    no_chunk_timeout: str | None = None  # a chunk's worker is a process, which can be killed

    def __init__(
        self,
        workers: int,
        method: str,
        init_payload: bytes | None,
        folder: str,
        cache_bytes: int,
        fallback: str | None = None,
        worker_env: dict[str, str] | None = None,
    ):
        self._workers = workers
        self.start_method = method
        self.store = BlockStore(folder, new_pool_tag(), cache_bytes, fallback)
        self.dispatcher: Dispatcher | None = None
        self.control: ControlBlock | None = None
        self.control_path: str | None = None
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        ctx = multiprocessing.get_context(method)
        for where in (folder, fallback):
            if where is not None:
                sweep_dead_blocks(where)
        raise_fd_limit()
        try:
            self.control_path, control_map = create_block(
                folder, ControlBlock.size_for(workers), self.store.tag
            )
            self.control = ControlBlock(control_map, workers)
            manager = self.store.manager = BlockManager(ctx=ctx)
            if method == "fork":
                # Fork the manager before the dispatcher starts its supervisor thread.
                manager.start()
            # Under spawn and forkserver, workers boot while the manager starts.
            self.dispatcher = Dispatcher(
                ctx, workers, self.control, self.control_path, init_payload, worker_env=worker_env
            )
            if method != "fork":
                with without_main():  # the manager runs shmpool's code only
                    manager.start()
            manager_process = getattr(manager, "_process", None)  # no public handle
            if manager_process is not None:
                forget_in_forked_children(manager_process)
            manager.track(self.control_path)
            self.store.on_release = self.dispatcher.release
        except BaseException:
            self.shutdown(kill=True)
            raise

    @property
    def workers(self) -> int:
        return self._workers

    def describe(self) -> str:
        return f"workers={self._workers} start_method={self.start_method!r}"

    def _live_dispatcher(self) -> Dispatcher:
        if self.dispatcher is None or self._shut_down:
            raise PoolClosedError("this SharedPool is closed")
        return self.dispatcher

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, order: str, zero: bool, like: Any) -> Array:  # type: ignore[type-arg]
        return self.store.new_array(shape, dtype, order, zero)

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray) and self.store.owns(a)

    def release(self, a: Array) -> None:
        self.store.free_array(a)

    def split_own(self, arrays: tuple[Any, ...], axis: object, chunks: object) -> None:
        return None  # its arrays are NumPy arrays: the front end splits them

    def start_map(self, request: MapRequest) -> MapRun:
        return ProcessMapRun(self._live_dispatcher(), self.store, request)

    def open_stream(self, request: ItemRequest, star: bool) -> ItemStream:
        return ProcessStream(self._live_dispatcher(), request, star)

    def shutdown(self, *, kill: bool) -> None:
        """The one teardown path: stop workers, unlink blocks, unmap what is unused."""
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        try:
            if self.dispatcher is not None:
                self.dispatcher.shutdown(kill=kill)
        finally:
            paths = self.store.close()
            manager, self.store.manager = self.store.manager, None
            if manager is not None:
                try:
                    manager.shutdown()  # the manager unlinks every block it tracks
                except Exception:
                    pass
                # Dropped now, while multiprocessing can still log its __del__: a closed pool
                # kept until interpreter exit (the default pool) would otherwise print an
                # "Exception ignored" there.
                del manager
            if self.control_path is not None:
                paths.append(self.control_path)
            for path in paths:
                unlink_quietly(path)  # blocks the manager could not reach
            if self.control is not None:
                self.control.release()

    @property
    def manager_pid(self) -> int | None:
        manager = self.store.manager
        process = getattr(manager, "_process", None)  # SharedMemoryManager keeps no public handle
        return None if process is None else process.pid
