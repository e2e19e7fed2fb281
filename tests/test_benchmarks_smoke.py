"""The benchmark suite still runs: ``benchmarks/run.py --smoke`` (tiny sizes, one
repetition, serial, shmpool and the standard-library peers) exits 0 with a table that has
shmpool rows and a JSON file with every row checked. Peers that need extra packages
(joblib, mpire, dask) are not part of the smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import assert_clean_stderr

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_S = 120  # it takes about 15 s on 2 cores; the margin is for slow CI machines


def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_clean_stderr(proc.stderr)
    table = proc.stdout
    assert "## Targets" in table
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert f"## {workload} " in table, f"no {workload} table:\n{table}"
    shmpool_rows = [line for line in table.splitlines() if line.startswith("| shmpool |")]
    assert len(shmpool_rows) >= 8, table
    assert "MISMATCH" not in table.split("## Columns")[0]
    data = json.loads(out.read_text())
    systems = {row["system"] for row in data["rows"]}
    assert {"serial", "shmpool", "mp_pool", "cf_ppe", "shm_hand", "ideal", "memcpy"} <= systems
    assert all(row["status"] in ("ok", "skip") for row in data["rows"]), data["notes"]
    assert not any(row["problems"] for row in data["rows"])
