"""Kernels used by the tests, importable by workers under every start method."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time
from typing import Any

import numpy as np


def double_in_place(x: np.ndarray) -> None:
    x *= 2


def saxpy(x: np.ndarray, y: np.ndarray, out: np.ndarray, *, a: float) -> None:
    out[...] = a * x + y


def first_index(x: np.ndarray) -> Any:
    return x[0]


def chunk_length(x: np.ndarray, along: int = 0) -> int:
    return int(x.shape[along])


def running_max_rows(x: np.ndarray, out: np.ndarray) -> None:
    """A GIL-bound kernel: a pure-Python loop per row."""
    for r in range(x.shape[0]):
        best = float("-inf")
        row = x[r]
        dst = out[r]
        for c in range(row.shape[0]):
            v = row[c]
            if v > best:
                best = v
            dst[c] = best


def fail_on(x: np.ndarray, *, bad: int, delay: float = 0.0) -> None:
    time.sleep(delay)
    if bad in x:
        raise KeyError(f"found {bad}")


class Unpicklable(Exception):
    def __init__(self, a: int, b: int):
        super().__init__(f"a={a} b={b}")
        self.a, self.b = a, b

    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


class OddInit(Exception):
    """Pickles, but cannot be rebuilt: its constructor needs two arguments."""

    def __init__(self, a: int, b: int):
        super().__init__(f"odd {a} {b}")


def raise_unpicklable(x: np.ndarray) -> None:
    raise Unpicklable(1, 2)


def raise_odd(x: np.ndarray) -> None:
    raise OddInit(3, 4)


def return_generator(x: np.ndarray) -> Any:
    return (i for i in range(3))


def crash_on(x: np.ndarray, *, bad: int, how: str) -> None:
    if bad in x:
        if how == "exit":
            os._exit(3)
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "segv":
            # A worker forked from pytest inherits its faulthandler, which would print
            # "Fatal Python error: Segmentation fault" and a thread dump for this deliberate
            # crash; the test asserts on the WorkerCrashedError instead.
            faulthandler.disable()
            ctypes.string_at(0)
    time.sleep(0.01)


def crash_all(x: np.ndarray) -> None:
    time.sleep(0.05)
    os._exit(4)


def sleep_forever(x: np.ndarray) -> None:
    while True:
        time.sleep(1)


def sleep_chunk(x: np.ndarray, *, seconds: float) -> None:
    time.sleep(seconds)


def worker_pid(x: np.ndarray) -> int:
    return os.getpid()


def record_init(folder: str, tag: str) -> None:
    global INIT_TAG
    INIT_TAG = tag
    with open(os.path.join(folder, f"init-{os.getpid()}"), "w") as f:
        f.write(tag)


INIT_TAG = "unset"


def init_tag(x: np.ndarray) -> tuple[str, int]:
    return INIT_TAG, os.getpid()


def failing_init() -> None:
    raise RuntimeError("initializer exploded")


def square(v: Any) -> Any:
    return v * v


def fail_at_five(v: int) -> int:
    if v == 5:
        raise ValueError("five")
    return v


def slow_square(v: float) -> float:
    time.sleep(0.002)
    return v * v


def add(a: Any, b: Any, *, scale: int = 1) -> Any:
    return (a + b) * scale


def fail_at(v: int, bad: int) -> int:
    """``v`` back, except for item ``bad``, which raises."""
    if v == bad:
        raise ValueError(f"item {v} is bad")
    return v


def mark_item(v: int, marks: np.ndarray) -> int:
    """Count a run of item ``v`` in ``marks`` (an array every worker sees) and return it."""
    marks[v] += 1
    return v


def die_holding_the_bar_lock(v: int) -> None:
    """Take tqdm's write lock (as a kernel's own bar does) and die before giving it back."""
    from tqdm import tqdm

    tqdm.get_lock().acquire()
    os._exit(3)
