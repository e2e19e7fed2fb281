"""Kernels for the retry, chunk-timeout and advance tests: importable by workers under
every start method. Crashes are counted in files of a folder the test owns, so that a
kernel can crash the first times it runs a chunk and succeed after."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time

import numpy as np

import shmpool


def _first_times(folder: str, name: str, times: int) -> bool:
    """True the first ``times`` calls with this ``name`` (across processes), False after."""
    for attempt in range(times):
        try:
            os.close(os.open(os.path.join(folder, f"{name}-{attempt}"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            continue
    return False


def _die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        faulthandler.disable()  # a deliberate segfault: no thread dump on stderr
        ctypes.string_at(0)


def crash_then_work(x: np.ndarray, out: np.ndarray, *, folder: str, bad: int, times: int, how: str) -> int:
    """Out-of-place (safe to run twice): the chunk holding index ``bad`` kills its worker
    the first ``times`` times it runs; every chunk returns its sum."""
    if x[0] <= bad <= x[-1] and _first_times(folder, "crash", times):
        _die(how)
    time.sleep(0.002)
    out[:] = x * 2
    return int(x.sum())


def always_crash_on(x: np.ndarray, *, bad: int) -> None:
    if bad in x:
        os._exit(5)


def hang_then_work(x: np.ndarray, *, folder: str, bad: int, times: int) -> int:
    """The chunk holding ``bad`` hangs the first ``times`` times it runs."""
    if x[0] <= bad <= x[-1] and _first_times(folder, "hang", times):
        time.sleep(60)
    return len(x)


def rows_with_advance(x: np.ndarray, *, seconds: float, extra: int = 0) -> int:
    """One row at a time, reporting each (plus ``extra`` more than the chunk has)."""
    for _ in range(len(x)):
        time.sleep(seconds)
        shmpool.advance()
    shmpool.advance(extra)
    return len(x)


def advance_negative(x: np.ndarray) -> None:
    shmpool.advance(-1)


def item_with_advance(v: int) -> int:
    shmpool.advance(5)  # does nothing in an imap function
    return v * 2


def crash_item_then_work(v: int, folder: str, bad: int, times: int) -> int:
    if v == bad and _first_times(folder, "item", times):
        os._exit(3)
    return v * 10


def third_start_dies(folder: str) -> None:
    """A worker initializer: the third worker to start (the first replacement of a 2-worker
    pool) exits at once, before it reads any job."""
    for number in range(100):
        try:
            os.close(os.open(os.path.join(folder, f"start-{number}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            continue
    if number == 2:
        os._exit(9)
