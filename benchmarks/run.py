#!/usr/bin/env python3
"""Benchmark shmpool against serial NumPy and its peers; print a markdown report.

    python benchmarks/run.py --quick [--workers N] [--json FILE] [--md FILE]
                             [--workloads W1,W2] [--systems serial,shmpool,joblib]

Each system runs in a host process of its own (``host.py``), all children of this driver.
For every workload the driver calibrates, warms up, then runs repetitions in rounds: each
round runs every row (system and variant) once, in an order that rotates from round to
round, so slow drifts of a noisy machine hit every system alike. Every result is checked
against serial NumPy. Peers that are not installed are skipped with a note.

Modes: ``--smoke`` (tiny sizes, one repetition, stdlib peers and shmpool's ThreadPool
where it exists: what the test suite runs), ``--quick`` (W2 at 128 MiB, 5 repetitions), ``--full`` (W2 at 128 MiB and 1 GiB, 7
repetitions, 3 sampled W5 runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
# Workers of every system (spawned, forkserver'd, dask's nannies) must import the kernels.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)

from benchmarks import kernels, memsample  # noqa: E402
from benchmarks.adapters import ADAPTERS  # noqa: E402
from benchmarks.host import host_main  # noqa: E402
from benchmarks.report import Row, fmt_bytes, render  # noqa: E402

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
# The order workloads run in: the small ones first, the memory-hungry ones last.
RUN_ORDER = ("W1", "W6", "W7", "W3", "W2", "W4", "W5")
STDLIB_SYSTEMS = (
    "serial",
    "memcpy",
    "ideal",
    "shmpool",
    "threadpool",
    "cf_tpe",
    "mp_pool",
    "cf_ppe",
    "shm_hand",
)
# W2 variants that W5 does not measure again: e2e-plain8 is e2e in 8 chunks, the same memory.
W5_SKIP_VARIANTS = ("e2e-plain8",)

# Rough peak memory of one host during W2, in multiples of the array: input, steady-state
# copies, a result and temporaries. Used to split W2 into groups that fit in memory.
FOOTPRINT = {"ideal": 2.5, "memcpy": 3.0, "serial": 4.0, "dask": 7.0}
DEFAULT_FOOTPRINT = 5.0
MEMORY_BUDGET = 0.6  # of MemAvailable at start, for all hosts' W2 data together

# multiprocessing's helpers of this driver (spawning the hosts starts a resource tracker);
# they end with the driver, so they are not leaks.
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

# After the run, how long leftover /dev/shm entries and processes get to go away.
LEAK_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Mode:
    """Sizes and repetition counts of one mode."""

    name: str
    reps: int
    warmup: int
    w1_items: int
    w2_sizes: tuple[int, ...]
    w3_rows: int
    w5_size: int
    w5_runs: int
    w6_maps: int
    w7_items: int
    rep_target_s: float | None  # calibrate W1/W6/W7 counts to about this per repetition
    timeout_s: float  # for any one command to a host
    systems: tuple[str, ...]


MODES = {
    "smoke": Mode("smoke", 1, 0, 200, (1 << 17,), 64, 1 << 20, 1, 20, 500, None, 60, STDLIB_SYSTEMS),
    "quick": Mode(
        "quick", 5, 1, 20_000, (1 << 24,), 4096, 1 << 26, 1, 2000, 100_000, 1.0, 600, tuple(ADAPTERS)
    ),
    "full": Mode(
        "full", 7, 1, 20_000, (1 << 24, 1 << 27), 4096, 1 << 26, 3, 2000, 100_000, 1.5, 600, tuple(ADAPTERS)
    ),
}
# Calibration sizes (items or maps) for the per-item workloads.
CALIBRATE = {"W1": 1000, "W6": 100, "W7": 2000}


def log(text: str) -> None:
    """Progress, on stderr (stdout carries the report)."""
    print(text, file=sys.stderr, flush=True)


class HostError(RuntimeError):
    """A host died or stopped answering."""


class Host:
    """The driver's handle on one system's host process."""

    def __init__(self, name: str, workers: int, timeout: float):
        self.name = name
        self.timeout = timeout
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=host_main, args=(child, name, workers), name=f"bench-{name}")
        self.proc.start()
        child.close()
        self.alive = True
        self.status = "starting"
        self.note = ""
        self.pid = self.proc.pid or 0
        self.variants: dict[str, list[str]] = {}
        self.versions: dict[str, str] = {}
        self.created: set[str] = set()  # /dev/shm names the system made itself

    def wait_ready(self) -> None:
        """Wait for the host's setup to finish."""
        try:
            reply = self._recv()
        except HostError as exc:
            self.status, self.note = "error", str(exc)
            self.kill()
            return
        self.status = reply["status"]
        self.note = reply.get("note", "")
        if self.status != "ready":
            self.alive = False
            self.proc.join(timeout=10)
            return
        self.variants = reply["variants"]
        self.versions = reply["versions"]
        if reply.get("warnings"):
            self.note = "; ".join(reply["warnings"])

    def _recv(self) -> Any:
        if not self.conn.poll(self.timeout):
            raise HostError(f"{self.name}: no answer within {self.timeout:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise HostError(f"{self.name}: host process died (exit code {self.proc.exitcode})") from exc

    def ask(self, message: dict[str, Any], on_sample: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Send a command and return its reply, answering sample requests on the way."""
        if not self.alive:
            return {"status": "error", "note": f"{self.name}: host is gone"}
        try:
            self.conn.send(message)
            while True:
                reply = self._recv()
                if isinstance(reply, tuple) and reply[0] == "sample":
                    if on_sample is not None:
                        on_sample(reply[1])
                    self.conn.send("go")
                    continue
                return dict(reply)
        except (HostError, OSError) as exc:
            self.kill()
            return {"status": "error", "note": str(exc)}

    def stop(self) -> None:
        """Tear the system down and wait for the host to exit."""
        if self.alive:
            try:
                self.conn.send({"cmd": "stop"})
                self.created.update(self._recv().get("created", ()))
            except (HostError, OSError) as exc:
                self.note = f"{self.note}; stop failed: {exc}".strip("; ")
        self.proc.join(timeout=30)
        if self.proc.exitcode is None:
            self.kill()
        self.alive = False

    def kill(self) -> None:
        """Kill the host and everything below it (only ever processes this driver started)."""
        self.alive = False
        if self.proc.exitcode is None and self.pid:
            for pid in reversed(memsample.descendants(self.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.proc.join(timeout=10)


class Driver:
    """Runs the workloads over the hosts and collects rows."""

    def __init__(self, mode: Mode, workers: int, systems: Sequence[str], workloads: Sequence[str]):
        self.mode = mode
        self.workers = workers
        self.systems = list(systems)
        self.workloads = [w for w in RUN_ORDER if w in workloads]
        self.hosts: dict[str, Host] = {}
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.failed_pids: set[int] = set()  # hosts that did not get ready

    # ---- hosts ------------------------------------------------------------------------------

    def start_hosts(self) -> None:
        """Start a host per available system; note the ones that are not installed."""
        for name in self.systems:
            missing = [m for m in ADAPTERS[name].REQUIRES if importlib.util.find_spec(m) is None]
            if missing:
                self.notes.append(
                    f"{name}: skipped, not installed ({', '.join(missing)}); `pip install shmpool[bench]`"
                )
                continue
            log(f"starting {name} ...")
            host = Host(name, self.workers, self.mode.timeout_s)
            host.wait_ready()
            if host.status == "skip":
                # The system cannot run here (threadpool before shmpool.ThreadPool exists).
                self.failed_pids.add(host.pid)
                self.notes.append(f"{name}: left out, {host.note}")
                log(f"{name}: left out, {host.note}")
                continue
            if host.status != "ready":
                self.failed_pids.add(host.pid)
                first = host.note.strip().splitlines()[-1] if host.note.strip() else host.status
                self.notes.append(f"{name}: skipped, setup failed: {first}")
                log(host.note)
                continue
            if host.note:
                self.notes.append(f"{name} setup warnings: {host.note}")
            self.hosts[name] = host

    def stop_hosts(self) -> None:
        """Stop every host."""
        for host in self.hosts.values():
            log(f"stopping {host.name} ...")
            host.stop()

    def versions(self) -> dict[str, str]:
        """Module versions reported by the hosts."""
        found: dict[str, str] = {}
        for host in self.hosts.values():
            found.update({k: v for k, v in host.versions.items() if v != "missing"})
        return found

    def _supports(self, system: str, workload: str) -> list[str]:
        host = self.hosts.get(system)
        return list(host.variants.get(workload, ())) if host is not None else []

    # ---- running rows -----------------------------------------------------------------------

    def _message(self, row: Row, n: int | None = None) -> dict[str, Any]:
        count = row.n if n is None else n
        size = count if row.workload in ("W1", "W7") else row.size
        return {
            "cmd": "run",
            "workload": row.workload,
            "variant": row.variant,
            "size": size,
            "n": count,
            "chunk_len": row.chunk_len,
        }

    def _once(self, row: Row, n: int | None = None) -> dict[str, Any]:
        reply = self.hosts[row.system].ask(self._message(row, n))
        if reply["status"] == "skip":
            row.status, row.note = "skip", reply.get("note", "")
        elif reply["status"] == "error":
            row.status, row.note = "error", reply.get("note", "")
            log(f"ERROR {row.workload} {row.system} {row.variant}:\n{row.note}")
        else:
            if reply.get("problem"):
                row.problems.append(reply["problem"])
                log(f"MISMATCH {row.workload} {row.system} {row.variant}: {reply['problem']}")
            for w in reply.get("warnings", ()):
                if w not in row.warnings:
                    row.warnings.append(w)
            row.info.update(reply.get("info", {}))
        return reply

    def _calibrate(self, rows: list[Row], cap: int) -> None:
        target = self.mode.rep_target_s
        calibration = CALIBRATE[rows[0].workload] if rows else 0
        for row in rows:
            row.n = cap
            if target is None or row.status != "ok":
                continue
            reply = self._once(row, min(calibration, cap))
            if reply["status"] != "ok":
                continue
            rate = min(calibration, cap) / max(reply["t"], 1e-9)
            wanted = float(f"{rate * target:.2g}")  # two significant digits
            row.n = int(max(min(calibration, cap), min(cap, wanted)))

    def _rounds(self, rows: list[Row]) -> None:
        total = self.mode.warmup + self.mode.reps
        for r in range(total):
            live = [row for row in rows if row.status == "ok"]
            if not live:
                return
            shift = r % len(live)
            for row in live[shift:] + live[:shift]:
                if row.status != "ok":
                    continue
                reply = self._once(row)
                if reply["status"] == "ok":
                    (row.warmup if r < self.mode.warmup else row.times).append(reply["t"])
        for row in rows:
            if row.times:
                extra = f" (n={row.n})" if row.workload in ("W1", "W6", "W7") else ""
                median = statistics.median(row.times)
                log(f"{row.workload} {row.label} {row.system} {row.variant}{extra}: {median * 1e3:.3f} ms")

    def _rows_for(self, workload: str, **fields: Any) -> list[Row]:
        rows = []
        for system in self.systems:
            if system not in self.hosts:
                continue
            for variant in self._supports(system, workload):
                row = Row(workload, system, variant, **fields)
                rows.append(row)
                self.rows.append(row)
        return rows

    def _release(self, workload: str, systems: Sequence[str]) -> None:
        for system in systems:
            if system in self.hosts:
                self.hosts[system].ask({"cmd": "release", "workload": workload})

    # ---- workloads --------------------------------------------------------------------------

    def run(self) -> None:
        """Every selected workload, in ``RUN_ORDER``."""
        for workload in self.workloads:
            log(f"=== {workload}")
            getattr(self, f"_{workload.lower()}")()

    def _w1(self) -> None:
        rows = self._rows_for("W1", size=self.mode.w1_items, label=f"{self.mode.w1_items} items")
        self._calibrate(rows, self.mode.w1_items)
        self._rounds(rows)
        self._release("W1", list(self.hosts))

    def _w6(self) -> None:
        rows = self._rows_for("W6", size=kernels.W6_LENGTH, label="32 KiB", chunk_len=kernels.W6_LENGTH // 2)
        self._calibrate(rows, self.mode.w6_maps)
        self._rounds(rows)
        self._release("W6", list(self.hosts))

    def _w7(self) -> None:
        rows = self._rows_for("W7", size=self.mode.w7_items, label=f"{self.mode.w7_items} items")
        self._calibrate(rows, self.mode.w7_items)
        self._rounds(rows)
        self._release("W7", list(self.hosts))

    def _w3(self) -> None:
        rows_count = self.mode.w3_rows
        row_bytes = kernels.W3_COLS * 8
        chunk_len = kernels.auto_chunk_len(rows_count, 2 * row_bytes, self.workers)
        label = f"({rows_count}, {kernels.W3_COLS}) float64"
        rows = self._rows_for(
            "W3", size=rows_count, label=label, chunk_len=chunk_len, nbytes=rows_count * row_bytes
        )
        self._rounds(rows)
        self._release("W3", list(self.hosts))

    def _w2(self) -> None:
        for size in self.mode.w2_sizes:
            nbytes = size * 8
            chunk_len = kernels.auto_chunk_len(size, 16, self.workers)
            rows = self._rows_for(
                "W2", size=size, label=fmt_bytes(nbytes), chunk_len=chunk_len, nbytes=nbytes
            )
            groups = self._memory_groups(sorted({r.system for r in rows}, key=self.systems.index), nbytes)
            if len(groups) > 1:
                self.notes.append(
                    f"W2 {fmt_bytes(nbytes)}: too big for every system at once, run in {len(groups)} groups "
                    f"({'; '.join(', '.join(g) for g in groups)}); serial and shmpool ran in every group and "
                    "their rows pool all of their repetitions."
                )
            for group in groups:
                self._rounds([r for r in rows if r.system in group])
                self._release("W2", group)

    def _memory_groups(self, systems: list[str], nbytes: int) -> list[list[str]]:
        budget = MEMORY_BUDGET * memsample.mem_available()
        need = {s: FOOTPRINT.get(s, DEFAULT_FOOTPRINT) * nbytes for s in systems}
        if sum(need.values()) <= budget:
            return [systems]
        references = [s for s in ("serial", "shmpool") if s in systems]
        others = [s for s in systems if s not in references]
        base = sum(need[s] for s in references)
        groups: list[list[str]] = []
        current: list[str] = []
        for system in others:
            if current and base + sum(need[s] for s in current) + need[system] > budget:
                groups.append(references + current)
                current = []
            current.append(system)
        if current or not groups:
            groups.append(references + current)
        return groups

    def _w4(self) -> None:
        rows = self._rows_for("W4", size=2 * self.workers, label="")
        self._rounds(rows)
        self._release("W4", list(self.hosts))

    def _w5(self) -> None:
        size = self.mode.w5_size
        nbytes = size * 8
        chunk_len = kernels.auto_chunk_len(size, 16, self.workers)
        for system in self.systems:
            if system == "ideal" or system not in self.hosts:
                continue
            variants = [v for v in self._supports(system, "W2") if v not in W5_SKIP_VARIANTS]
            if not variants:
                continue
            self.hosts[system].ask({"cmd": "warm"})
            for variant in variants:
                row = Row("W5", system, variant, size, fmt_bytes(nbytes), size, chunk_len, nbytes)
                self.rows.append(row)
                for _ in range(self.mode.w5_runs):
                    self._w5_once(row)
                    if row.status != "ok":
                        break
                if row.metrics:
                    m = row.metrics[-1]
                    log(
                        f"W5 {system} {variant}: growth {m['pss_growth']:.3f}x, over idle {m['pss_over_idle']:.2f}x"
                    )

    def _w5_once(self, row: Row) -> None:
        host = self.hosts[row.system]
        seen: dict[str, memsample.Snapshot] = {}
        sampler: list[memsample.PeakSampler] = []

        def on_sample(tag: str) -> None:
            if tag == "idle":
                time.sleep(0.2)  # let the previous run's memory go
                seen["idle"] = memsample.snapshot(host.pid)
            elif tag == "precall":
                seen["precall"] = memsample.snapshot(host.pid)
                sampler.append(memsample.PeakSampler(host.pid).start())
            elif tag == "done" and sampler:
                peaks.append(sampler.pop().stop())

        peaks: list[memsample.Peak] = []
        try:
            reply = host.ask(
                {"cmd": "w5", "variant": row.variant, "size": row.size, "chunk_len": row.chunk_len},
                on_sample=on_sample,
            )
        finally:
            if sampler:  # the call failed between its start and its end
                sampler.pop().stop()
        peak = peaks[0] if peaks else None
        if reply["status"] != "ok":
            row.status, row.note = reply["status"], reply.get("note", "")
            return
        if reply.get("problem"):
            row.problems.append(reply["problem"])
        row.times.append(reply["t"])
        if peak is None or "idle" not in seen or "precall" not in seen:
            row.status, row.note = "error", "memory was not sampled"
            return
        idle, pre, a = seen["idle"], seen["precall"], row.nbytes
        row.metrics.append(
            {
                "peak_pss": peak.pss / a,
                "pss_over_idle": (peak.pss - idle.pss) / a,
                "pss_growth": (peak.pss - pre.pss) / a,
                "tmpfs_over_idle": (peak.tmpfs_aware - idle.tmpfs_aware) / a,
                "tmpfs_growth": (peak.tmpfs_aware - pre.tmpfs_aware) / a,
                "memavail_drop": (idle.mem_available - peak.min_mem_available) / a,
                "shm_delta_bytes": float(peak.shm_used - idle.shm_used),
                "procs": float(peak.procs),
                "samples": float(peak.samples),
            }
        )


# ---- leaks, machine, main -------------------------------------------------------------------


def shm_listing() -> set[str]:
    """Entries in /dev/shm."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# Entries named after the process that made them: shmpool blocks, joblib's memmap folders.
_PID_NAMED = re.compile(r"^(?:shmpool|joblib_memmapping_folder)_(\d+)_")


def check_leaks(shm_before: set[str], host_pids: set[int], created: set[str]) -> tuple[list[str], list[str]]:
    """What the run left behind: (leaks, other notes). Leaks are /dev/shm entries that
    this run's hosts made (by name: shmpool blocks and joblib folders carry their creator's
    PID, and the adapters list what they made themselves) and processes below this driver
    (which are killed). New entries of unknown origin (another program may be running)
    are only noted; so are multiprocessing's unnamed-owner semaphores (``sem.mp-*``)."""

    def ours(name: str) -> bool:
        match = _PID_NAMED.match(name)
        return name in created or (match is not None and int(match.group(1)) in host_pids)

    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        new = shm_listing() - shm_before
        leaked = sorted(n for n in new if ours(n))
        stray = [p for p in memsample.descendants(os.getpid()) if p != os.getpid()]
        stray = [p for p in stray if not _is_zombie(p) and not any(h in _cmdline(p) for h in _HELPERS)]
        if (not new and not stray) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = []
    if leaked:
        problems.append(f"**LEAK**: /dev/shm entries left behind: {', '.join(leaked)}")
    for pid in stray:
        problems.append(f"**LEAK**: process left running: {pid} {_cmdline(pid)} (killed)")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    unknown = sorted(n for n in new if not ours(n))
    others = [f"new /dev/shm entries of unknown origin at the end: {', '.join(unknown)}"] if unknown else []
    return problems, others


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2] == "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200].strip()
    except OSError:
        return "?"


def _read(path: str, default: str = "?") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def machine(workers: int, mode: Mode) -> dict[str, Any]:
    """What the report's header says about the machine."""
    cpu = "?"
    for line in _read("/proc/cpuinfo", "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_total = 0
    for line in _read("/proc/meminfo", "").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024

    def selected(text: str) -> str:
        return text[text.find("[") + 1 : text.find("]")] if "[" in text else text

    st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    return {
        "mode": mode.name,
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total": mem_total,
        "shm_total": st.f_blocks * st.f_frsize if st else 0,
        "kernel": platform.release(),
        "thp": selected(_read("/sys/kernel/mm/transparent_hugepage/enabled")),
        "thp_shmem": selected(_read("/sys/kernel/mm/transparent_hugepage/shmem_enabled")),
        "python": platform.python_version(),
        "workers": workers,
        "reps": mode.reps,
        "warmup": mode.warmup,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": os.getloadavg()[0],
    }


def _parse_list(text: str | None, allowed: Sequence[str], what: str) -> list[str] | None:
    if text is None:
        return None
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    for name in MODES:
        group.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=f"{name} mode")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: usable CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement to this JSON file")
    parser.add_argument("--md", type=Path, default=None, help="also write the markdown report to this file")
    parser.add_argument("--workloads", default=None, help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--systems", default=None, help=f"comma-separated subset of {','.join(ADAPTERS)}")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (overrides the mode)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 if every result matched and nothing leaked."""
    args = parse_args(argv)
    mode = MODES[args.mode]
    if args.reps is not None:
        mode = dataclasses.replace(mode, reps=max(1, args.reps))
    workers = args.workers or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    systems = _parse_list(args.systems, tuple(ADAPTERS), "systems") or list(mode.systems)
    workloads = _parse_list(args.workloads, WORKLOADS, "workloads") or list(WORKLOADS)
    meta = machine(workers, mode)
    shm_before = shm_listing()
    started = time.perf_counter()
    driver = Driver(mode, workers, systems, workloads)
    try:
        driver.start_hosts()
        driver.run()
    finally:
        driver.stop_hosts()
    notes = list(driver.notes)
    created = set().union(*(h.created for h in driver.hosts.values()))
    leaks, others = check_leaks(
        shm_before, {h.pid for h in driver.hosts.values()} | driver.failed_pids, created
    )
    notes += leaks + others
    warned: dict[tuple[str, str], list[str]] = {}
    for row in driver.rows:
        where = f"{row.workload} {row.label} {row.system} {row.variant}".replace("  ", " ")
        if row.status == "error":
            last = row.note.strip().splitlines()[-1] if row.note.strip() else "?"
            notes.append(f"**ERROR** {where}: {last}")
        for problem in dict.fromkeys(row.problems):
            notes.append(f"**MISMATCH** {where}: {problem}")
        for w in row.warnings:
            key = (f"{row.workload} {row.label} {row.system}", " ".join(w.split())[:200])
            warned.setdefault(key, []).append(row.variant)
    for (where, text), variants in warned.items():
        notes.append(f"warning in {where} ({', '.join(dict.fromkeys(variants))}): {text}")
    meta["duration_s"] = time.perf_counter() - started
    meta["loadavg_end"] = os.getloadavg()[0]
    meta["versions"] = driver.versions()
    report = render(meta, driver.rows, notes)
    print(report)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in driver.rows], "notes": notes}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    failed = leaks or any(r.problems or r.status == "error" for r in driver.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
