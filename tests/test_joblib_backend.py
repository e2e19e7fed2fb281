"""joblib's Parallel, and scikit-learn's n_jobs, on shmpool's workers (backend="shmpool")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.model_selection import cross_validate
from sklearn.tree import DecisionTreeClassifier

import shmpool
import shmpool.joblib

from . import conftest

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pool() -> Iterator[shmpool.SharedPool]:
    """A 2-worker SharedPool shared by the module's tests."""
    made = shmpool.SharedPool(2, start_method="forkserver")
    conftest._live_shared_pools.append(made)
    try:
        yield made
    finally:
        conftest._live_shared_pools.remove(made)
        made.close()


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


def write_row(out: np.ndarray, i: int) -> None:  # type: ignore[type-arg]
    out[i] = i + 0.5


class PidTree(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A decision tree that remembers which process fitted it."""

    def __init__(self, max_depth: int = 3):
        self.max_depth = max_depth

    def fit(self, X: Any, y: Any) -> PidTree:
        self.tree_ = DecisionTreeClassifier(max_depth=self.max_depth, random_state=0).fit(X, y)
        self.classes_ = self.tree_.classes_
        self.fit_pid_ = os.getpid()
        return self

    def predict(self, X: Any) -> Any:
        return self.tree_.predict(X)


def test_parallel_runs_on_the_active_pool() -> None:
    with shmpool.SharedPool(2, start_method="fork") as pool, joblib.parallel_config(backend="shmpool"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square_and_pid)(i) for i in range(50))
        workers = set(pool.worker_pids)
    assert [value for value, _ in out] == [i * i for i in range(50)]
    assert {pid for _, pid in out} <= workers


def test_the_pool_can_be_named(pool: shmpool.SharedPool) -> None:
    with shmpool.ThreadPool(2) as other:  # the active pool, but not the one named
        with joblib.parallel_config(backend="shmpool", pool=pool):
            out = joblib.Parallel()(joblib.delayed(square_and_pid)(i) for i in range(10))
        assert {pid for _, pid in out} <= set(pool.worker_pids)
        assert other.stats.maps == 0


def test_on_a_thread_pool_and_as_a_generator() -> None:
    with shmpool.ThreadPool(2) as pool, joblib.parallel_config(backend="shmpool"):
        results = joblib.Parallel(n_jobs=-1, return_as="generator")(
            joblib.delayed(square_and_pid)(i) for i in range(20)
        )
        assert [value for value, _ in results] == [i * i for i in range(20)]
    assert pool.closed


def test_n_jobs_is_capped_at_the_pools_workers(pool: shmpool.SharedPool) -> None:
    backend = shmpool.joblib.ShmpoolBackend(pool=pool)
    assert [backend.effective_n_jobs(n) for n in (None, -1, -2, 1, 2, 8)] == [2, 2, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)


def test_an_error_is_raised_with_its_type_and_the_pool_stays_usable(pool: shmpool.SharedPool) -> None:
    with joblib.parallel_config(backend="shmpool", pool=pool), pytest.raises(KeyError, match="item 7"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on)(i, 7) for i in range(40))
    assert pool.submit(fail_on, 1, 0).result(timeout=30) == 1


def test_shared_arrays_travel_by_reference(pool: shmpool.SharedPool) -> None:
    out = pool.zeros(8)
    with joblib.parallel_config(backend="shmpool", pool=pool):
        joblib.Parallel(n_jobs=2)(joblib.delayed(write_row)(out, i) for i in range(8))
    assert np.array_equal(out, np.arange(8) + 0.5)


def test_scikit_learn_n_jobs_fits_in_the_pools_workers(pool: shmpool.SharedPool) -> None:
    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    with joblib.parallel_config(backend="shmpool", pool=pool):
        scores = cross_validate(PidTree(), X, y, cv=4, n_jobs=2, return_estimator=True)
    assert len(scores["test_score"]) == 4 and all(s > 0.5 for s in scores["test_score"])
    assert {est.fit_pid_ for est in scores["estimator"]} <= set(pool.worker_pids)


def test_joblib_is_imported_only_by_shmpool_joblib() -> None:
    code = (
        "import sys, shmpool, joblib.parallel as p\n"
        "before = 'shmpool' in p.BACKENDS\n"
        "import shmpool.joblib\n"
        "print(before, 'shmpool' in p.BACKENDS)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
    light = "import sys, shmpool; shmpool.SharedPool; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
