"""Markdown tables of a benchmark run: one table per workload, the targets, and the notes.

Times are medians of the timed repetitions. ``t/serial``, ``t/shmpool`` and ``t/cf_tpe``
divide a row's median time (per item for W1 and W7, per map for W6) by that of serial's
(shmpool's, the bare thread pool's) row of the same workload, size and variant, so below 1
means faster than the reference. The threads-vs-processes section compares the
``e2e-plain8`` rows of the thread peer, ThreadPool and SharedPool.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Row", "compare_threads", "fmt_bytes", "fmt_time", "render", "targets"]

MiB = 1 << 20
GiB = 1 << 30

# Per-item workloads: ratios compare time per item (W1, W7) or per map (W6).
PER_ITEM = ("W1", "W6", "W7")
# The reference systems every table has a ratio column for.
THREADS = "cf_tpe"  # the bare ThreadPoolExecutor over slices
# The threads-vs-processes comparison's variant (adapters.PLAIN8) and its chunk count.
PLAIN8 = "e2e-plain8"
COMPARE_TARGET = 1.10  # ThreadPool / bare ThreadPoolExecutor, W2 over plain arrays


@dataclass
class Row:
    """One system's variant of one workload at one size, and everything measured for it."""

    workload: str
    system: str
    variant: str
    size: int = 0  # elements (W2, W5), rows (W3), items (W1, W7), array length (W4, W6)
    label: str = ""  # the size as shown in the table
    n: int = 0  # items (W1, W7) or maps (W6) per repetition
    chunk_len: int = 0
    nbytes: int = 0  # the input's size in bytes (W2, W3, W5)
    status: str = "ok"  # ok, skip or error
    note: str = ""
    times: list[float] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)  # W5, one per sampled run

    @property
    def median(self) -> float | None:
        """Median of the timed repetitions."""
        return statistics.median(self.times) if self.times else None

    @property
    def per_item(self) -> float | None:
        """Median time per item (W1, W7) or per map (W6), else the median."""
        m = self.median
        if m is None:
            return None
        return m / self.n if self.workload in PER_ITEM and self.n else m


# ---- formatting -----------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    """``812 µs``, ``41.3 ms``, ``2.18 s``."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_bytes(n: float) -> str:
    """``128 MiB``, ``1.00 GiB``."""
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n / 1024:.0f} KiB"


def fmt_rate(per_s: float | None) -> str:
    """``1.23 M``, ``45.6 k``, ``595``."""
    if per_s is None:
        return "—"
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k"
    return f"{per_s:.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference <= 0:
        return "—"
    return f"{value / reference:.2f}"


def _minmax(row: Row) -> str:
    if not row.times:
        return "—"
    return f"{fmt_time(min(row.times))} - {fmt_time(max(row.times))}"


def _check(row: Row) -> str:
    if row.problems:
        return f"**MISMATCH** ({len(row.problems)}x)"
    if row.status == "error":
        return "**ERROR**"
    return "ok" if row.times or row.metrics else "—"


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(cells) + " |" for cells in lines)
    return "\n".join(out)


# ---- references -----------------------------------------------------------------------------


def reference(rows: Sequence[Row], row: Row, system: str) -> Row | None:
    """``system``'s row for the same workload and size as ``row``: the same variant when it
    has one, else its closest (e2e for e2e-*, default, forkserver for other start methods,
    threads for the thread pools' W4 row)."""
    candidates = {
        r.variant: r
        for r in rows
        if r.system == system and r.workload == row.workload and r.size == row.size and r.times
    }
    for variant in (row.variant, row.variant.split("-")[0], "default", "forkserver", "e2e", "threads"):
        if variant in candidates:
            return candidates[variant]
    return None


def _ref_time(rows: Sequence[Row], row: Row, system: str) -> float | None:
    ref = reference(rows, row, system)
    return ref.per_item if ref is not None else None


# ---- tables ---------------------------------------------------------------------------------


def _shown(rows: Sequence[Row], workload: str, size: int | None = None) -> list[Row]:
    return [r for r in rows if r.workload == workload and (size is None or r.size == size)]


def _status_cells(row: Row, width: int) -> list[str] | None:
    if row.status == "skip":
        return ["n/a: " + row.note.splitlines()[0][:80], *[""] * (width - 1)]
    if row.status == "error" and not row.times:
        return ["**ERROR** (see notes)", *[""] * (width - 1)]
    return None


def _w1_w7(rows: Sequence[Row], workload: str, unit: str) -> str:
    header = ["system", "variant", unit, "median", "min - max", f"{unit}/s", f"µs/{unit[:-1]}"]
    header += ["t/serial", "t/shmpool", f"t/{THREADS}", "check"]
    lines = []
    for row in _shown(rows, workload):
        lead = [row.system, row.variant]
        status = _status_cells(row, len(header) - 2)
        if status is not None:
            lines.append(lead + status)
            continue
        per = row.per_item
        lines.append(
            [
                *lead,
                str(row.n),
                fmt_time(row.median),
                _minmax(row),
                fmt_rate(1 / per if per else None),
                f"{per * 1e6:.2f}" if per else "—",
                _ratio(per, _ref_time(rows, row, "serial")),
                _ratio(per, _ref_time(rows, row, "shmpool")),
                _ratio(per, _ref_time(rows, row, THREADS)),
                _check(row),
            ]
        )
    return _table(header, lines)


def _array_table(rows: Sequence[Row], workload: str, size: int) -> str:
    header = ["system", "variant", "chunks", "median", "min - max", "GB/s in", "t/serial", "t/shmpool"]
    header += [f"t/{THREADS}", "t/ideal", "moved", "check"]
    lines = []
    for row in _shown(rows, workload, size):
        lead = [row.system, row.variant]
        status = _status_cells(row, len(header) - 2)
        if status is not None:
            lines.append(lead + status)
            continue
        m = row.median
        chunks = row.info.get("chunks") or (-(-row.size // row.chunk_len) if row.chunk_len else "—")
        ideal = _ref_time(rows, row, "ideal") if row.variant == "steady" else None
        lines.append(
            [
                *lead,
                str(chunks),
                fmt_time(m),
                _minmax(row),
                f"{row.nbytes / m / 1e9:.2f}" if m else "—",
                _ratio(m, _ref_time(rows, row, "serial")),
                _ratio(m, _ref_time(rows, row, "shmpool")),
                _ratio(m, _ref_time(rows, row, THREADS)),
                _ratio(m, ideal),
                _moved(row),
                _check(row),
            ]
        )
    return _table(header, lines)


def _moved(row: Row) -> str:
    """Bytes a shmpool pool copied or sent per map (staging, or Dask's transfers)."""
    moved = row.info.get("moved")
    if moved is None:
        return "—"
    return f"{moved / 2**20:.0f} MiB"


def _w4_table(rows: Sequence[Row]) -> str:
    header = ["system", "start method", "median", "min - max", "first (cold)", "t/shmpool", f"t/{THREADS}"]
    header += ["check"]
    lines = []
    for row in _shown(rows, "W4"):
        lead = [row.system, row.variant]
        status = _status_cells(row, len(header) - 2)
        if status is not None:
            lines.append(lead + status)
            continue
        cold = fmt_time(row.warmup[0]) if row.warmup else "—"
        lines.append(
            [
                *lead,
                fmt_time(row.median),
                _minmax(row),
                cold,
                _ratio(row.median, _ref_time(rows, row, "shmpool")),
                _ratio(row.median, _ref_time(rows, row, THREADS)),
                _check(row),
            ]
        )
    return _table(header, lines)


def w5_summary(row: Row) -> dict[str, float]:
    """Median over the sampled runs of each W5 measure (multiples of the array size)."""
    if not row.metrics:
        return {}
    keys = row.metrics[0].keys()
    return {k: statistics.median(m[k] for m in row.metrics) for k in keys}


def _w5_table(rows: Sequence[Row]) -> str:
    header = ["system", "variant", "time", "peak PSS", "peak - idle", "growth in call", "tmpfs-aware - idle"]
    header += ["tmpfs-aware growth", "MemAvailable drop", "/dev/shm Δ", "procs", "check"]
    lines = []
    for row in _shown(rows, "W5"):
        lead = [row.system, row.variant]
        status = _status_cells(row, len(header) - 2)
        if status is not None:
            lines.append(lead + status)
            continue
        s = w5_summary(row)
        if not s:
            lines.append([*lead, *["—"] * (len(header) - 3), _check(row)])
            continue
        lines.append(
            [
                *lead,
                fmt_time(row.median),
                f"{s['peak_pss']:.2f}x",
                f"{s['pss_over_idle']:.2f}x",
                f"{s['pss_growth']:.3f}x",
                f"{s['tmpfs_over_idle']:.2f}x",
                f"{s['tmpfs_growth']:.3f}x",
                f"{s['memavail_drop']:.2f}x",
                fmt_bytes(s["shm_delta_bytes"]),
                f"{s['procs']:.0f}",
                _check(row),
            ]
        )
    return _table(header, lines)


def _w6_table(rows: Sequence[Row]) -> str:
    header = [
        "system",
        "variant",
        "maps",
        "median (all maps)",
        "min - max",
        "µs/map",
        "t/serial",
        "t/shmpool",
        f"t/{THREADS}",
    ]
    header += ["check"]
    lines = []
    for row in _shown(rows, "W6"):
        lead = [row.system, row.variant]
        status = _status_cells(row, len(header) - 2)
        if status is not None:
            lines.append(lead + status)
            continue
        per = row.per_item
        lines.append(
            [
                *lead,
                str(row.n),
                fmt_time(row.median),
                _minmax(row),
                f"{per * 1e6:.1f}" if per else "—",
                _ratio(per, _ref_time(rows, row, "serial")),
                _ratio(per, _ref_time(rows, row, "shmpool")),
                _ratio(per, _ref_time(rows, row, THREADS)),
                _check(row),
            ]
        )
    return _table(header, lines)


# ---- threads vs processes -------------------------------------------------------------------

KERNEL_TEXT = {
    "W2": "`sqrt(x) * 2 + 1` (ufuncs, GIL released)",
    "W3": "pure-Python running max (GIL held)",
}


def _ratios(row: Row | None, ref: Row | None) -> tuple[float | None, float | None]:
    """(median / median, min / min) of two rows' repetitions, None where one is missing."""
    if row is None or ref is None or not row.times or not ref.times:
        return None, None
    med, low = statistics.median(ref.times), min(ref.times)
    return (row.median or 0) / med if med > 0 else None, min(row.times) / low if low > 0 else None


def compare_threads(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The issue's threads-vs-processes comparison, per W2/W3 size: the ``e2e-plain8``
    rows (plain arrays, fresh output, 8 chunks, end to end) of the bare thread pool, the
    ThreadPool and SharedPool, serial's e2e, and each pool's ratios to the thread pool."""
    out: list[dict[str, Any]] = []
    for workload in ("W2", "W3"):
        for size in sorted({r.size for r in _shown(rows, workload)}):
            peer = _find(rows, workload, THREADS, PLAIN8, size)
            if peer is None:
                continue
            entry: dict[str, Any] = {
                "workload": workload,
                "label": peer.label,
                "size": size,
                "peer": peer,
                "serial": _find(rows, workload, "serial", "e2e", size),
            }
            for system in ("threadpool", "shmpool"):
                row = _find(rows, workload, system, PLAIN8, size)
                entry[system] = row
                entry[f"{system}_ratio"], entry[f"{system}_min_ratio"] = _ratios(row, peer)
            out.append(entry)
    return out


def _ratio_cell(median: float | None, minima: float | None) -> str:
    if median is None:
        return "—"
    return f"{median:.2f} (minima {minima:.2f})" if minima is not None else f"{median:.2f}"


def _compare_table(rows: Sequence[Row]) -> str:
    header = ["workload", "kernel", "serial e2e", THREADS, f"{THREADS}/serial", "ThreadPool"]
    header += [f"ThreadPool/{THREADS}", "SharedPool", f"SharedPool/{THREADS}"]
    lines = []
    for e in compare_threads(rows):
        peer, serial = e["peer"], e["serial"]
        lines.append(
            [
                f"{e['workload']} {e['label']}",
                KERNEL_TEXT[e["workload"]],
                fmt_time(serial.median if serial else None),
                fmt_time(peer.median),
                _ratio(peer.median, serial.median if serial else None),
                fmt_time(e["threadpool"].median if e["threadpool"] else None),
                _ratio_cell(e["threadpool_ratio"], e["threadpool_min_ratio"]),
                fmt_time(e["shmpool"].median if e["shmpool"] else None),
                _ratio_cell(e["shmpool_ratio"], e["shmpool_min_ratio"]),
            ]
        )
    return _table(header, lines)


COMPARE_TEXT = f"""One map from plain NumPy arrays (not pool-allocated) to the result in the caller: a fresh
`np.empty` output, then the kernel over the same 8 chunks (`e2e-plain8` rows) in
`{THREADS}` (a bare `ThreadPoolExecutor`, the kernel on slices with `out=`), `shmpool.ThreadPool`
and `SharedPool` (which stages plain arrays through shared memory). Medians of the same run;
the ratio of the minima in parentheses. Below 1 is faster than `{THREADS}`. The issue's target:
ThreadPool/{THREADS} ≤ {COMPARE_TARGET:.2f} for the GIL-releasing kernel; with the GIL held,
threads cannot run in parallel and SharedPool should beat both thread pools."""


# ---- targets --------------------------------------------------------------------------------


def _find(
    rows: Sequence[Row], workload: str, system: str, variant: str, size: int | None = None
) -> Row | None:
    for r in rows:
        if (
            r.workload == workload
            and r.system == system
            and r.variant == variant
            and (size is None or r.size == size)
        ):
            return r if (r.times or r.metrics) else None
    return None


def targets(rows: Sequence[Row], workers: int) -> list[dict[str, Any]]:
    """The issue's targets for shmpool, each with the measured value and pass/miss."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, limit: float, higher_is_better: bool, shown: str) -> None:
        if measured is None:
            out.append({"target": name, "measured": "not measured", "result": "n/a", "value": None})
            return
        ok = measured >= limit if higher_is_better else measured <= limit
        out.append(
            {"target": name, "measured": shown, "result": "pass" if ok else "**MISS**", "value": measured}
        )

    suffix = "" if workers == 2 else f" (run with {workers} workers; the target assumes 2)"
    for variant, what in (("empty", "empty kernel"), ("default", "trivial kernel")):
        r = _find(rows, "W1", "shmpool", variant)
        rate = 1 / r.per_item if r is not None and r.per_item else None
        add(f"W1 ≥ 1,000,000 chunks/s, {what}{suffix}", rate, 1e6, True, f"{fmt_rate(rate)} chunks/s")
    for workload in ("W2", "W3"):
        for r in [
            r for r in rows if r.workload == workload and r.system == "shmpool" and r.variant == "steady"
        ]:
            ideal = reference(rows, r, "ideal")
            ratio = r.median / ideal.median if (ideal and ideal.median and r.median) else None
            shown = ""
            if ratio and ideal:
                shown = (
                    f"{ratio:.2f}x (medians {fmt_time(r.median)} vs {fmt_time(ideal.median)}; "
                    f"minima {fmt_time(min(r.times))} vs {fmt_time(min(ideal.times))})"
                )
            limit = 1.15 if workload == "W2" else 1.10  # issue 14: against the best chunking
            add(
                f"{workload} {r.label} steady ≤ {limit:.2f}x ideal-parallel bound", ratio, limit, False, shown
            )
    w2_compared = [e for e in compare_threads(rows) if e["workload"] == "W2"]
    for e in w2_compared or [None]:
        name = (
            f"W2 {e['label'] if e else '128 MiB'} e2e over plain arrays, 8 chunks: ThreadPool ≤ "
            f"{COMPARE_TARGET:.2f}x a bare ThreadPoolExecutor over the same slices"
        )
        ratio = e["threadpool_ratio"] if e else None
        shown = ""
        if e and ratio is not None:
            tp, peer = e["threadpool"], e["peer"]
            shown = (
                f"{ratio:.2f}x (medians {fmt_time(tp.median)} vs {fmt_time(peer.median)}; "
                f"minima {fmt_time(min(tp.times))} vs {fmt_time(min(peer.times))})"
            )
        add(name, ratio, COMPARE_TARGET, False, shown)
    for method, limit in (("fork", 0.030), ("forkserver", 0.150), ("spawn", 0.150)):
        r = _find(rows, "W4", "shmpool", method)
        m = r.median if r else None
        add(f"W4 {method} start + map + shutdown ≤ {limit * 1e3:.0f} ms", m, limit, False, fmt_time(m))
    r = _find(rows, "W5", "shmpool", "steady")
    s = w5_summary(r) if r else {}
    for key, what in (("pss_growth", "PSS"), ("tmpfs_growth", "tmpfs-aware")):
        v = s.get(key)
        add(
            f"W5 growth during the call ≤ 0.02x ({what}, steady)",
            v,
            0.02,
            False,
            f"{v:.3f}x" if v is not None else "",
        )
    r = _find(rows, "W6", "shmpool", "default")
    per = r.per_item if r else None
    add("W6 ≤ 150 µs per map", per, 150e-6, False, f"{per * 1e6:.1f} µs" if per else "")
    for variant in ("default", "auto"):
        mine = _find(rows, "W7", "shmpool", variant)
        for peer in ("mpire", "joblib"):
            theirs = _find(rows, "W7", peer, "default")
            ratio = None
            if mine and theirs and mine.per_item and theirs.per_item:
                ratio = theirs.per_item / mine.per_item
            what = "chunksize=1" if variant == "default" else 'chunksize="auto"'
            add(
                f"W7 ≥ 3x {peer}'s items/s (shmpool {what})",
                ratio,
                3.0,
                True,
                f"{ratio:.2f}x" if ratio else "",
            )
    return out


# ---- the whole report -----------------------------------------------------------------------


def render(meta: dict[str, Any], rows: Sequence[Row], notes: Sequence[str]) -> str:
    """The full markdown report."""
    parts = [f"# shmpool benchmark ({meta['mode']})", ""]
    parts.append(
        f"Machine: {meta['cpu']}, {meta['cpus']} usable CPUs, {fmt_bytes(meta['mem_total'])} RAM, "
        f"/dev/shm {fmt_bytes(meta['shm_total'])}, kernel {meta['kernel']}, THP anon [{meta['thp']}] "
        f"shmem [{meta['thp_shmem']}]. Python {meta['python']}. Workers: {meta['workers']}. "
        f"Started {meta['started']}, took {meta['duration_s']:.0f} s (1-min load average "
        f"{meta.get('loadavg_start', 0):.2f} before, {meta.get('loadavg_end', 0):.2f} after). "
        f"Repetitions: {meta['reps']} timed "
        f"after {meta['warmup']} warm-up, systems alternating in rotating order."
    )
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))
    if versions:
        parts += ["", f"Versions: {versions}."]
    copy = [r for r in rows if r.workload == "W2" and r.system == "memcpy" and r.times]
    if copy:
        text = "; ".join(
            f"{r.label} {r.variant}: {r.nbytes / r.median / 1e9:.1f} GB/s" for r in copy if r.median
        )
        parts += [
            "",
            f"**memcpy reference** (np.copyto, one thread; steady = into a pre-faulted buffer, e2e = into a fresh np.empty): {text}.",
        ]
    parts += ["", "## Targets", ""]
    parts.append(
        _table(
            ["target", "measured", "result"],
            [[t["target"], t["measured"], t["result"]] for t in targets(rows, meta["workers"])],
        )
    )
    sections: list[tuple[str, str]] = []
    if compare_threads(rows):
        sections.append(
            (
                "Threads vs processes: e2e over plain arrays, 8 chunks",
                COMPARE_TEXT + "\n\n" + _compare_table(rows),
            )
        )
    if _shown(rows, "W1"):
        sections.append(
            (
                "W1 dispatch: one-row chunks (items for systems that map over items)",
                _w1_w7(rows, "W1", "chunks"),
            )
        )
    if _shown(rows, "W2"):
        for size in sorted({r.size for r in _shown(rows, "W2")}):
            label = next(r.label for r in _shown(rows, "W2", size))
            sections.append(
                (f"W2 memory-bound, out = sqrt(x) * 2 + 1, {label} float64", _array_table(rows, "W2", size))
            )
    if _shown(rows, "W3"):
        for size in sorted({r.size for r in _shown(rows, "W3")}):
            label = next(r.label for r in _shown(rows, "W3", size))
            sections.append(
                (f"W3 GIL-bound, pure-Python running max per row, {label}", _array_table(rows, "W3", size))
            )
    if _shown(rows, "W4"):
        sections.append(("W4 pool start-up + one trivial map + shutdown", _w4_table(rows)))
    if _shown(rows, "W5"):
        label = next(r.label for r in _shown(rows, "W5"))
        sections.append((f"W5 memory during W2 at {label} (multiples of the array size)", _w5_table(rows)))
    if _shown(rows, "W6"):
        sections.append(
            ("W6 per-map overhead: back-to-back maps of 2 chunks over a 32 KiB array", _w6_table(rows))
        )
    if _shown(rows, "W7"):
        sections.append(("W7 batch: imap over small items", _w1_w7(rows, "W7", "items")))
    for title, table in sections:
        parts += ["", f"## {title}", "", table]
    parts += ["", "## Columns", "", COLUMNS]
    if notes:
        parts += ["", "## Notes", ""]
        parts.extend(f"- {n}" for n in notes)
    return "\n".join(parts) + "\n"


COLUMNS = """\
- **median**, **min - max**: over the timed repetitions (one repetition = all items, all maps, or one call).
- **t/serial**, **t/shmpool**, **t/cf_tpe**: this row's median time (per item for W1 and W7, per map for W6)
  divided by the serial (shmpool, bare thread pool) row of the same workload, size and variant (e2e-* rows
  compare with e2e, W4 with the same start method, else forkserver for shmpool and threads for cf_tpe).
  Below 1 is faster than the reference.
- **t/ideal**: steady-state median divided by the ideal-parallel bound measured in the same run: N processes,
  each with a private, pre-faulted 1/N of the data, start together and run the same kernel; the bound is the
  time from the first start to the last finish of the fastest of several chunkings (the share whole, pieces of
  4 MiB, 1 MiB and 256 KiB, and the systems' chunk length).
- **GB/s in**: input bytes divided by the median.
- **e2e**: from a plain NumPy array to the result in the caller (for shmpool: `asarray` + `empty_like` + `map`;
  **e2e-staged**: `map` over the plain arrays, staged by shmpool). **e2e-plain8** (cf_tpe, ThreadPool,
  shmpool): a fresh `np.empty` output and one map over the plain input in 8 chunks, whatever the worker
  count (the threads-vs-processes comparison). **steady**: input and output already where the system wants
  them (shared, memmapped, persisted, or for the thread pools a reused pre-faulted output) and reused; only
  the map is timed.
- **chunks**: chunks per map; every system and the ideal bound use shmpool's automatic chunk length (8 in
  e2e-plain8 rows).
- W4 **threads**: a new thread pool (cf_tpe: `ThreadPoolExecutor`; ThreadPool), one map, shutdown.
- W1 **default**: the library's default batching; **1/msg**: one task per message; shmpool **empty**: an
  empty kernel (pure dispatch; checked by counting the chunks that ran).
- W7 **default**: each library's default batching (shmpool: `imap`'s `chunksize=1`); shmpool **auto**:
  `chunksize="auto"`; shmpool **batched**:
  `chunksize` = items / (4 x workers), the rule `multiprocessing.Pool.map` uses.
- **n** (W1, W7 items, W6 maps): slow systems run fewer, calibrated to about the repetition target.
- W5: Σ PSS over the host process and all its descendants, sampled every few ms. **peak - idle**: peak minus
  the sum before the input existed (the system running); the input itself counts 1.0x. **growth in call**:
  peak minus the sum just before the call (input, and for steady the shared copies, already made; steady
  rows are measured on the 4th call). PSS sums are read process by process, so pages being mapped while
  sampling can count twice: a small PSS growth with zero tmpfs-aware growth is that artifact.
  **tmpfs-aware**: Σ (Pss_Anon + Pss_File) + /dev/shm used, which counts tmpfs pages nobody maps;
  /dev/shm is system-wide, so only its differences mean anything. **MemAvailable drop**: system-wide.
- **check**: every repetition's result compared with serial NumPy (`np.allclose`); a mismatch is
  **MISMATCH** here and listed in the notes.
"""
