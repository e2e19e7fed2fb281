"""A block folder shared with strangers, and a pool whose process ends by a signal.

Class 7: other users may put anything in /dev/shm under a name like a block's (files,
directories, symlinks, FIFOs, sockets, names of our own pool). A pool must start, work and
end without touching any of it, as root and as an unprivileged user. These tests plant
such objects in a sticky, world-writable folder on /dev/shm's tmpfs, made per test, like
/dev/shm itself; other users' objects are made by root and handed to ``STRANGER``.

Class 8: whatever ends the pool's process (SIGTERM or SIGHUP to it, to its whole process
group, to every process of the pool at once, or ``os._exit`` skipping atexit), no block is
left and no process survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

import shmpool
from shmpool import _block_files, _info, _segments

from . import kernels
from .conftest import assert_clean_stderr, run_script
from .test_teardown import _spawn_child

ROOT = Path(__file__).resolve().parent.parent
STRANGER = 65534  # nobody
GONE_WITHIN_S = 10.0


def _a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A sticky world-writable folder on /dev/shm's tmpfs, as /dev/shm itself is."""
    if os.geteuid() != 0:
        pytest.fail("these tests plant other users' files: run them as root")
    folder = Path("/dev/shm") / f"shmpool-test-{secrets.token_hex(4)}"
    folder.mkdir()
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Plant:
    """Objects named like blocks, and a snapshot of each to check that nothing changed."""

    def __init__(self, folder: Path, victim: Path) -> None:
        self.folder = folder
        self.victim = victim  # what a planted symlink points to: must never be touched
        self.paths: list[Path] = []
        self.stranger = STRANGER  # whose the planted objects are
        self._sockets: list[socket.socket] = []

    def name(self, pid: int, tag: str = "0badf00d") -> Path:
        return self.folder / f"shmpool_{pid}_{tag}_{secrets.token_hex(6)}"

    def everything(self, pid: int, tag: str = "0badf00d") -> None:
        """One of each kind of object another user may leave, all named for ``pid``."""
        other = self.stranger
        stranger_file = self.name(pid, tag)
        stranger_file.write_bytes(b"theirs")
        os.chown(stranger_file, other, other)
        directory = self.name(pid, tag)
        directory.mkdir()
        (directory / "inside").write_bytes(b"theirs")
        os.chown(directory, other, other)
        link = self.name(pid, tag)
        link.symlink_to(self.victim)
        os.chown(link, other, other, follow_symlinks=False)
        my_link = self.name(pid, tag)  # even a symlink of this user's is not a block
        my_link.symlink_to(self.victim)
        dangling = self.name(pid, tag)
        dangling.symlink_to(self.folder / "nowhere")
        fifo = self.name(pid, tag)
        os.mkfifo(fifo)
        os.chown(fifo, other, other)
        sock_path = self.name(pid, tag)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(sock_path))
        self._sockets.append(sock)
        self.paths += [stranger_file, directory, link, my_link, dangling, fifo, sock_path]

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for path in [*self.paths, self.victim]:
            st = os.lstat(path)
            out[str(path)] = (st.st_ino, st.st_mode, st.st_uid)
        return out

    def assert_untouched(self, before: dict[str, tuple[int, int, int]]) -> None:
        assert self.snapshot() == before
        assert self.victim.read_bytes() == b"victim"
        for path in self.paths:
            if path.is_dir() and not path.is_symlink():
                assert (path / "inside").read_bytes() == b"theirs"

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def plant(shared_folder: Path, tmp_path: Path) -> Iterator[Plant]:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    planted = Plant(shared_folder, victim)
    try:
        yield planted
    finally:
        planted.close()


# ---- class 7: the sweep and the folder scan -------------------------------------------


def test_sweep_removes_only_this_users_dead_blocks(plant: Plant) -> None:
    dead = _a_dead_pid()
    plant.everything(dead)
    mine_dead = plant.name(dead)
    mine_dead.write_bytes(b"x")
    mine_live = plant.name(os.getpid())
    mine_live.write_bytes(b"x")
    before = plant.snapshot()
    assert _block_files.sweep_dead_blocks(str(plant.folder)) == [str(mine_dead)]
    plant.assert_untouched(before)
    assert mine_live.exists() and not mine_dead.exists()
    mine_live.unlink()


def test_sweep_as_root_spares_a_strangers_file_whatever_its_pid(plant: Plant) -> None:
    # The old sweep, run as root, deleted another user's leftovers: they are theirs to clean.
    theirs = plant.name(_a_dead_pid())
    theirs.write_bytes(b"theirs")
    os.chown(theirs, STRANGER, STRANGER)
    assert _block_files.sweep_dead_blocks(str(plant.folder)) == []
    assert theirs.read_bytes() == b"theirs"


def test_scan_reports_kinds_and_owners_without_following_links(plant: Plant) -> None:
    plant.everything(_a_dead_pid())
    entries = {Path(e.path): e for e in _block_files.scan_blocks(str(plant.folder))}
    assert set(entries) == set(plant.paths)
    kinds = sorted(e.kind for e in entries.values())
    assert kinds == ["FIFO", "directory", "file", "socket", "symlink", "symlink", "symlink"]
    assert not any(e.is_ours for e in entries.values())


def test_pool_starts_works_and_ends_among_strangers(plant: Plant, start_method: str) -> None:
    # Strangers' objects under a dead PID (the sweep's targets) and under ours (what the
    # pool itself creates and what its manager scans for when it cleans up).
    plant.everything(_a_dead_pid())
    plant.everything(os.getpid())
    before = plant.snapshot()
    with shmpool.SharedPool(2, start_method=start_method, temp_folder=plant.folder) as pool:
        x = pool.asarray(np.arange(1000.0))
        pool.map(kernels.double_in_place, x)
        assert x[10] == 20.0
        y = pool.zeros(10)
        pool.free(y)
    plant.assert_untouched(before)
    assert sorted(plant.folder.iterdir()) == sorted(plant.paths)  # ours all gone, theirs all kept


def test_create_block_never_follows_a_planted_symlink(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    # Make the first name drawn collide with a planted symlink to a file of ours.
    link = plant.folder / f"shmpool_{os.getpid()}_abcd_{'a' * 12}"
    link.symlink_to(plant.victim)
    os.chown(link, STRANGER, STRANGER, follow_symlinks=False)
    names = iter(["a" * 12, "b" * 12])
    monkeypatch.setattr(_block_files, "random_hex", lambda n: next(names))
    path, mapping = _segments.create_block(str(plant.folder), 4096, "abcd")
    try:
        assert path == str(plant.folder / f"shmpool_{os.getpid()}_abcd_{'b' * 12}")
        assert stat.S_ISREG(os.lstat(path).st_mode) and os.path.getsize(path) == 4096
        assert plant.victim.read_bytes() == b"victim"  # not truncated or reserved through the link
        assert os.readlink(link) == str(plant.victim)
    finally:
        mapping.close()
        os.unlink(path)


# A child that builds a pool in the folder given, reports its blocks and processes, and
# waits to be ended. Only the pool's blocks are in the folder when it reports.
POOL_CHILD = """
import json, os, sys, time, numpy as np, psutil, shmpool
from tests import kernels
method, folder = sys.argv[1], sys.argv[2] or None
pool = shmpool.SharedPool(2, start_method=method, temp_folder=folder)
x = pool.asarray(np.arange(100_000.0))
pool.map(kernels.double_in_place, x)
busy = pool.map_async(kernels.sleep_chunk, np.zeros(2), chunks=1, seconds=60)  # a worker mid-kernel
where = folder or "/dev/shm"
mine = f"shmpool_{os.getpid()}_"
print(json.dumps({
    "blocks": [os.path.join(where, n) for n in os.listdir(where) if n.startswith(mine)],
    "pids": [c.pid for c in psutil.Process().children(recursive=True)],
}), flush=True)
time.sleep(120)
"""

_BUSY = (
    "busy = pool.map_async(kernels.sleep_chunk, np.zeros(2), chunks=1, seconds=60)  # a worker mid-kernel\n"
)
assert _BUSY in POOL_CHILD


def _start_child(
    method: str, folder: str = "", new_session: bool = False
) -> tuple[subprocess.Popen[str], dict]:  # type: ignore[type-arg]
    proc, report = _spawn_child(method, folder, new_session, code=POOL_CHILD)
    assert report["blocks"] and len(report["pids"]) >= 3  # control + array blocks; workers + manager
    return proc, report


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(report: dict, seconds: float = GONE_WITHIN_S) -> tuple[list[str], list[int]]:  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    while True:
        blocks = [p for p in report["blocks"] if os.path.lexists(p)]
        pids = [p for p in report["pids"] if _running(p)]
        if (not blocks and not pids) or time.monotonic() > deadline:
            return blocks, pids
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[str], report: dict) -> str:  # type: ignore[type-arg]
    """Assert the child's pool left nothing behind; return the child's stderr."""
    try:
        proc.wait(timeout=GONE_WITHIN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    blocks, pids = _wait_gone(report)
    for pid in pids:  # do not leave them to the next test, but fail this one
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for path in blocks:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    _, stderr = proc.communicate(timeout=GONE_WITHIN_S)
    assert not blocks, f"blocks left behind: {blocks}"
    assert not pids, f"processes outlived the pool's process: {pids}"
    return stderr


def test_dying_pool_cleans_up_only_its_own_among_strangers(plant: Plant) -> None:
    # A stranger can read our pool's prefix off /dev/shm and plant objects under it: the
    # manager's clean-up after its parent died must remove our blocks and none of theirs.
    proc, report = _start_child("forkserver", str(plant.folder))
    pid, tag = os.path.basename(report["blocks"][0]).split("_")[1:3]
    plant.everything(int(pid), tag)
    before = plant.snapshot()
    proc.kill()
    _finish(proc, report)
    plant.assert_untouched(before)


# Run as another user: import and warm up as root (the interpreter's own files may be
# unreadable to that user), then drop privileges and start pools under fork, which needs
# no new interpreter.
UNPRIVILEGED = """
import os, sys, tempfile, numpy as np, shmpool
from shmpool import _segments
from tests import kernels
folder, uid = sys.argv[1], int(sys.argv[2])
with tempfile.TemporaryDirectory() as warm, shmpool.SharedPool(1, start_method="fork", temp_folder=warm) as p:
    p.map(kernels.double_in_place, p.zeros(4))
os.setgid(uid)
os.setuid(uid)
for _ in range(2):
    with shmpool.SharedPool(2, start_method="fork", temp_folder=folder) as pool:
        x = pool.asarray(np.arange(100.0))
        pool.map(kernels.double_in_place, x)
        assert x[7] == 14.0
mine = [n for n in os.listdir(folder) if n.startswith(f"shmpool_{os.getpid()}_")]
assert not mine, mine
print("ok")
"""


def test_unprivileged_pool_starts_despite_other_users_objects(plant: Plant) -> None:
    # Before the fix, one root-owned leftover of a dead PID made the sweep raise
    # PermissionError (sticky folder) and so every other user's pool start fail.
    dead = _a_dead_pid()
    plant.stranger = STRANGER - 1  # a third user's, as the pool runs as STRANGER here
    plant.everything(dead)
    roots = plant.name(dead)
    roots.write_bytes(b"root's")
    plant.paths.append(roots)
    roots_dir = plant.name(dead)
    roots_dir.mkdir()
    (roots_dir / "inside").write_bytes(b"theirs")
    plant.paths.append(roots_dir)
    their_leftover = plant.name(dead)  # the unprivileged user's own: its sweep removes it
    their_leftover.write_bytes(b"x")
    os.chown(their_leftover, STRANGER, STRANGER)
    before = plant.snapshot()
    out = run_script(UNPRIVILEGED, str(plant.folder), str(STRANGER)).stdout
    assert out.strip() == "ok"
    plant.assert_untouched(before)
    assert not their_leftover.exists()


def test_info_tells_live_blocks_leftovers_and_strangers(
    plant: Plant, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = _a_dead_pid()
    plant.everything(dead)
    live = plant.name(os.getpid())
    live.write_bytes(b"x" * 100)
    leftover = plant.name(dead)
    leftover.write_bytes(b"x")
    monkeypatch.setenv(_segments.TEMP_FOLDER_ENV, str(plant.folder))
    out = run_script("from shmpool.__main__ import main; raise SystemExit(main(['info']))").stdout
    try:
        lines = {line.split(" (")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
        assert "in use by process" in lines[str(live)] and "100 bytes" in lines[str(live)]
        assert "a leftover" in lines[str(leftover)]
        for path in plant.paths:
            assert "leaves it alone" in lines[str(path)], lines[str(path)]
        assert "2 of this user (1 of running processes, 1 leftovers); 7 other entries" in out
        assert os.path.lexists(leftover)  # info only looks
    finally:
        live.unlink()
        leftover.unlink()


def test_describe_block_names_a_reused_pid(plant: Plant) -> None:
    # A live PID that now runs as another user cannot be our creator, which ran as us.
    sleeper = subprocess.Popen(["sleep", "30"], user=STRANGER, cwd="/")
    try:
        block = plant.name(sleeper.pid)
        block.write_bytes(b"x")
        (entry,) = _block_files.scan_blocks(str(plant.folder))
        assert "now a process of uid 65534" in _info.describe_block(entry)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- class 8: the pool's process ended by a signal or without atexit -------------------


def _signal_each(proc: subprocess.Popen[str], report: dict, sig: int) -> None:  # type: ignore[type-arg]
    # Every process at once, as a service manager stopping a unit's cgroup does, and as
    # ipykernel signals its children: the manager gets the signal too. Children first, so
    # that the manager is signalled before it could see its parent die.
    for pid in [*report["pids"], proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


TARGETS: dict[str, Callable[[subprocess.Popen[str], dict, int], None]] = {  # type: ignore[type-arg]
    "process": lambda proc, report, sig: proc.send_signal(sig),
    "group": lambda proc, report, sig: os.killpg(proc.pid, sig),
    "each": _signal_each,
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_ends_the_pool_and_leaves_nothing(
    start_method: str, sig: int, target: str, shared_folder: Path
) -> None:
    # In a folder of the test's own: in /dev/shm itself, any pool starting elsewhere on the
    # machine would sweep the dead child's blocks and hide a leak.
    proc, report = _start_child(start_method, str(shared_folder), new_session=True)
    assert all(os.path.exists(p) for p in report["blocks"])
    TARGETS[target](proc, report, sig)
    stderr = _finish(proc, report)
    assert proc.returncode == -sig
    assert_clean_stderr(stderr)
    assert "Traceback" not in stderr, stderr


OS_EXIT_CHILD = POOL_CHILD.replace("time.sleep(120)", "sys.stdin.readline(); os._exit(3)")


def test_os_exit_skipping_atexit_leaves_nothing(start_method: str, shared_folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OS_EXIT_CHILD), start_method, str(shared_folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    report = json.loads(proc.stdout.readline())
    proc.stdin.write("\n")
    proc.stdin.flush()
    stderr = _finish(proc, report)
    assert proc.returncode == 3
    assert_clean_stderr(stderr)
    assert "Traceback" not in stderr, stderr


SIGINT_CHILD = (
    POOL_CHILD.replace(_BUSY, "")
    .replace(
        "method, folder =", "import signal; signal.signal(signal.SIGINT, lambda *a: None)\nmethod, folder ="
    )
    .replace(
        "time.sleep(120)",
        "sys.stdin.readline()\npool.map(kernels.double_in_place, x)\nprint(x[5], flush=True)\npool.terminate()",
    )
)


def test_sigint_to_the_group_does_not_end_the_pool() -> None:
    # Ctrl-C reaches the whole foreground group; it must not make the manager unlink the
    # blocks of a pool that goes on (the parent turns it into a cancellation).
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGINT_CHILD), "forkserver", ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    report = json.loads(proc.stdout.readline())
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)  # let the signal land before the pool is used again
    assert all(os.path.exists(p) for p in report["blocks"])
    assert all(_running(p) for p in report["pids"])
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "20.0"  # doubled twice, after the SIGINT
    _finish(proc, report)
    assert proc.returncode == 0
