"""Transparent huge pages for blocks: what the kernel and the block folder's mount allow.

A fresh 4 KiB-page block costs a page fault per 4 KiB in the parent and again in every
worker that touches it; with 2 MiB pages both are a few hundred times fewer (numbers in
the README's Performance section). Only read here; :func:`shmpool._segments.create_block`
acts on it.
"""

from __future__ import annotations

import functools
import mmap
import re

__all__ = [
    "HUGE_PAGE",
    "THP_SHMEM_SETTING",
    "huge_page_plan",
    "huge_page_setting",
    "huge_pages_line",
    "mount_huge_option",
    "mount_of",
]

THP_SHMEM_SETTING = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
_HUGE_OK = {"advise", "within_size", "always", "force"}
HUGE_PAGE = 2 << 20  # smaller blocks cannot hold a huge page: no advice, fallocate as ever


def huge_page_setting() -> str:
    """The kernel's transparent-huge-page setting for shmem (the bracketed word of
    :data:`THP_SHMEM_SETTING`: never, advise, within_size, always, deny, force), or
    ``"unavailable"`` where there is no such file (macOS, kernels without THP)."""
    try:
        with open(THP_SHMEM_SETTING) as settings:
            found = re.search(r"\[(\w+)\]", settings.read())
    except OSError:
        return "unavailable"
    return found[1] if found else "unavailable"


def mount_of(folder: str) -> tuple[str, str, list[str]] | None:
    """The mount that holds ``folder``, the longest matching mount point of
    /proc/self/mounts, as (mount point, file system type, options); None where that
    cannot be read. Not cached: its callers cache what they derive from it."""
    try:
        with open("/proc/self/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    found: tuple[str, str, list[str]] | None = None
    for fields in (line.split() for line in lines):
        if len(fields) < 4 or (found is not None and len(fields[1]) < len(found[0])):
            continue
        if folder == fields[1] or folder.startswith(fields[1].rstrip("/") + "/"):
            found = (fields[1], fields[2], fields[3].split(","))
    return found


@functools.lru_cache(maxsize=16)
def mount_huge_option(folder: str) -> str:
    """The ``huge=`` option of the tmpfs that holds ``folder`` ("never" when not given),
    or ``"n/a"`` when it is not on a tmpfs. For a mounted tmpfs such as /dev/shm this, not
    shmem_enabled, decides (shmem_enabled rules the kernel's internal mount; its ``deny``
    and ``force`` override every mount). Cached: mounts do not change under a pool."""
    mount = mount_of(folder)
    if mount is None or mount[1] != "tmpfs":
        return "n/a"
    found = [o[5:] for o in mount[2] if o.startswith("huge=")]
    return found[0] if found else "never"


def huge_page_plan(folder: str) -> tuple[bool, bool]:
    """(advise, expect): whether blocks in ``folder`` are advised MADV_HUGEPAGE, and whether
    the kernel will then really give them huge pages.

    Advice follows shmem_enabled (advise, within_size, always, force) or the folder's
    mount: it is one cheap call, and it lets khugepaged collapse a block later. Huge pages
    follow only the mount's ``huge=`` (or ``force``): only then are blocks populated
    instead of fallocated, since populating 4 KiB pages is slower than fallocating them.
    """
    setting = huge_page_setting()
    if setting == "deny" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False, False
    expect = setting == "force" or mount_huge_option(folder) in _HUGE_OK
    return expect or setting in _HUGE_OK, expect


def huge_pages_line(folder: str) -> str:
    """``info``'s line: the settings, what 4 KiB pages cost, and how to change them."""
    setting, mount = huge_page_setting(), mount_huge_option(folder)
    advise, expect = huge_page_plan(folder)
    head = f"huge pages for blocks: shmem_enabled [{setting}], {folder} huge={mount}"
    if expect:
        return f"{head}: blocks are advised and populated with 2 MiB pages"
    if setting == "unavailable" or mount == "n/a":
        return f"{head}: 4 KiB pages (no transparent huge pages for this folder)"
    # Measured with benchmarks/pages.py (128 MiB, Linux 6.18, 2 cores); see the README.
    return (
        f"{head}: 4 KiB pages{' (advised, but the mount decides)' if advise else ''}. "
        "A fresh 128 MiB block costs ~125 ms (create, fill, a second process's touch) "
        "against ~50 ms with 2 MiB pages (np.empty + fill: ~30 ms). To enable, as root: "
        f"mount -o remount,huge=advise {folder} (or huge= in fstab / the tmpfs mount); "
        "echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled covers the "
        "kernel's internal mount, and 'force' there overrides every mount"
    )
