"""The examples and the command line run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import assert_clean_stderr

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SMALL_ARGS = {
    "image_filter.py": ["--images", "40"],
    "reduction.py": ["--n", "200000"],
    "batch_job.py": ["--files", "60"],
    "halo_stencil.py": ["--n", "256", "--steps", "10"],
}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    assert_clean_stderr(proc.stderr)
    return proc


def test_there_are_examples() -> None:
    assert {"image_filter.py", "reduction.py", "batch_job.py", "decorator.py", "halo_stencil.py"} <= {
        p.name for p in EXAMPLES
    }


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    proc = _run(str(script), *SMALL_ARGS.get(script.name, []))
    assert "match" in proc.stdout.lower()


def test_demo() -> None:
    proc = _run("-m", "shmpool", "demo", "--mb", "8")
    out = proc.stdout
    assert "serial:" in out and "SharedPool:" in out and "speed-up:" in out
    assert "results equal: True" in out and "workers: " in out


def test_info() -> None:
    out = _run("-m", "shmpool", "info").stdout
    for needle in (
        "Python",
        "NumPy",
        "start methods",
        "usable CPUs",
        "block folder",
        "free",
        "SHMPOOL_TEMP_FOLDER",
    ):
        assert needle in out
