"""Quiet, honest output: deliberate crashes print no dumps, and the first bar's rate is right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from .conftest import assert_clean_stderr


def _run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_the_deliberate_segfault_prints_no_crash_dump() -> None:
    # As under pytest: faulthandler on in the parent, and fork, so the worker inherits it.
    proc = _run(
        """
        import numpy as np, shmpool
        from tests import kernels

        with shmpool.SharedPool(2, start_method="fork") as pool:
            try:
                pool.map(kernels.crash_on, np.arange(20), chunks=1, bad=7, how="segv")
            except shmpool.WorkerCrashedError as exc:
                print("crashed:", exc)
        """,
        "-X",
        "faulthandler",
    )
    assert "SIGSEGV" in proc.stdout and "chunk 7" in proc.stdout
    assert "Fatal Python error" not in proc.stderr and "Current thread" not in proc.stderr
    assert_clean_stderr(proc.stderr)


def test_the_first_bar_of_a_process_shows_the_maps_rate() -> None:
    # A short map in a fresh process: the bar's rate must agree with the call's own time,
    # not with the few milliseconds after tqdm finished importing and drawing itself.
    proc = _run(
        """
        import io, time, numpy as np, shmpool

        def nothing(x):
            pass

        if __name__ == "__main__":
            with shmpool.SharedPool(2, start_method="fork") as pool:
                out = io.StringIO()
                start = time.perf_counter()
                pool.map(nothing, np.zeros(2000), chunks=1, progress={"file": out})
                took = time.perf_counter() - start
            print(2000 / took)
            print(out.getvalue().split("\\r")[-1].strip())
        """
    )
    true_rate, bar = proc.stdout.strip().splitlines()
    shown = re.search(r"([\d.]+)(k?)index/s", bar)  # chunks=1: one index per chunk
    assert shown is not None, bar
    rate = float(shown.group(1)) * (1000 if shown.group(2) else 1)
    # The bar cannot see the argument checks before it opens: allow it to be a bit faster.
    assert rate < 2 * float(true_rate), (rate, true_rate, bar)
