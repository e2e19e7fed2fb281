"""How a block's pages are reserved and advised (issue 14, items 3 and 4).

The huge-page decision is read from a simulated ``shmem_enabled`` file; whether a block was
advised is read back from the kernel (``/proc/self/smaps``: ``hg`` in the mapping's
VmFlags), not from a spy. The tmpfs tests mount a real small tmpfs (root only)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shmpool import SharedMemoryFullError, _pages, _segments

MIB = 1 << 20


@pytest.fixture
def shmem_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for /sys/kernel/mm/transparent_hugepage/shmem_enabled."""
    path = tmp_path / "shmem_enabled"
    monkeypatch.setattr(_pages, "THP_SHMEM_SETTING", str(path))
    yield path


def _vm_flags(path: str) -> list[str]:
    """The VmFlags of this process's mapping of ``path``."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith(" " + path):
            flags = next(x for x in lines[i + 1 :] if x.startswith("VmFlags:"))
            return flags.split()[1:]
    raise AssertionError(f"{path} is not mapped")


@pytest.mark.parametrize(
    ("text", "setting", "advised"),
    [
        ("always within_size advise [never] deny force", "never", False),
        ("always within_size [advise] never deny force", "advise", True),
        ("always [within_size] advise never deny force", "within_size", True),
        ("[always] within_size advise never deny force", "always", True),
        ("always within_size advise never [deny] force", "deny", False),
    ],
)
def test_blocks_are_advised_huge_pages_only_where_the_setting_permits(
    shmem_setting: Path, tmp_path: Path, text: str, setting: str, advised: bool
) -> None:
    shmem_setting.write_text(text + "\n")
    assert _pages.huge_page_setting() == setting
    folder = _segments.block_folder()
    if _pages.mount_huge_option(folder) in ("advise", "within_size", "always") and setting != "deny":
        pytest.skip(f"{folder} is mounted with huge pages: every setting but deny advises")
    # A mount without huge= gives no huge pages whatever the setting: advice, no populate.
    assert _pages.huge_page_plan(folder) == (advised, False)
    path, mapping = _segments.create_block(folder, 4 * MIB, "abcd1234")
    try:
        assert ("hg" in _vm_flags(path)) is advised
        a = np.frombuffer(mapping, dtype=np.float64)
        assert not a.any()  # populated or fallocated, a fresh block reads as zeros
        a[:] = 1.0
        del a
    finally:
        mapping.close()
        _segments.unlink_quietly(path)


def test_small_blocks_and_a_missing_setting_get_no_advice(shmem_setting: Path) -> None:
    assert _pages.huge_page_setting() == "unavailable"  # no such file
    shmem_setting.write_text("[always] never\n")
    path, mapping = _segments.create_block(_segments.block_folder(), 64 * 1024, "abcd1234")
    try:
        assert "hg" not in _vm_flags(path)  # smaller than one huge page
    finally:
        mapping.close()
        _segments.unlink_quietly(path)


@pytest.fixture
def huge_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted huge=advise: blocks there are advised and populated."""
    mount = tmp_path / "huge"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,huge=advise", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    _pages.mount_huge_option.cache_clear()
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        _pages.mount_huge_option.cache_clear()


def test_a_huge_tmpfs_is_populated_and_a_block_that_does_not_fit_raises(
    huge_tmpfs: Path, shmem_setting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shmem_setting.write_text("always within_size advise [never] deny force\n")
    folder = str(huge_tmpfs)
    assert _pages.mount_huge_option(folder) == "advise"
    assert _pages.huge_page_plan(folder) == (True, True)  # the mount decides, not the setting
    path, mapping = _segments.create_block(folder, 2 * MIB, "abcd1234")
    try:
        assert "hg" in _vm_flags(path)
        # Populated: the pages exist before anything touched them.
        assert int(subprocess.check_output(["du", "-k", path]).split()[0]) >= 2048
        # Past the advisory free-space check, the populate call is what stops a block that
        # does not fit: an exception, no SIGBUS, and no file left behind.
        monkeypatch.setattr(_segments, "free_bytes", lambda folder: 10**12)
        with pytest.raises(SharedMemoryFullError, match="only"):
            _segments.create_block(folder, 4 * MIB, "abcd1234")
        assert [p.name for p in huge_tmpfs.iterdir()] == [Path(path).name]
    finally:
        mapping.close()
        _segments.unlink_quietly(path)
    assert list(huge_tmpfs.iterdir()) == []


def test_info_names_the_setting_its_cost_and_the_fix(shmem_setting: Path) -> None:
    from shmpool._info import info_lines

    shmem_setting.write_text("always within_size advise [never] deny force\n")
    folder = _segments.block_folder()
    if _pages.mount_huge_option(folder) in ("advise", "within_size", "always"):
        pytest.skip(f"{folder} is mounted with huge pages")
    line = next(x for x in info_lines() if x.startswith("huge pages for blocks:"))
    assert "shmem_enabled [never]" in line and "4 KiB pages" in line and "ms" in line
    assert f"mount -o remount,huge=advise {folder}" in line and "echo advise >" in line
