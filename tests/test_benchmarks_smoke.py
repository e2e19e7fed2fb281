"""The benchmark suite still runs: ``benchmarks/run.py --smoke`` (tiny sizes, one
repetition, serial, shmpool, the bare thread pool ``cf_tpe``, shmpool's ThreadPool where it
exists, and the standard-library process peers) exits 0 with a table that has shmpool and
cf_tpe rows, the threads-vs-processes comparison, and a JSON file with every row checked.
Peers that need extra packages (joblib, mpire, dask) are not part of the smoke run.

Until ``shmpool.ThreadPool`` exists the smoke run leaves it out with a note; the ThreadPool
adapter itself is checked here against a small stand-in with the same API, so it works on
the day the real one lands."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_python

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_S = 120  # it takes about 15 s on 2 cores; the margin is for slow CI machines


def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = run_python(
        str(ROOT / "benchmarks" / "run.py"), "--smoke", "--json", str(out), timeout=SMOKE_TIMEOUT_S, cwd=ROOT
    )
    table = proc.stdout
    assert "## Targets" in table
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert f"## {workload} " in table, f"no {workload} table:\n{table}"
    lines = table.splitlines()
    shmpool_rows = [line for line in lines if line.startswith("| shmpool |")]
    assert len(shmpool_rows) >= 8, table
    # The thread-pool peer runs every workload (W5 through W2's rows) and is a ratio column.
    peer_rows = [line for line in lines if line.startswith("| cf_tpe |")]
    assert len(peer_rows) >= 10, table
    assert "t/cf_tpe" in table
    assert "## Threads vs processes" in table
    compare = table.split("## Threads vs processes")[1].split("\n## ")[0]
    assert "| W2 " in compare and "| W3 " in compare, compare
    assert "MISMATCH" not in table.split("## Columns")[0]
    data = json.loads(out.read_text())
    systems = {row["system"] for row in data["rows"]}
    assert {"serial", "shmpool", "cf_tpe", "mp_pool", "cf_ppe", "shm_hand", "ideal", "memcpy"} <= systems
    assert "threadpool" in systems
    assert len([line for line in lines if line.startswith("| threadpool |")]) >= 8, table
    assert all(row["status"] in ("ok", "skip") for row in data["rows"]), data["notes"]
    assert not any(row["problems"] for row in data["rows"])


# ---- the ThreadPool adapter ---------------------------------------------------------------


def test_threadpool_adapter() -> None:
    """Every workload and variant of the ``threadpool`` system runs and checks out."""
    from benchmarks import kernels
    from benchmarks.adapters import ADAPTERS
    from benchmarks.host import _Host

    adapter = ADAPTERS["threadpool"]()
    adapter.setup(2)
    host = _Host(adapter, 2, conn=None)  # type: ignore[arg-type]
    sizes = {"W1": 50, "W2": 1 << 12, "W3": 16, "W4": 4, "W6": kernels.W6_LENGTH, "W7": 200}
    try:
        for workload, variants in adapter.VARIANTS.items():
            size = sizes[workload]
            chunk_len = kernels.auto_chunk_len(size, 16, 2) if workload in ("W2", "W3") else 0
            for variant in variants:
                n = 3 if workload == "W6" else size
                message = {
                    "workload": workload,
                    "variant": variant,
                    "size": size,
                    "n": n,
                    "chunk_len": chunk_len,
                }
                for _ in range(2):  # steady rows reuse their arrays
                    reply = host._run(message)
                    assert reply["status"] == "ok", (workload, variant, reply)
                    assert reply["problem"] is None, (workload, variant, reply["problem"])
            host._release(workload)
    finally:
        adapter.teardown()


# ---- the fresh-output workloads (benchmarks/fresh.py) ----------------------------------------


def test_fresh_output_smoke() -> None:
    """W8 (a fresh output each call, e2e and with the input shared) runs for every system it
    has, results checked against serial NumPy inside the script, and W9's three loop
    variants report; the targets are printed as ratios (asserted by nobody: timings)."""
    proc = run_python(str(ROOT / "benchmarks" / "fresh.py"), "--smoke", timeout=SMOKE_TIMEOUT_S, cwd=ROOT)
    out = proc.stdout
    for system in ("shmpool", "threadpool", "cf_tpe", "shm_hand"):
        assert f"| {system} |" in out, out
    assert out.count("x |") >= 8 and "Targets:" in out and "shmpool shared <= 1.25x cf_tpe" in out
    w9 = out.split("## W9")[1]
    for variant in ("reuse", "free", "drop"):
        assert f"| {variant} |" in w9, w9


def test_stencil_benchmark_smoke() -> None:
    """benchmarks/stencil.py at a tiny size: every system runs, and every result is equal
    bit for bit to the serial one (the script exits 1 on a mismatch)."""
    proc = run_python(
        str(ROOT / "benchmarks" / "stencil.py"),
        *("--n", "96", "--steps", "3", "--rounds", "1"),
        timeout=SMOKE_TIMEOUT_S,
        cwd=ROOT,
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "equal" in line]
    assert {line.split(" | ")[0][2:] for line in rows} == {
        "serial",
        "shmpool",
        "threadpool",
        "dask-threads",
        "dask-processes",
    }, proc.stdout


def test_advance_cost_benchmark_smoke() -> None:
    """benchmarks/advance_cost.py at a tiny size: every line reports a cost per call (the
    figures are for the README; speed is not asserted in tests)."""
    proc = run_python(
        str(ROOT / "benchmarks" / "advance_cost.py"),
        *("--calls", "20000", "--repeats", "3"),
        timeout=SMOKE_TIMEOUT_S,
        cwd=ROOT,
    )
    figures = [float(line.split(":")[1].split()[0]) for line in proc.stdout.splitlines()]
    assert len(figures) == 5 and all(ns > 0 for ns in figures), proc.stdout


def test_memory_benchmark_smoke() -> None:
    """benchmarks/memory.py at a tiny size: both cases report a peak, and each peak holds at
    least the arrays that must exist at once (the input, a staged copy and the output; or
    the pool's input and output), so a sampler that missed them would fail here."""
    proc = run_python(
        str(ROOT / "benchmarks" / "memory.py"),
        *("--mib", "16", "--iterations", "2"),
        timeout=SMOKE_TIMEOUT_S,
        cwd=ROOT,
    )
    peaks = {
        line.split()[1]: float(line.split("peak ")[1].split("x")[0]) for line in proc.stdout.splitlines()
    }
    assert set(peaks) == {"plain", "pool"}, proc.stdout
    assert peaks["plain"] >= 2.9 and peaks["pool"] >= 1.9, proc.stdout


def test_first_pool_benchmark_smoke() -> None:
    """benchmarks/first_pool.py, one round: both systems start, map and close in fresh
    interpreters, and each row's parts add up to its total (speed is not asserted)."""
    proc = run_python(
        str(ROOT / "benchmarks" / "first_pool.py"), "--rounds", "1", timeout=SMOKE_TIMEOUT_S, cwd=ROOT
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and " ms |" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == ["shmpool", "multiprocessing.Pool"], proc.stdout
    for row in rows:
        start, first_map, close, total = (float(cell.split()[0]) for cell in row.strip("| ").split(" | ")[1:])
        assert abs(start + first_map + close - total) <= 2, row  # each cell is rounded


def test_latency_benchmark_smoke() -> None:
    """benchmarks/latency.py, one round: every figure is reported and positive, the ratios
    against multiprocessing.Pool among them (speed is not asserted)."""
    proc = run_python(
        str(ROOT / "benchmarks" / "latency.py"), "--rounds", "1", timeout=SMOKE_TIMEOUT_S, cwd=ROOT
    )
    figures: dict[str, float] = {}
    name: list[str] = []
    for word in proc.stdout.split()[1:]:  # the label, then name words and a figure, repeated
        try:
            figures[" ".join(name)] = float(word)
            name = []
        except ValueError:
            name.append(word)
    wanted = {"W6 us/map", "W7 us/item", "W7 one-per-message us/item", "Pool W7 us/item", "W7 rate vs Pool"}
    assert wanted <= set(figures), proc.stdout
    assert all(value > 0 for value in figures.values()), proc.stdout


def test_after_loads_benchmark_smoke() -> None:
    """benchmarks/after_loads.py at a tiny size: W2 is timed four times around the loads,
    each figure positive, and the script checks its own output and imap results."""
    proc = run_python(
        str(ROOT / "benchmarks" / "after_loads.py"),
        *("--mib", "1", "--maps", "20", "--items", "200", "--reps", "2"),
        timeout=SMOKE_TIMEOUT_S,
        cwd=ROOT,
    )
    lines = proc.stdout.splitlines()
    labels = ["W2 first:", "after 20 W6 maps:", "after 200 imap items:", "once more:"]
    assert [line.split(" median")[0] for line in lines] == labels, lines
    for line in lines:
        median = float(line.split("median ")[1].split(" ms")[0])
        assert median > 0, line
