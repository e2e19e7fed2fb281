"""A host process: one system, set up once, running what the driver asks for.

Every system lives in a host process of its own, spawned by the driver (``run.py``), so
that no system's threads or children disturb another's (a fork pool forked next to a dask
client's threads could deadlock), and so that W5 can measure exactly one system's process
tree. The driver talks to one host at a time, so the hosts take turns: while one runs, the
others wait idle on their pipes.

Messages are dicts with a ``cmd``; every command gets one reply dict. During ``w5`` the
host also sends ``("sample", tag)`` at three points (idle, just before the call, just after
it) and waits for ``"go"``, so the driver can read the tree's memory at each point.
"""

from __future__ import annotations

import gc
import os
import traceback
import warnings
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import kernels
from .adapters import ADAPTERS, Adapter, Case, SelfChecked, Unsupported

__all__ = ["host_main"]

# W5 steady: calls made before the measured one. Steady state means the arrays were used
# before, as in W2's steady rows (a warm-up and 5 repetitions). Workers map a shared page
# the first time their chunks touch it, and a PSS sum read process by process while pages
# are being mapped counts some of them twice, so a first-ever call inflates "growth".
STEADY_WARM_CALLS = 3


def host_main(conn: Connection, system: str, workers: int) -> None:
    """Entry point of the host for ``system``: set it up, then serve the pipe."""
    adapter = ADAPTERS[system]()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adapter.setup(workers)
    except Unsupported as exc:
        conn.send({"status": "skip", "note": str(exc)})
        return
    except ImportError as exc:
        conn.send({"status": "skip", "note": f"not installed ({exc})"})
        return
    except Exception:
        conn.send({"status": "error", "note": traceback.format_exc()})
        return
    conn.send(
        {
            "status": "ready",
            "pid": os.getpid(),
            "variants": {w: list(v) for w, v in adapter.VARIANTS.items()},
            "versions": adapter.versions(),
            "warnings": _describe(caught),
        }
    )
    try:
        _Host(adapter, workers, conn).serve()
    finally:
        adapter.teardown()
        conn.send({"status": "stopped", "created": sorted(adapter.created)})


def _describe(caught: list[warnings.WarningMessage]) -> list[str]:
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message)[:240]}"
        if text not in seen:
            seen.append(text)
    return seen


class _Host:
    def __init__(self, adapter: Adapter, workers: int, conn: Connection):
        self.adapter = adapter
        self.workers = workers
        self.conn = conn
        self.cases: dict[tuple[Any, ...], Case] = {}
        self.inputs: dict[tuple[str, int], np.ndarray] = {}

    def serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except EOFError:
                return
            command = message["cmd"]
            if command == "stop":
                self._release_all()
                return
            try:
                if command == "run":
                    reply = self._run(message)
                elif command == "release":
                    self._release(message["workload"])
                    reply = {"status": "ok"}
                elif command == "warm":
                    self.adapter.warm()
                    reply = {"status": "ok"}
                elif command == "w5":
                    reply = self._w5(message)
                else:
                    reply = {"status": "error", "note": f"unknown command {command!r}"}
            except Exception:
                reply = {"status": "error", "note": traceback.format_exc()}
            self.conn.send(reply)

    # ---- cases ------------------------------------------------------------------------------

    def _input(self, workload: str, size: int) -> np.ndarray:
        key = (workload, size)
        if key not in self.inputs:
            self.inputs[key] = kernels.make_input(workload, size)
        return self.inputs[key]

    def _case(self, message: dict[str, Any]) -> Case:
        workload, variant, size = message["workload"], message["variant"], message["size"]
        n, chunk_len = message.get("n", size), message.get("chunk_len", 0)
        key = (workload, variant, size, n, chunk_len)
        if key not in self.cases:
            self.cases[key] = Case(
                workload, variant, size, n, self.workers, chunk_len, lambda: self._input(workload, size)
            )
        return self.cases[key]

    def _release(self, workload: str) -> None:
        for key in [k for k in self.cases if k[0] == workload]:
            self.cases.pop(key).release()
        for key in [k for k in self.inputs if k[0] == workload]:
            del self.inputs[key]
        gc.collect()

    def _release_all(self) -> None:
        for workload in {k[0] for k in self.cases}:
            self._release(workload)

    # ---- one repetition ---------------------------------------------------------------------

    def _call(self, case: Case, on_done: Any = None) -> dict[str, Any]:
        """Run the case once, check its result, free what the repetition made."""
        method = getattr(self.adapter, ("w2" if case.workload == "W5" else case.workload).lower())
        case.elapsed = None
        case.info = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", ResourceWarning)  # peers' unclosed sockets: noise
            try:
                result = method(case.variant, case)
            except Unsupported as exc:
                case.finish_repetition()
                return {"status": "skip", "note": str(exc)}
            if on_done is not None:
                on_done()
        if case.elapsed is None:
            return {"status": "error", "note": f"{self.adapter.name} {case.workload} did not time its call"}
        if isinstance(result, SelfChecked):
            problem = result.problem
        else:
            problem = kernels.check(case.workload, result, case.x, copy=self.adapter.COPIES_INPUT)
        del result
        case.finish_repetition()
        return {
            "status": "ok",
            "t": case.elapsed,
            "problem": problem,
            "info": dict(case.info),
            "warnings": _describe(caught),
        }

    def _run(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._case(message))

    # ---- W5: the driver samples memory around one call --------------------------------------

    def _sample(self, tag: str) -> None:
        self.conn.send(("sample", tag))
        go = self.conn.recv()
        if go != "go":
            raise RuntimeError(f"expected 'go' from the driver, got {go!r}")

    def _w5(self, message: dict[str, Any]) -> dict[str, Any]:
        self._release_all()
        gc.collect()
        self._sample("idle")
        size, variant = message["size"], message["variant"]
        x = kernels.make_input("W5", size)
        case = Case("W5", variant, size, size, self.workers, message["chunk_len"], lambda: x)
        try:
            for _ in range(STEADY_WARM_CALLS if variant == "steady" else 0):
                warm = self._call(case)
                if warm["status"] != "ok" or warm["problem"]:
                    return warm
            case.hook = lambda: self._sample("precall")
            return self._call(case, on_done=lambda: self._sample("done"))
        finally:
            case.release()
            gc.collect()
