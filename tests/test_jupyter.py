"""Notebooks: a real notebook run through nbclient, and a Jupyter kernel shut down with a
SharedPool open, which leaves nothing in /dev/shm.

A real ipykernel, started and shut down by jupyter_client as a notebook server does: a
polite shutdown (ipykernel SIGTERMs the children in its process group, then exits) and a
forced one (SIGKILL to the kernel's whole process group). Neither lets the pool's own exit
handler do the work, so the blocks must go without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 10.0

# What the notebook cell runs: a pool with arrays, one map done, then a report of the
# pool's blocks and of the kernel's descendants (workers, manager, helpers). The blocks go
# in a folder of the test's own on /dev/shm's tmpfs: in /dev/shm itself, any other pool
# starting on the machine would sweep a dead kernel's blocks and hide a leak.
CELL = """
import json, os, numpy as np, psutil, shmpool
from tests import kernels
pool = shmpool.SharedPool(2, start_method={method!r}, temp_folder={folder!r})
x = pool.asarray(np.arange(100_000.0))
y = pool.zeros((100, 100))
pool.map(kernels.double_in_place, x)
mine = f"shmpool_{{os.getpid()}}_"
print(json.dumps({{
    "kernel": os.getpid(),
    "blocks": [os.path.join({folder!r}, n) for n in os.listdir({folder!r}) if n.startswith(mine)],
    "pids": [c.pid for c in psutil.Process().children(recursive=True)],
    "x3": float(x[3]),
}}))
"""


@pytest.fixture
def shm_folder() -> Iterator[Path]:
    folder = Path("/dev/shm") / f"shmpool-test-{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def kernel() -> Iterator[KernelManager]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield km
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        km.cleanup_resources()


def _run_cell(km: KernelManager, code: str) -> dict:  # type: ignore[type-arg]
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []
        errors: list[str] = []

        def on_output(msg: dict) -> None:  # type: ignore[type-arg]
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        reply = kc.execute_interactive(code, timeout=60, output_hook=on_output)
        assert reply["content"]["status"] == "ok", errors
    finally:
        kc.stop_channels()
    report: dict = json.loads("".join(out))  # type: ignore[type-arg]
    return report


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("now", [False, True], ids=["polite", "forced"])
def test_kernel_shutdown_leaves_no_block_and_no_process(
    start_method: str, now: bool, kernel: KernelManager, shm_folder: Path
) -> None:
    report = _run_cell(kernel, CELL.format(method=start_method, folder=str(shm_folder)))
    assert report["x3"] == 6.0
    assert len(report["blocks"]) >= 3  # the control block and two arrays
    assert len(report["pids"]) >= 3  # two workers and the manager
    assert all(os.path.exists(p) for p in report["blocks"])
    kernel.shutdown_kernel(now=now)
    deadline = time.monotonic() + GONE_WITHIN_S
    while True:
        blocks = [p for p in report["blocks"] if os.path.lexists(p)]
        alive = [p for p in [report["kernel"], *report["pids"]] if _running(p)]
        if (not blocks and not alive) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for path in blocks:  # fail, but do not leave them to later tests
        os.unlink(path)
    for pid in alive:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not blocks, f"the kernel's pool left blocks in /dev/shm: {blocks}"
    assert not alive, f"processes outlived the kernel: {alive}"


# A notebook as a newcomer writes it: a pool made in one cell without "with", a decorated
# kernel defined in the next and called in a third (it runs on that pool: the active-pool
# rule), a map with a progress bar, a kernel that fails, and a last cell that reports what
# the pool holds and closes it.
NOTEBOOK_CELLS = [
    "import json\nimport numpy as np\nimport shmpool",
    "pool = shmpool.SharedPool(2, start_method='spawn')\nx = pool.asarray(np.arange(16.0))\ny = pool.empty_like(x)",
    "@shmpool.kernel(chunks=4)\ndef square(x, out):\n    out[:] = x * x",
    "before = pool.stats.maps\nsquare(x, y)\nprint('active:', shmpool.active_pool() is pool, pool.stats.maps - before, y.sum())",
    "def shift(x, out):\n    out[:] = x + 1\n\npool.map(shift, x, y, chunks=4, progress=True)\nprint('shifted:', y.sum())",
    "def check(x):\n    if x[0] > 4:\n        raise ValueError('chunk starts too high')\n\npool.map(check, x, chunks=4)",
    "print(json.dumps({'pids': [*pool.worker_pids, pool.manager_pid], 'blocks': pool.block_paths}))\npool.close()",
]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _text(cell: dict, kind: str, name: str | None = None) -> str:  # type: ignore[type-arg]
    return "".join(o["text"] for o in cell["outputs"] if o["output_type"] == kind and o.get("name") == name)


def test_notebook_through_nbclient() -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    cells = notebook.cells
    for i, cell in enumerate(cells):
        if i != 5:
            assert not [o for o in cell["outputs"] if o["output_type"] == "error"], (i, cell["outputs"])
    # The decorated kernel ran on the pool of the earlier cell, once.
    assert _text(cells[3], "stream", "stdout") == "active: True 1 1240.0\n"
    # The bar reached its end on stderr (a text bar: there is no widget front end here).
    bar = _text(cells[4], "stream", "stderr")
    assert re.search(r"shift: 100%\|\S+\| 16/16 ", bar), bar  # the bar counts indices
    assert _text(cells[4], "stream", "stdout") == "shifted: 136.0\n"
    # The error: the kernel's own type, and the remote traceback names the cell, the line
    # and its source, as IPython does for local code; no frame of shmpool's in it.
    (error,) = [o for o in cells[5]["outputs"] if o["output_type"] == "error"]
    assert error["ename"] == "ValueError" and error["evalue"] == "chunk starts too high"
    shown = _ANSI.sub("", "\n".join(error["traceback"]))
    remote = shown.split('"""')[1]
    assert "kernel 'check' on chunk 2 (indices 8:12 of the split axis)" in remote
    expected = (
        "Traceback (most recent call last):\n"
        "  Cell In[6], line 3, in check\n"
        "    raise ValueError('chunk starts too high')\n"
        "ValueError: chunk starts too high\n"
    )
    assert expected in remote, shown
    assert "shmpool" not in remote.split("Traceback", 1)[1], shown
    # Nothing is left once the notebook's kernel is gone.
    report = json.loads(_text(cells[6], "stream", "stdout"))
    assert len(report["pids"]) == 3 and len(report["blocks"]) >= 3
    deadline = time.monotonic() + GONE_WITHIN_S
    while (alive := [p for p in report["pids"] if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"processes outlived the notebook: {alive}"
    assert not [p for p in report["blocks"] if os.path.lexists(p)]
