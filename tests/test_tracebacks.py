"""Remote tracebacks point at the user's code: the file (or cell) name, the line number and
the source line of the kernel, as a local run would show them, and none of shmpool's own
frames between the caller and the kernel."""

from __future__ import annotations

import linecache
import operator
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmpool

from .conftest import START_METHODS, assert_clean_stderr

CELL_SOURCE = """\
import numpy as np

def helper(v):
    return 1 / 0 if v > 2 else v

def cell_kernel(x):
    for v in x:
        helper(v)
"""


def cell_kernel() -> tuple[Callable[..., Any], str]:
    """A kernel defined the way a notebook cell defines it: compiled from a file name that
    exists only in this process's linecache (as ipykernel's ``/tmp/ipykernel_*/*.py``)."""
    filename = f"/nonexistent/ipykernel_{os.getpid()}/{uuid.uuid4().hex}.py"
    linecache.cache[filename] = (len(CELL_SOURCE), None, CELL_SOURCE.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(CELL_SOURCE, filename, "exec"), namespace)
    return namespace["cell_kernel"], filename


def assert_points_at_cell(remote: str, filename: str) -> None:
    assert f'File "{filename}", line 8, in cell_kernel\n    helper(v)\n' in remote, remote
    assert f'File "{filename}", line 4, in helper\n    return 1 / 0 if v > 2 else v\n' in remote, remote
    assert "shmpool" not in remote.split("Traceback", 1)[1], remote  # no library frames
    assert "<dynamic-code>" not in remote, remote


@pytest.mark.parametrize("method", START_METHODS)
def test_cell_kernel_in_a_shared_pool(method: str) -> None:
    kernel, filename = cell_kernel()
    with shmpool.SharedPool(2, start_method=method) as pool:
        with pytest.raises(ZeroDivisionError) as info:
            pool.map(kernel, np.arange(8.0), chunks=4)
        assert_points_at_cell(str(info.value.__cause__), filename)
        # The same kernel again, from a worker that has its lines already.
        with pytest.raises(ZeroDivisionError) as again:
            pool.map(kernel, np.arange(8.0), chunks=4)
        assert_points_at_cell(str(again.value.__cause__), filename)


def test_cell_kernel_in_a_thread_pool() -> None:
    kernel, filename = cell_kernel()
    with shmpool.ThreadPool(2) as pool, pytest.raises(ZeroDivisionError) as info:
        pool.map(kernel, np.arange(8.0), chunks=4)
    assert_points_at_cell(str(info.value.__cause__), filename)


def test_submit_and_imap_point_at_the_cell() -> None:
    kernel, filename = cell_kernel()
    with shmpool.SharedPool(1, start_method="spawn") as pool:
        with pytest.raises(ZeroDivisionError) as info:
            pool.submit(kernel, np.arange(8.0)).result()
        assert_points_at_cell(str(info.value.__cause__), filename)
        with pytest.raises(ZeroDivisionError) as streamed:
            list(pool.imap(kernel, [np.arange(2.0), np.arange(8.0)]))
        assert_points_at_cell(str(streamed.value.__cause__), filename)


def test_an_error_with_no_user_frame_keeps_the_library_frames() -> None:
    # A C function as the kernel: every Python frame of the traceback is shmpool's, and
    # those are what there is to show.
    with shmpool.SharedPool(1, start_method="fork") as pool, pytest.raises(TypeError) as info:
        pool.map(operator.index, np.arange(4.0), chunks=2)
    remote = str(info.value.__cause__)
    assert "in _run_map" in remote and "\nTypeError: " in remote, remote


SCRIPT = """\
import sys
import numpy as np
import shmpool


def check(x):
    if x.sum() > 3:
        raise ValueError("a bad chunk")


kind, method = sys.argv[1], sys.argv[2]
pool = shmpool.ThreadPool(2) if kind == "threads" else shmpool.SharedPool(2, start_method=method)
try:
    pool.map(check, np.arange(8.0), chunks=2)
except ValueError as exc:
    print(exc.__cause__)
pool.close()
"""


@pytest.mark.parametrize(("kind", "method"), [("processes", m) for m in START_METHODS] + [("threads", "")])
def test_script_kernel(tmp_path: Path, kind: str, method: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), kind, method], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert_clean_stderr(proc.stderr)
    remote = proc.stdout
    expected = textwrap.dedent(
        f"""\
        Traceback (most recent call last):
          File "{script}", line 8, in check
            raise ValueError("a bad chunk")
        ValueError: a bad chunk
        """
    )
    assert expected in remote, remote
    assert "shmpool" not in remote.split("Traceback", 1)[1], remote
