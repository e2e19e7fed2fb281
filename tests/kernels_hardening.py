"""Kernels for tests/test_hardening_workers.py, importable by workers under every start
method: ones that raise what a worker must survive, and ones that kill it in awkward ways."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


class Custom(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


RAISABLE: dict[str, type[BaseException]] = {
    "system_exit": SystemExit,
    "keyboard_interrupt": KeyboardInterrupt,
    "generator_exit": GeneratorExit,
    "custom": Custom,
}


def raise_on(x: np.ndarray, *, bad: int, kind: str) -> None:
    if bad in x:
        raise RAISABLE[kind](f"{kind} at {bad}")


def raise_item(i: int, *, bad: int = 3, kind: str = "keyboard_interrupt") -> int:
    if i == bad:
        raise RAISABLE[kind](f"{kind} at {i}")
    return i * i


def raise_always(kind: str) -> None:
    raise RAISABLE[kind](kind)


class BadStr(Exception):
    """Pickles and rebuilds fine, but its str() raises."""

    def __str__(self) -> str:
        raise SystemExit("str() of BadStr")


class BadRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr() of BadRepr")

    def __str__(self) -> str:
        raise RuntimeError("str() of BadRepr")


def _refuse(message: str) -> Any:
    raise KeyboardInterrupt(message)


class BadPickle(Exception):
    """Its pickling raises a BaseException."""

    def __reduce__(self) -> Any:
        raise SystemExit("no pickling of BadPickle")


class BadUnpickle(Exception):
    """Pickles, but unpickling it raises a BaseException."""

    def __reduce__(self) -> Any:
        return (_refuse, ("no unpickling of BadUnpickle",))


EXCEPTIONS: dict[str, type[Exception]] = {
    "bad_str": BadStr,
    "bad_repr": BadRepr,
    "bad_pickle": BadPickle,
    "bad_unpickle": BadUnpickle,
}


def raise_odd(x: np.ndarray, *, kind: str) -> None:
    if 2 in x:
        raise EXCEPTIONS[kind]("odd")


def raise_odd_item(kind: str) -> None:
    raise EXCEPTIONS[kind]("odd")


class OddResult:
    """A return value whose pickling raises a BaseException."""

    def __reduce__(self) -> Any:
        raise KeyboardInterrupt("no pickling of OddResult")


def odd_result(x: np.ndarray) -> Any:
    return OddResult() if 1 in x else int(x[0])


def odd_result_item(i: int) -> Any:
    return OddResult()


class ExitOnUnpickle:
    """An argument that kills whichever process unpickles it (a worker)."""

    def __reduce__(self) -> Any:
        return (os._exit, (7,))


def use_whole(x: np.ndarray, extra: Any = None, **kwargs: Any) -> None:
    pass


def hang_forever() -> None:
    time.sleep(3600)


def exit_in_initializer() -> None:
    raise SystemExit(9)


def fork_then_exit(x: np.ndarray, *, linger: float) -> None:
    """Fork a grandchild that keeps every inherited descriptor for ``linger`` seconds,
    then die: the death must be noticed before the grandchild exits."""
    if os.fork() == 0:
        time.sleep(linger)
        os._exit(0)
    os._exit(5)


def sleep_chunk(x: np.ndarray, seconds: float) -> None:
    time.sleep(seconds)


def wait_for_path(x: np.ndarray, path: str, limit: float = 30.0) -> None:
    """Hold the worker until ``path`` exists (or ``limit`` seconds pass): a blocker the
    test releases when it is ready, not after a time a slow machine may outrun."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def square(i: int) -> int:
    return i * i


def slow_square(i: int) -> int:
    time.sleep(0.01)
    return i * i


def noop(x: np.ndarray) -> int:
    return int(x.shape[0])
