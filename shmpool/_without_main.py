"""Starting shmpool's own processes without running the caller's ``__main__`` again.

Under spawn and forkserver, multiprocessing has every new process run the parent's main
module (the script, as ``__mp_main__``) before its target, so that functions pickled by
reference from ``__main__`` can be found there. That is why scripts need
``if __name__ == "__main__":``: unguarded, the script's pool would start pools of its own
in each child. shmpool's workers and block manager never need the caller's main: their
targets live in shmpool, and kernels, initializers and arguments travel by value
(cloudpickle, :mod:`shmpool._pickling`). Leaving it out lets a script create a pool at
module level, and saves each spawned worker the script's imports.

Which main a child runs is decided in the parent by
``multiprocessing.spawn.get_preparation_data`` (listed in that module's ``__all__``): the
``init_main_from_path`` or ``init_main_from_name`` entry of the data sent to the child.
multiprocessing has no option to leave it out for one process, so this module wraps that
function once (the spawn and forkserver Popen classes look it up on the module at each
start, on Python 3.10 to 3.13 alike), and the wrapper removes those entries only for
processes started by a thread inside :func:`without_main`, and for processes of a name
held by :func:`hold_for_name` (the workers of a DaskPool's own LocalCluster, which
distributed's threads start). Every other process, the user's own included, is started
exactly as multiprocessing would. This is the one module
that touches multiprocessing's start-up internals; ``tests/test_guardless.py`` runs real
scripts under every start method to catch a Python that changes them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from multiprocessing import spawn
from typing import Any

__all__ = ["hold_for_name", "without_main"]

# The entries of the preparation data that make the child run the parent's main module.
_MAIN_ENTRIES = ("init_main_from_path", "init_main_from_name")

_local = threading.local()  # .depth: how many without_main() blocks this thread is in
_install_lock = threading.Lock()  # guards _installed and _names
_installed = False
_names: collections.Counter[str] = collections.Counter()  # held names -> holders


def _skipping(name: str) -> bool:
    return bool(getattr(_local, "depth", 0)) or _names[name] > 0


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        original = spawn.get_preparation_data

        @functools.wraps(original)
        def get_preparation_data(name: str) -> dict[str, Any]:
            data = original(name)
            if _skipping(name):
                for entry in _MAIN_ENTRIES:
                    data.pop(entry, None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _installed = True


@contextlib.contextmanager
def without_main() -> Iterator[None]:
    """Processes that this thread starts inside the block (with spawn or forkserver) do
    not run the caller's ``__main__``; fork copies the parent and runs nothing anyway."""
    _install()
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def hold_for_name(name: str) -> Callable[[], None]:
    """Until the returned function is called, processes named ``name`` (started by any
    thread, with spawn or forkserver) do not run the caller's ``__main__``."""
    _install()
    with _install_lock:
        _names[name] += 1
    released = False

    def release() -> None:
        nonlocal released
        with _install_lock:
            if not released:
                released = True
                _names[name] -= 1
                if _names[name] <= 0:
                    del _names[name]

    return release
