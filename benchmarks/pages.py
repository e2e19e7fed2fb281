#!/usr/bin/env python3
"""What a fresh block's pages cost, per way of guaranteeing "a full folder is an exception,
never SIGBUS" (issue 14, item 3).

    python benchmarks/pages.py [--mib 128] [--reps 5] [--folder /dev/shm] [--huge-folder DIR]

For each strategy, ``reps`` times (medians printed): the parent creates a block file,
reserves it the strategy's way, maps it and fills it (``a[:] = 1.0``: the first touch, what
``pool.empty_like`` + a kernel's write cost); then another, already running process maps the
same file and writes one float per 4 KiB page (the second touch: what each worker pays).

Strategies:

- ``fault``: ftruncate + mmap + fill. No guarantee (a full tmpfs kills the toucher with
  SIGBUS): the floor the others are measured against.
- ``fallocate``: posix_fallocate before mapping (shmpool before this change): the kernel
  allocates and zeroes every page, and the fill faults every page again to map it.
- ``populate``: mmap + madvise(MADV_POPULATE_WRITE): allocates, zeroes and maps every page
  in one call, which fails with an error (not SIGBUS) when the folder is full.
- ``lock+check``: a free-space check under an flock'd lock file, then the block's pages are
  touched (one write per page) before the lock is released, so two allocators that use the
  lock cannot both pass the check; a program that does not use the lock still can.
- ``populate-both``: ``populate`` in the parent and MADV_POPULATE_WRITE again where the
  other process maps the file (batched page-table fill instead of one fault per page).

``np.empty`` + fill (anonymous memory, transparent huge pages where NumPy advises them) and a
refill of an already-faulted block are printed as references. ``--huge-folder`` repeats
the block strategies in a tmpfs mounted with ``huge=advise`` (blocks advised MADV_HUGEPAGE).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import mmap
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

# Python 3.12's mmap does not export it; Linux's value since 5.14.
POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
PAGE = 4096


def _toucher(conn: Connection) -> None:
    """The other process: map a block by path, write one float per page, report the time."""
    while True:
        message = conn.recv()
        if message is None:
            return
        path, size, populate = message
        start = time.perf_counter()
        fd = os.open(path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if populate:
            mapping.madvise(POPULATE_WRITE)
        view = np.frombuffer(mapping, dtype=np.float64)
        view[:: PAGE // 8] = 2.0
        seconds = time.perf_counter() - start
        del view
        mapping.close()
        conn.send(seconds)


def _create(folder: str, size: int, strategy: str, huge: bool) -> tuple[str, mmap.mmap]:
    path = os.path.join(folder, f"pages_bench_{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    lock_fd = -1
    try:
        os.ftruncate(fd, size)
        if strategy == "lock+check":
            lock_fd = os.open(os.path.join(folder, ".pages_bench.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            st = os.statvfs(folder)
            if size > st.f_bavail * st.f_frsize:
                raise OSError("full")
        if strategy == "fallocate":
            os.posix_fallocate(fd, 0, size)
        mapping = mmap.mmap(fd, size)
        if huge:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        if strategy in ("populate", "populate-both"):
            mapping.madvise(POPULATE_WRITE)
        if strategy == "lock+check":
            view = np.frombuffer(mapping, dtype=np.uint8)
            view[::PAGE] = 0  # touch every page while no other allocator can pass the check
            del view
    finally:
        os.close(fd)
        if lock_fd >= 0:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            # Only this benchmark takes the lock: leave nothing behind in the folder.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, ".pages_bench.lock"))
    return path, mapping


def _one(folder: str, size: int, strategy: str, huge: bool, conn: Connection) -> tuple[float, float]:
    start = time.perf_counter()
    path, mapping = _create(folder, size, strategy, huge)
    a = np.frombuffer(mapping, dtype=np.float64)
    a[:] = 1.0
    parent = time.perf_counter() - start
    try:
        conn.send((path, size, strategy == "populate-both"))
        child = conn.recv()
    finally:
        del a
        mapping.close()
        os.unlink(path)
    return parent, child


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:7.1f}"


def _timed(fn: Callable[[], None], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--folder", default="/dev/shm")
    parser.add_argument("--huge-folder", default=None, help="a tmpfs mounted with huge=advise")
    args = parser.parse_args(argv)
    size = args.mib << 20
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_toucher, args=(child_conn,), daemon=True)
    proc.start()
    print(
        f"{args.mib} MiB, median of {args.reps} (ms); Python {sys.version.split()[0]}, {os.uname().release}"
    )
    print(f"{'folder':<12} {'strategy':<14} {'parent':>7} {'other':>7} {'total':>7}")

    def anon() -> None:
        a = np.empty(size // 8)
        a[:] = 1.0

    print(f"{'(private)':<12} {'np.empty+fill':<14} {_median_ms(_timed(anon, args.reps))}")
    path, mapping = _create(args.folder, size, "fault", False)
    ref = [np.frombuffer(mapping, dtype=np.float64)]
    ref[0][:] = 0.0

    def refill() -> None:
        ref[0][:] = 1.0

    print(f"{'(block)':<12} {'refill':<14} {_median_ms(_timed(refill, args.reps))}")
    ref.clear()  # the view must go before the mapping can close
    mapping.close()
    os.unlink(path)
    folders = [(args.folder, False)] + ([(args.huge_folder, True)] if args.huge_folder else [])
    try:
        for folder, huge in folders:
            for strategy in ("fault", "fallocate", "populate", "lock+check", "populate-both"):
                runs = [_one(folder, size, strategy, huge, parent_conn) for _ in range(args.reps)]
                parents = [p for p, _ in runs]
                children = [c for _, c in runs]
                totals = [p + c for p, c in runs]
                label = folder + (" (huge)" if huge else "")
                print(
                    f"{label:<12} {strategy:<14} {_median_ms(parents)} {_median_ms(children)} {_median_ms(totals)}"
                )
    finally:
        parent_conn.send(None)
        proc.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
