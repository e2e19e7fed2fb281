"""Which default pool an interpreter gets: a ThreadPool when free-threaded Python runs
without the GIL, else a SharedPool. No free-threaded Python is installed here, so the
interpreter's answers (``sys._is_gil_enabled``, the ``Py_GIL_DISABLED`` build flag) are
simulated; the pools made are real."""

from __future__ import annotations

import sys
import sysconfig

import numpy as np
import pytest

import shmpool
from shmpool import _info, _kernel


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No default pool yet, whatever earlier tests made."""
    monkeypatch.setattr(_kernel, "_default", None)


def _simulate(monkeypatch: pytest.MonkeyPatch, *, build: bool, gil: bool) -> None:
    real = sysconfig.get_config_var
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: gil, raising=False)
    monkeypatch.setattr(
        sysconfig,
        "get_config_var",
        lambda name: (1 if build else 0) if name == "Py_GIL_DISABLED" else real(name),
    )


def test_free_threaded_without_the_gil_defaults_to_threads(
    monkeypatch: pytest.MonkeyPatch, fresh_default: None
) -> None:
    _simulate(monkeypatch, build=True, gil=False)
    kind, why = _kernel.default_pool_kind()
    assert kind == "ThreadPool" and "without the GIL" in why
    pool = shmpool.default_pool()
    try:
        assert isinstance(pool, shmpool.ThreadPool)

        @shmpool.kernel
        def double(x: np.ndarray) -> None:
            x *= 2

        x = np.arange(6.0)
        double(x)  # no pool open: the decorator runs on the default pool, in threads
        assert x.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] and pool.stats.bytes_staged_in == 0
    finally:
        pool.close()
    assert any("ThreadPool because" in line for line in _info.info_lines())


def test_gil_enabled_at_run_time_keeps_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(monkeypatch, build=True, gil=True)
    kind, why = _kernel.default_pool_kind()
    assert kind == "SharedPool" and "enabled at run time" in why


def test_a_gil_build_keeps_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(monkeypatch, build=False, gil=True)
    assert _kernel.default_pool_kind() == (
        "SharedPool",
        "this Python has a GIL: only processes run Python code in parallel",
    )
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)  # Python 3.12 and older
    assert _kernel.default_pool_kind()[0] == "SharedPool"
