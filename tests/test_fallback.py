"""When the default /dev/shm is too small, blocks go to a file-backed folder on disk, after
one warning; a folder the user chose still raises. Run on a real 8 MiB tmpfs standing in
for /dev/shm (root only) and a real folder on disk; both are checked for leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import shmpool
from shmpool import _segments

from . import kernels

MiB = 2**20


@dataclass
class Folders:
    shm: Path  # a small tmpfs, the default block folder
    disk: Path  # the system temporary folder, on disk: the fallback

    def blocks(self) -> list[str]:
        return sorted(
            str(folder / name)
            for folder in (self.shm, self.disk)
            for name in os.listdir(folder)
            if name.startswith("shmpool_")
        )


def _mount_tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.fixture
def small_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Folders]:
    """An 8 MiB tmpfs as the default folder (a container's small /dev/shm), the system
    temporary folder on disk, no $SHMPOOL_TEMP_FOLDER. Fails a test that leaves blocks in
    either."""
    shm, disk = tmp_path / "shm", tmp_path / "disk"
    _mount_tmpfs(shm, "8m")
    disk.mkdir()
    monkeypatch.setattr(_segments, "_SHM_FOLDER", str(shm))
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    monkeypatch.delenv(_segments.TEMP_FOLDER_ENV, raising=False)
    folders = Folders(shm, disk)
    try:
        yield folders
        deadline = time.monotonic() + 5
        while folders.blocks() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folders.blocks(), f"blocks leaked: {folders.blocks()}"
    finally:
        subprocess.run(["umount", "-l", str(shm)], check=False)


def test_blocks_that_do_not_fit_go_to_disk_after_one_warning(small_shm: Folders, start_method: str) -> None:
    with shmpool.SharedPool(2, start_method=start_method) as pool:
        assert pool.temp_folder == str(small_shm.shm) and pool.fallback_folder == str(small_shm.disk)
        small = pool.full(1000, 1.0)  # fits in the tmpfs
        with pytest.warns(shmpool.SharedMemoryFallbackWarning) as caught:
            big = pool.full(MiB, 2.0)  # 8 MiB: does not
        assert len(caught) == 1
        message = str(caught[0].message)
        assert str(small_shm.shm) in message and str(small_shm.disk) in message
        assert "--shm-size" in message and "temp_folder" in message and "SHMPOOL_TEMP_FOLDER" in message
        assert caught[0].filename == __file__  # it points at the user's call
        in_shm = len(os.listdir(small_shm.shm))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per pool: no second warning
            other = pool.full(MiB, 3.0)
            later_small = pool.zeros(1000)
        assert len(os.listdir(small_shm.shm)) == in_shm + 1  # the tmpfs is tried first again
        assert pool.is_shared(later_small)
        folders = [os.path.dirname(p) for p in pool.block_paths]
        assert folders.count(str(small_shm.disk)) == 2
        assert set(pool.block_paths) == set(small_shm.blocks())
        # Workers map blocks of both folders; writes reach the parent.
        pool.map(kernels.double_in_place, big)
        pool.map(kernels.double_in_place, other)
        pool.map(kernels.double_in_place, small)
        assert big[0] == 4.0 and other[-1] == 6.0 and small[5] == 2.0
        # A plain array staged for a map falls back too, and its block goes afterwards.
        plain = np.ones(MiB)
        pool.map(kernels.double_in_place, plain)
        assert plain[7] == 2.0
        pool.free(big)
        assert str(small_shm.disk) in {os.path.dirname(p) for p in pool.block_paths}
    assert big[0] == 4.0  # arrays stay valid after the pool is gone


@pytest.mark.parametrize("how", ["temp_folder", "env"])
def test_a_chosen_folder_never_falls_back(
    small_shm: Folders, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv(_segments.TEMP_FOLDER_ENV, str(small_shm.shm))
        pool = shmpool.SharedPool(1, start_method="fork")
    else:
        pool = shmpool.SharedPool(1, start_method="fork", temp_folder=small_shm.shm)
    with pool, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool.fallback_folder is None
        with pytest.raises(shmpool.SharedMemoryFullError) as info:
            pool.zeros(MiB)
        assert info.value.folder == str(small_shm.shm)
        assert not os.listdir(small_shm.disk)


def test_a_full_fallback_folder_raises(
    small_shm: Folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_disk = tmp_path / "tiny"
    _mount_tmpfs(tiny_disk, "4m")
    try:
        # Pretend the second tmpfs is on disk, so it is the fallback: it is full too.
        monkeypatch.setattr(tempfile, "tempdir", str(tiny_disk))
        monkeypatch.setattr(_segments, "fallback_folder", lambda: str(tiny_disk))
        with shmpool.SharedPool(1, start_method="fork") as pool:
            with (
                pytest.warns(shmpool.SharedMemoryFallbackWarning),
                pytest.raises(shmpool.SharedMemoryFullError) as info,
            ):
                pool.zeros(MiB)
            assert info.value.folder == str(tiny_disk)
            assert os.listdir(tiny_disk) == []
    finally:
        subprocess.run(["umount", "-l", str(tiny_disk)], check=False)


def test_leftovers_in_the_fallback_folder_are_swept_at_pool_start(small_shm: Folders) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = small_shm.disk / f"shmpool_{dead.pid}_abcd0123_0123456789ab"
    leftover.write_bytes(b"x" * 100)
    alive = small_shm.disk / f"shmpool_{os.getpid()}_abcd0123_0123456789ab"
    alive.write_bytes(b"x")
    try:
        with shmpool.SharedPool(1, start_method="fork"):
            assert not leftover.exists()
            assert alive.exists()  # its creator (this process) lives: never touched
    finally:
        alive.unlink()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_parent_killed_leaves_nothing_in_either_folder(small_shm: Folders, method: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, tempfile, warnings
        import shmpool
        from shmpool import _segments
        _segments._SHM_FOLDER = {str(small_shm.shm)!r}
        tempfile.tempdir = {str(small_shm.disk)!r}
        warnings.simplefilter("ignore", shmpool.SharedMemoryFallbackWarning)
        if __name__ == "__main__":
            pool = shmpool.SharedPool(2, start_method={method!r})
            a, b = pool.zeros(1000), pool.zeros(2**20)
            print(pool.fallback_folder, *pool.block_paths, flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        fallback, *paths = proc.stdout.readline().split()
        assert fallback == str(small_shm.disk)
        assert {os.path.dirname(p) for p in paths} == {str(small_shm.shm), str(small_shm.disk)}
        assert set(paths) == set(small_shm.blocks())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while small_shm.blocks() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not small_shm.blocks()  # the manager saw its parent die and unlinked both
    finally:
        proc.kill()
        proc.wait()


def _real_memory_cgroup(limit: int) -> Path:
    """A fresh cgroup v1 memory cgroup with ``limit`` bytes (root, cgroup v1 only)."""
    parent = Path("/sys/fs/cgroup/memory")
    group = parent / f"shmpool_test_{os.getpid()}_{time.monotonic_ns()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as exc:
        if group.exists():
            group.rmdir()
        pytest.skip(f"cannot make a cgroup v1 memory cgroup here: {exc}")
    return group


def test_a_real_memory_cgroup_limit_raises_or_falls_back_instead_of_the_oom_killer(tmp_path: Path) -> None:
    # Past a memory cgroup's limit, posix_fallocate on /dev/shm brings the OOM killer (a
    # SIGKILL), not ENOSPC: the headroom check is the only thing between a pool and it.
    group = _real_memory_cgroup(512 * MiB)
    script = textwrap.dedent(
        f"""
        import os, warnings
        with open({str(group / "cgroup.procs")!r}, "w") as f:
            f.write(str(os.getpid()))  # this process and all it starts are in the cgroup now
        import shmpool
        from shmpool import _sizing
        if __name__ == "__main__":
            limit = _sizing.memory_limit()
            assert limit.limit == {512 * MiB} and limit.source.startswith({str(group)!r}), limit
            n = (limit.headroom + 64 * 2**20) // 8
            with shmpool.SharedPool(1, start_method="fork", temp_folder="/dev/shm") as pool:
                try:
                    pool.empty(n)
                except shmpool.SharedMemoryFullError as exc:
                    print("raised", "memory cgroup limit" in str(exc), {str(group)!r} in str(exc))
                small = pool.zeros(8 * 2**20)  # 64 MiB fits
                pool.map(lambda x: x.__iadd__(1), small)
                print("small", small.sum() == small.size)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with shmpool.SharedPool(1, start_method="fork") as pool:
                    big = pool.full(n, 1.0)  # the default folder falls back to disk
                    pool.map(lambda x: x.__imul__(2), big)
                    print("fell back", pool.fallback_folder, big[-1] == 2.0,
                          [os.path.dirname(p) for p in pool.block_paths].count(pool.fallback_folder))
            print("warned", [w.category.__name__ for w in caught])
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        lines = done.stdout.splitlines()
        assert lines[0] == "raised True True" and lines[1] == "small True"
        assert lines[2] == f"fell back {tmp_path} True 1"
        assert lines[3] == "warned ['SharedMemoryFallbackWarning']"
        assert not [n for n in os.listdir(tmp_path) if n.startswith("shmpool_")]
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
