"""The fork server that SharedPool's workers are forked from (start method "forkserver").

Workers forked from a server that has imported shmpool's worker and NumPy start in
milliseconds, so the server preloads them. Booting it (a fresh interpreter and those
imports, about 100 ms) is the longest step of a first pool's start; :func:`boot_forkserver`
starts it as early as a pool can, so that it boots while the parent imports the rest of
the pool's machinery.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

__all__ = ["boot_forkserver"]

# threadpoolctl too: every worker imports it to limit its thread pools (shmpool._inner).
PRELOAD = ("shmpool._worker", "threadpoolctl")


def boot_forkserver() -> None:
    """Have the fork server preload shmpool's worker, and start it unless it runs already
    (a cheap check then). Whatever the application asked the server to preload stays."""
    # multiprocessing keeps the preload list on its module-level server object only.
    current = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    missing = [name for name in PRELOAD if name not in current]
    if missing:
        multiprocessing.get_context("forkserver").set_forkserver_preload([*current, *missing])
    forkserver.ensure_running()
