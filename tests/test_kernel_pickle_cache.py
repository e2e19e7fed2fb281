"""Kernels pickled by value are pickled once and reused while nothing they capture changed;
any change that would change the pickle reaches the workers at the next map."""

from __future__ import annotations

import numpy as np
import pytest

import shmpool
from shmpool import _capture, _pickling

SCALE = 2.0
TABLE = [1.0]
LATER_NAME_USED = None


def _make_scaling_kernel():  # type: ignore[no-untyped-def]
    # Defined in a function, so cloudpickle pickles it by value (like a __main__ kernel).
    def scale(out: np.ndarray) -> None:
        out[:] = SCALE

    return scale


def _make_table_kernel():  # type: ignore[no-untyped-def]
    def from_table(out: np.ndarray) -> None:
        out[:] = TABLE[0]

    return from_table


def test_unchanged_kernel_reuses_its_bytes() -> None:
    kernel = _make_scaling_kernel()
    first = _pickling.dumps_kernel(kernel, "k")
    assert _pickling.dumps_kernel(kernel, "k") is first


def test_rebound_global_reaches_the_workers(shared_pool: shmpool.SharedPool) -> None:
    global SCALE
    kernel = _make_scaling_kernel()
    out = shared_pool.zeros(8)
    try:
        shared_pool.map(kernel, out, chunks=4)
        assert np.all(out == 2.0)
        SCALE = 5.0
        shared_pool.map(kernel, out, chunks=4)
        assert np.all(out == 5.0)
    finally:
        SCALE = 2.0


def test_mutable_global_is_never_cached(shared_pool: shmpool.SharedPool) -> None:
    kernel = _make_table_kernel()
    assert _capture.capture_key(kernel) is None  # a list can change in place
    out = shared_pool.zeros(8)
    try:
        shared_pool.map(kernel, out, chunks=4)
        assert np.all(out == 1.0)
        TABLE[0] = 7.0
        shared_pool.map(kernel, out, chunks=4)
        assert np.all(out == 7.0)
    finally:
        TABLE[0] = 1.0


def test_closure_cells_defaults_and_code_changes_reach_the_workers(shared_pool: shmpool.SharedPool) -> None:
    value = 1.0

    def fill(out: np.ndarray, extra: float = 0.0) -> None:
        out[:] = value + extra

    out = shared_pool.zeros(6)
    shared_pool.map(fill, out, chunks=3)
    assert np.all(out == 1.0)
    value = 3.0  # the closure's cell
    shared_pool.map(fill, out, chunks=3)
    assert np.all(out == 3.0)
    fill.__defaults__ = (10.0,)
    shared_pool.map(fill, out, chunks=3)
    assert np.all(out == 13.0)

    def other(out: np.ndarray, extra: float = 0.0) -> None:
        out[:] = -value - extra

    fill.__code__ = other.__code__
    shared_pool.map(fill, out, chunks=3)
    assert np.all(out == -13.0)


def test_a_captured_shared_array_or_instance_is_not_cached(shared_pool: shmpool.SharedPool) -> None:
    table = shared_pool.full(4, 2.0)

    def uses_array(out: np.ndarray) -> None:
        out[:] = table[0]

    class Box:
        value = 1.0

    box = Box()

    def uses_instance(out: np.ndarray) -> None:
        out[:] = box.value

    assert _capture.capture_key(uses_array) is None
    assert _capture.capture_key(uses_instance) is None
    out = shared_pool.zeros(4)
    shared_pool.map(uses_array, out, chunks=2)
    table[0] = 9.0  # written in place: the next map must see it (it is shared, not copied)
    shared_pool.map(uses_array, out, chunks=2)
    assert np.all(out == 9.0)
    box.value = 4.0
    shared_pool.map(uses_instance, out, chunks=2)
    assert np.all(out == 4.0)


def test_keys_follow_what_the_pickle_holds() -> None:
    def recursive(n: int) -> int:
        return 1 if n <= 1 else n * recursive(n - 1)

    key = _capture.capture_key(recursive)
    assert key is not None and key == _capture.capture_key(recursive)

    def uses_later() -> object:
        return LATER_NAME_USED

    before = _capture.capture_key(uses_later)
    globals()["LATER_NAME_USED"] = 1
    try:
        assert _capture.capture_key(uses_later) != before
    finally:
        globals()["LATER_NAME_USED"] = None

    def with_attribute() -> None:
        pass

    with_attribute.note = "x"  # type: ignore[attr-defined]
    assert _capture.capture_key(with_attribute) is None  # attributes are not followed
    assert _capture.capture_key(np.sqrt) is None  # not a Python function at all


@pytest.mark.parametrize("new", [np.add, len, 3, "text", (1, 2.5)])
def test_rebinding_a_name_to_anything_changes_the_key(new: object) -> None:
    namespace: dict[str, object] = {"np": np, "target": np.multiply}
    exec("def k(x):\n    return target(x)\n", namespace)
    kernel = namespace["k"]
    before = _capture.capture_key(kernel)
    assert before is not None and before == _capture.capture_key(kernel)
    namespace["target"] = new
    assert _capture.capture_key(kernel) != before
