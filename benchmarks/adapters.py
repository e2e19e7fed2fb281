"""One adapter per system, all with the same small interface.

An adapter is set up once in its own host process (``setup(workers)``), runs workloads
when asked, and is torn down at the end (``teardown()``). Each workload is one method,
``w1(variant, case)`` ... ``w7(variant, case)``, which returns the result for checking
against serial NumPy. It times only the work the workload defines, inside
``with case.timed():``; preparing steady-state data, and freeing results afterwards
(``case.after_check``), stay outside. A system without a workload or variant raises
:class:`Unsupported`, which the table shows as "n/a".

W5 (memory) reuses ``w2``: the host samples the process tree around the same call.

Systems (``ADAPTERS``): serial NumPy; memcpy (the bandwidth reference); ideal (the
ideal-parallel bound); shmpool; threadpool (``shmpool.ThreadPool``, left out until it
exists); daskpool (shmpool's ``DaskPool``); cf_tpe (a bare ``ThreadPoolExecutor`` running
the kernel on slices, in place); mp_pool (``multiprocessing.Pool``, pickled chunks); cf_ppe
(``ProcessPoolExecutor``); shm_hand (hand-written ``SharedMemory`` + ``Pool``: attach by
name in each task, write in place); joblib; joblib_memmap (joblib writing into an
``np.memmap`` output); mpire; dask (``dask.distributed`` LocalCluster).

W2 and W3 variant ``e2e-plain8`` (thread peer, ThreadPool, SharedPool): the issue's
threads-vs-processes comparison, a map over the plain input into a fresh ``np.empty``
output in ``kernels.COMPARE_CHUNKS`` (8) chunks, whatever the worker count.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from multiprocessing import shared_memory
from typing import Any, ClassVar

import numpy as np

from . import kernels
from .ideal import IdealBound
from .kernels import poison

__all__ = ["ADAPTERS", "Adapter", "Case", "SelfChecked", "Unsupported"]

# Where joblib_memmap keeps its np.memmap files, like joblib's own automatic memmapping.
MEMMAP_FOLDER = "/dev/shm" if os.path.isdir("/dev/shm") else None
START_METHODS = ("fork", "forkserver", "spawn")
# The threads-vs-processes comparison's variant (W2, W3): plain arrays, 8 chunks, end to end.
PLAIN8 = "e2e-plain8"


class Unsupported(Exception):
    """This system has no such workload or variant (shown as n/a)."""


class SelfChecked:
    """A result that was checked where it was computed (the ideal bound's private shares,
    or an empty kernel that has nothing to compare): ``problem`` is None when it passed."""

    def __init__(self, problem: str | None):
        self.problem = problem


class Case:
    """One row of one workload in one host: its input, what persists between repetitions,
    and the timing of the latest repetition.

    ``size``: elements (W2, W5), rows (W3), items (W1, W4, W7) or the array length (W6).
    ``n``: how many items (W1, W7) or maps (W6) one repetition runs. ``chunk_len``: the
    chunk length every system uses (W2, W3, W5).
    """

    def __init__(
        self,
        workload: str,
        variant: str,
        size: int,
        n: int,
        workers: int,
        chunk_len: int,
        make_input: Callable[[], np.ndarray],
        hook: Callable[[], None] | None = None,
    ):
        self.workload = workload
        self.variant = variant
        self.size = size
        self.n = n
        self.workers = workers
        self.chunk_len = chunk_len
        self.info: dict[str, Any] = {}
        self.elapsed: float | None = None
        self._make_input = make_input
        self._x: np.ndarray | None = None
        self._store: dict[str, Any] = {}
        self._after: list[Callable[[], None]] = []
        self._release: list[Callable[[], None]] = []
        self.hook = hook  # called just before each timed block (W5 samples memory there)

    @property
    def x(self) -> np.ndarray:
        """The input, a plain NumPy array (made on first use)."""
        if self._x is None:
            self._x = self._make_input()
        return self._x

    @property
    def kind(self) -> str:
        """The array workload whose kernels this case runs (W5 runs W2's)."""
        return "W2" if self.workload == "W5" else self.workload

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk along axis 0: the common chunk length, or
        ``COMPARE_CHUNKS`` chunks for the ``e2e-plain8`` variant."""
        return kernels.chunk_bounds(self.x.shape[0], self.variant_chunk_len)

    @property
    def variant_chunk_len(self) -> int:
        """Indices per chunk for this case's variant (see :attr:`bounds`)."""
        if self.variant == PLAIN8:
            return kernels.compare_chunk_len(self.x.shape[0])
        return self.chunk_len

    @property
    def kernels(self) -> tuple[Callable[[np.ndarray, np.ndarray], None], Callable[[np.ndarray], np.ndarray]]:
        """(in-place kernel, returning kernel) of this case's array workload."""
        return kernels.ARRAY_KERNELS[self.kind]

    def cached(self, key: str, factory: Callable[[], Any]) -> Any:
        """``factory()`` the first time, the same object in later repetitions."""
        if key not in self._store:
            self._store[key] = factory()
        return self._store[key]

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Time the block (the repetition's measured part)."""
        if self.hook is not None:
            self.hook()
        start = time.perf_counter()
        yield
        self.elapsed = time.perf_counter() - start

    def record(self, seconds: float) -> None:
        """Set the repetition's time directly (for measurements timed elsewhere)."""
        self.elapsed = seconds

    def after_check(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once this repetition's result has been checked (free it)."""
        self._after.append(fn)

    def at_release(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the workload is over (free the steady-state data)."""
        self._release.append(fn)

    def finish_repetition(self) -> None:
        """Run the after-check callbacks."""
        callbacks, self._after = self._after, []
        for fn in callbacks:
            fn()

    def release(self) -> None:
        """Run the release callbacks (newest first) and drop everything."""
        self.finish_repetition()
        callbacks, self._release = self._release, []
        self._store.clear()
        self._x = None
        for fn in reversed(callbacks):
            fn()


class Adapter:
    """The interface every system implements. ``VARIANTS`` maps each workload the system
    runs to its variants; ``REQUIRES`` names the modules it needs."""

    name: ClassVar[str] = ""
    REQUIRES: ClassVar[tuple[str, ...]] = ()
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {}
    COPIES_INPUT: ClassVar[bool] = False  # memcpy: the result is checked against the input

    workers = 1

    def __init__(self) -> None:
        # Names this system made in /dev/shm itself; the driver checks they are gone at the end.
        self.created: set[str] = set()

    def setup(self, workers: int) -> None:
        """Start the system (its pool, cluster or processes)."""
        self.workers = workers

    def teardown(self) -> None:
        """Stop the system and release everything it made."""

    def warm(self) -> None:
        """Make sure the workers are running (before an idle memory sample)."""

    def versions(self) -> dict[str, str]:
        """Versions of the modules this system uses."""
        found = {}
        for name in ("numpy", *self.REQUIRES):
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = "missing"
        return found

    def w1(self, variant: str, case: Case) -> Any:
        """W1 dispatch: ``case.n`` one-row chunks (or items) through a trivial kernel."""
        raise Unsupported("no W1")

    def w2(self, variant: str, case: Case) -> Any:
        """W2 memory-bound map, ``e2e`` (plain array in, result in the caller) or
        ``steady`` (both arrays already shared, reused across repetitions)."""
        raise Unsupported("no W2")

    def w3(self, variant: str, case: Case) -> Any:
        """W3 GIL-bound map, same variants as W2."""
        raise Unsupported("no W3")

    def w4(self, variant: str, case: Case) -> Any:
        """W4: start a pool with start method ``variant``, one trivial map, shut down."""
        raise Unsupported("no W4")

    def w6(self, variant: str, case: Case) -> Any:
        """W6: ``case.n`` back-to-back maps of 2 chunks over a small array."""
        raise Unsupported("no W6")

    def w7(self, variant: str, case: Case) -> Any:
        """W7: an imap of ``case.n`` small items."""
        raise Unsupported("no W7")


def _items(case: Case) -> list[Any]:
    """The input as Python numbers, for systems that map over items (made untimed)."""
    if case.workload == "W7":
        return case.cached("items", lambda: list(range(case.size)))  # type: ignore[no-any-return]
    return case.cached("items", case.x.tolist)  # type: ignore[no-any-return]


def _halves(case: Case) -> tuple[int, np.ndarray, np.ndarray]:
    half = case.x.shape[0] // 2
    return half, case.x[:half], case.x[half:]


def _reused(case: Case, key: str = "out") -> np.ndarray:
    """A private, pre-faulted output reused by every repetition, poisoned before each."""
    out: np.ndarray = case.cached(key, lambda: np.zeros_like(case.x))
    poison(out)
    return out


# ---- serial, memcpy, ideal ------------------------------------------------------------------


class SerialAdapter(Adapter):
    """Serial NumPy in the caller: the reference for every result and every ratio."""

    name = "serial"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default",),
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W6": ("default",),
        "W7": ("default",),
    }

    def w1(self, variant: str, case: Case) -> Any:
        """The trivial kernel called once per one-row chunk, in a loop."""
        x, out = case.x, _reused(case)
        with case.timed():
            for i in range(x.shape[0]):
                kernels.w1_kernel(x[i : i + 1], out[i : i + 1])
        return out

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: ``np.sqrt(x) * 2 + 1`` as a user writes it; steady: the in-place kernel
        over the same chunks the parallel systems use, into a reused output."""
        return self._array(variant, case, kernels.w2_serial)

    def w3(self, variant: str, case: Case) -> Any:
        """The running-max kernel over the whole array."""
        return self._array(variant, case, kernels.w3_block)

    def _array(self, variant: str, case: Case, whole: Callable[[np.ndarray], np.ndarray]) -> Any:
        x = case.x
        if variant == "e2e":
            with case.timed():
                return whole(x)
        inplace, _ = case.kernels
        out, bounds = _reused(case), case.bounds
        with case.timed():
            for low, high in bounds:
                inplace(x[low:high], out[low:high])
        return out

    def w6(self, variant: str, case: Case) -> Any:
        """Both halves through the small kernel, ``n`` times."""
        half, x = case.x.shape[0] // 2, case.x
        out = _reused(case)
        with case.timed():
            for _ in range(case.n):
                kernels.w6_kernel(x[:half], out[:half])
                kernels.w6_kernel(x[half:], out[half:])
        return out

    def w7(self, variant: str, case: Case) -> Any:
        """``list(map(fn, items))``."""
        items = _items(case)
        with case.timed():
            return list(map(kernels.w7_item, items))


class MemcpyAdapter(Adapter):
    """The physical reference: ``np.copyto`` of the W2 input, one thread. e2e copies into
    a fresh ``np.empty`` (page faults included), steady into a pre-faulted buffer."""

    name = "memcpy"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"W2": ("e2e", "steady")}
    COPIES_INPUT = True

    def w2(self, variant: str, case: Case) -> Any:
        """Copy the input once."""
        x = case.x
        if variant == "e2e":
            with case.timed():
                out = np.empty_like(x)
                np.copyto(out, x)
            return out
        out = _reused(case)
        with case.timed():
            np.copyto(out, x)
        return out


class IdealAdapter(Adapter):
    """The ideal-parallel bound (see ``ideal.py``): steady state only, by definition."""

    name = "ideal"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"W2": ("steady",), "W3": ("steady",)}

    def setup(self, workers: int) -> None:
        """Start the ``workers`` private processes."""
        super().setup(workers)
        self.bound = IdealBound(workers)

    def teardown(self) -> None:
        """Stop them."""
        self.bound.close()

    def w2(self, variant: str, case: Case) -> Any:
        """One common-start run over private shares."""
        return self._run(case)

    w3 = w2

    def _prepare(self, case: Case) -> bool:
        self.bound.prepare(case.kind, case.size, case.chunk_len)
        case.at_release(self.bound.release)
        return True

    def _run(self, case: Case) -> Any:
        case.cached("prepared", lambda: self._prepare(case))
        seconds, problem, _length = self.bound.run()
        case.record(seconds)
        return SelfChecked(problem)


# ---- shmpool --------------------------------------------------------------------------------


class ShmpoolAdapter(Adapter):
    """shmpool's ``SharedPool`` with its defaults (forkserver, automatic chunks)."""

    name = "shmpool"
    REQUIRES = ("shmpool",)
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default", "empty"),
        "W2": ("e2e", "e2e-staged", PLAIN8, "steady"),
        "W3": ("e2e", PLAIN8, "steady"),
        "W4": START_METHODS,
        "W6": ("default",),
        "W7": ("default", "auto", "batched"),
    }

    def setup(self, workers: int) -> None:
        """Start a pool of ``workers`` with the default start method."""
        super().setup(workers)
        import shmpool

        self.shmpool = shmpool
        self.pool = shmpool.SharedPool(workers)

    def teardown(self) -> None:
        """Close the pool."""
        self.pool.close()

    def warm(self) -> None:
        """One tiny map."""
        self.pool.map(kernels.w4_kernel, np.arange(4.0), chunks=1)

    def _shared(self, case: Case, key: str = "shared") -> tuple[np.ndarray, np.ndarray]:
        """The input and an output in shared memory, made once per case and freed at release."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            xs = self.pool.asarray(case.x)
            out = self.pool.empty_like(xs)
            case.at_release(lambda: self._free(xs, out))
            return xs, out

        xs, out = case.cached(key, make)
        poison(out)
        return xs, out

    def _free(self, *arrays: np.ndarray) -> None:
        if not self.pool.closed:
            for a in arrays:
                self.pool.free(a)

    def w1(self, variant: str, case: Case) -> Any:
        """``pool.map`` with ``chunks=1`` over shared arrays: ``default`` runs the trivial
        kernel, ``empty`` an empty one (checked by counting the chunks that ran)."""
        xs, out = self._shared(case)
        if variant == "empty":
            before = self._chunks_run()
            with case.timed():
                results = self.pool.map(kernels.w1_empty, xs, chunks=1)
            after = self._chunks_run()
            ran = len(results) if before is None or after is None else after - before
            ok = ran == case.n and len(results) == case.n
            return SelfChecked(None if ok else f"{ran} chunks ran, {len(results)} results, expected {case.n}")
        with case.timed():
            self.pool.map(kernels.w1_kernel, xs, out, chunks=1)
        return out

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: ``asarray`` + ``empty_like`` + map (result: the shared output);
        e2e-staged: map over the plain arrays (shmpool stages them); e2e-plain8: the same
        in 8 chunks, into a fresh ``np.empty``; steady: map."""
        return self._array(variant, case)

    def w3(self, variant: str, case: Case) -> Any:
        """As W2, with the running-max kernel."""
        return self._array(variant, case)

    def _chunks_run(self) -> int | None:
        """Chunks the pool has run so far, where it counts them (``pool.stats``)."""
        stats = getattr(self.pool, "stats", None)
        return getattr(stats, "chunks", None)

    def _array(self, variant: str, case: Case) -> Any:
        inplace, _ = case.kernels
        x, pool = case.x, self.pool
        before = getattr(pool, "stats", None)
        out = self._array_run(variant, case, inplace, x)
        after = getattr(pool, "stats", None)
        # Bytes copied (SharedPool: staging) or sent and received (DaskPool) by this map.
        if before is not None and after is not None:
            case.info["moved"] = (after.bytes_staged_in - before.bytes_staged_in) + (
                after.bytes_copied_back - before.bytes_copied_back
            )
        return out

    def _array_run(self, variant: str, case: Case, inplace: Any, x: np.ndarray) -> Any:
        pool = self.pool
        if variant == "e2e":
            with case.timed():
                xs = pool.asarray(x)
                out = pool.empty_like(xs)
                results = pool.map(inplace, xs, out)
            case.after_check(lambda: self._free(xs, out))
        elif variant == "e2e-staged":
            with case.timed():
                out = np.empty_like(x)
                results = pool.map(inplace, x, out)
        elif variant == PLAIN8:
            chunk_len = case.variant_chunk_len
            with case.timed():
                out = np.empty_like(x)
                results = pool.map(inplace, x, out, chunks=chunk_len)
        else:
            xs, out = self._shared(case)
            with case.timed():
                results = pool.map(inplace, xs, out)
        case.info["chunks"] = len(results)
        return out

    def w4(self, variant: str, case: Case) -> Any:
        """A new pool with start method ``variant``, one map of one-element chunks, close."""
        with case.timed(), self.shmpool.SharedPool(self.workers, start_method=variant) as pool:
            results = pool.map(kernels.w4_kernel, case.x, chunks=1)
        return results

    def w6(self, variant: str, case: Case) -> Any:
        """``n`` maps with ``chunks=half`` over small shared arrays."""
        xs, out = self._shared(case)
        half, pool = xs.shape[0] // 2, self.pool
        with case.timed():
            for _ in range(case.n):
                pool.map(kernels.w6_kernel, xs, out, chunks=half)
        return out

    def w7(self, variant: str, case: Case) -> Any:
        """``list(pool.imap(fn, items))`` where the pool has imap: with imap's defaults,
        ``auto`` (``chunksize="auto"``), or ``batched`` with ``chunksize`` = items /
        (4 * workers), ``Pool.map``'s rule."""
        if not hasattr(self.pool, "imap"):
            raise Unsupported("SharedPool has no imap yet")
        items = _items(case)
        options: dict[str, Any] = {}
        if variant == "batched":
            options["chunksize"] = max(1, -(-len(items) // (4 * self.workers)))
        elif variant == "auto":
            options["chunksize"] = "auto"
        with case.timed():
            return list(self.pool.imap(kernels.w7_item, items, **options))


class ThreadPoolAdapter(ShmpoolAdapter):
    """shmpool's ``ThreadPool``: SharedPool's API, the kernel running in threads of the
    host process on views of ordinary NumPy arrays: nothing staged, nothing pickled."""

    name = "threadpool"
    REQUIRES = ("shmpool",)
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default", "empty"),
        "W2": ("e2e", PLAIN8, "steady"),
        "W3": ("e2e", PLAIN8, "steady"),
        "W4": ("threads",),
        "W6": ("default",),
        "W7": ("default", "auto", "batched"),
    }

    def setup(self, workers: int) -> None:
        """A ThreadPool of ``workers`` threads, warmed by one tiny map."""
        Adapter.setup(self, workers)
        import shmpool

        self.shmpool = shmpool
        self.pool_class = shmpool.ThreadPool
        self.pool = self.pool_class(workers)
        self.warm()

    def _free(self, *arrays: np.ndarray) -> None:
        """Nothing to give back: the pool's arrays are ordinary NumPy arrays."""

    def w4(self, variant: str, case: Case) -> Any:
        """A new ThreadPool, one map of one-element chunks, close (the context manager)."""
        with case.timed(), self.pool_class(self.workers) as pool:
            results = pool.map(kernels.w4_kernel, case.x, chunks=1)
        return results


# ---- threads --------------------------------------------------------------------------------


def _start_threads(ex: ThreadPoolExecutor, count: int) -> None:
    """Make ``ex`` start all of its ``count`` threads now: ``count`` tasks that wait for
    each other (an executor starts a thread per submit while none is idle)."""
    barrier = threading.Barrier(count)
    list(ex.map(lambda _: barrier.wait(timeout=60), range(count)))


class ThreadsAdapter(Adapter):
    """The thread pool over slices: a bare ``concurrent.futures.ThreadPoolExecutor`` of
    ``workers`` threads, made once (W4 times a new one). Every chunk is a task running the
    in-place kernel on slices of the arrays (``out=``), in the host process: no copies, no
    pickling; ufunc kernels release the GIL, W3's pure-Python kernel holds it."""

    name = "cf_tpe"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default",),
        "W2": ("e2e", PLAIN8, "steady"),
        "W3": ("e2e", PLAIN8, "steady"),
        "W4": ("threads",),
        "W6": ("default",),
        "W7": ("default",),
    }

    def setup(self, workers: int) -> None:
        """The executor, with all of its threads started."""
        super().setup(workers)
        self.ex = ThreadPoolExecutor(workers, thread_name_prefix="bench-cf_tpe")
        _start_threads(self.ex, workers)

    def teardown(self) -> None:
        """Shut down and wait."""
        self.ex.shutdown(wait=True)

    def w1(self, variant: str, case: Case) -> Any:
        """``executor.map`` of the trivial kernel over one-row slices (one task each)."""
        x, out = case.x, _reused(case)
        rows = range(x.shape[0])
        with case.timed():
            list(self.ex.map(kernels.w1_kernel, (x[i : i + 1] for i in rows), (out[i : i + 1] for i in rows)))
        return out

    def _slices(self, inplace: Callable[..., None], x: np.ndarray, out: np.ndarray, case: Case) -> None:
        bounds = case.bounds
        list(self.ex.map(inplace, (x[lo:hi] for lo, hi in bounds), (out[lo:hi] for lo, hi in bounds)))
        case.info["chunks"] = len(bounds)

    def w2(self, variant: str, case: Case) -> Any:
        """e2e and e2e-plain8: a fresh ``np.empty`` output, then the chunks' slices through
        the executor (common chunks, or 8); steady: into a reused, pre-faulted output."""
        inplace, _ = case.kernels
        x = case.x
        if variant == "steady":
            out = _reused(case)
            with case.timed():
                self._slices(inplace, x, out, case)
            return out
        with case.timed():
            out = np.empty_like(x)
            self._slices(inplace, x, out, case)
        return out

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """A new executor, one map over one-element slices, ``shutdown(wait=True)``."""
        x = case.x
        with case.timed(), ThreadPoolExecutor(self.workers) as ex:
            results = list(ex.map(kernels.w4_kernel, [x[i : i + 1] for i in range(x.shape[0])]))
        return results

    def w6(self, variant: str, case: Case) -> Any:
        """``executor.map`` of the two halves, in place, ``n`` times."""
        x, out = case.x, _reused(case)
        half = x.shape[0] // 2
        with case.timed():
            for _ in range(case.n):
                list(self.ex.map(kernels.w6_kernel, (x[:half], x[half:]), (out[:half], out[half:])))
        return out

    def w7(self, variant: str, case: Case) -> Any:
        """``list(executor.map(fn, items))`` (one task per item; threads ignore chunksize)."""
        items = _items(case)
        with case.timed():
            return list(self.ex.map(kernels.w7_item, items))


# ---- the standard library -------------------------------------------------------------------


def _map_chunks(
    mapper: Callable[[Callable[[np.ndarray], np.ndarray], list[np.ndarray]], Any], case: Case
) -> np.ndarray:
    """Pickled chunks out, pickled results back, concatenated in the caller."""
    _, block = case.kernels
    x = case.x
    return np.concatenate(list(mapper(block, [x[low:high] for low, high in case.bounds])))


def _w6_by_pickling(mapper: Callable[[Callable[..., Any], list[np.ndarray]], Any], case: Case) -> np.ndarray:
    half, first, second = _halves(case)
    out = _reused(case)
    with case.timed():
        for _ in range(case.n):
            a, b = mapper(kernels.w6_block, [first, second])
            out[:half] = a
            out[half:] = b
    return out


class DaskPoolAdapter(ShmpoolAdapter):
    """shmpool's ``DaskPool`` on a ``LocalCluster`` of ``workers`` single-threaded worker
    processes on this machine: the same calls as the shmpool rows, with data moving through
    Dask instead of shared memory (the ``moved`` column shows how much)."""

    name = "daskpool"
    REQUIRES = ("shmpool", "distributed")
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default",),
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W4": ("local",),
        "W6": ("default",),
        "W7": ("default", "auto"),
    }

    def setup(self, workers: int) -> None:
        """Start a LocalCluster of ``workers`` processes and a DaskPool on it."""
        Adapter.setup(self, workers)
        import shmpool

        self.shmpool = shmpool
        self.cluster, self.client = _local_dask(workers)
        self.pool = shmpool.DaskPool(self.client)

    def teardown(self) -> None:
        """Close the pool, then the client and the cluster it does not own."""
        self.pool.close()
        self.client.close()
        self.cluster.close()

    def w4(self, variant: str, case: Case) -> Any:
        """A new DaskPool() (it starts and owns a LocalCluster), one map, close."""
        with case.timed(), self.shmpool.DaskPool() as pool:
            results = pool.map(kernels.w4_kernel, case.x, chunks=1)
        return results


def _local_dask(workers: int) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    return cluster, Client(cluster)


class MpPoolAdapter(Adapter):
    """``multiprocessing.Pool`` (fork, the default before Python 3.14), pickled chunks."""

    name = "mp_pool"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default", "1/msg"),
        "W2": ("e2e",),
        "W3": ("e2e",),
        "W4": START_METHODS,
        "W6": ("default",),
        "W7": ("default",),
    }

    def setup(self, workers: int) -> None:
        """A fork pool of ``workers``."""
        super().setup(workers)
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def teardown(self) -> None:
        """Close and join."""
        self.pool.close()
        self.pool.join()

    def warm(self) -> None:
        """One tiny map."""
        self.pool.map(kernels.w4_item, range(2 * self.workers))

    def w1(self, variant: str, case: Case) -> Any:
        """``pool.map`` with its default chunksize, or ``chunksize=1`` (1/msg)."""
        items = _items(case)
        chunksize = 1 if variant == "1/msg" else None
        with case.timed():
            return self.pool.map(kernels.w1_item, items, chunksize=chunksize)

    def w2(self, variant: str, case: Case) -> Any:
        """``pool.map`` over the chunks, one per task."""
        with case.timed():
            return _map_chunks(lambda f, parts: self.pool.map(f, parts, chunksize=1), case)

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """``Pool(workers)``, one map, close, join."""
        with case.timed():
            pool = multiprocessing.get_context(variant).Pool(self.workers)
            try:
                results = pool.map(kernels.w4_item, range(case.size))
            except BaseException:
                pool.terminate()
                pool.join()
                raise
            pool.close()
            pool.join()
        return results

    def w6(self, variant: str, case: Case) -> Any:
        """``pool.map`` of the two halves, one per task."""
        return _w6_by_pickling(lambda f, parts: self.pool.map(f, parts, chunksize=1), case)

    def w7(self, variant: str, case: Case) -> Any:
        """``list(pool.imap(fn, items))`` (chunksize 1, the default)."""
        items = _items(case)
        with case.timed():
            return list(self.pool.imap(kernels.w7_item, items))


class CfPpeAdapter(Adapter):
    """``concurrent.futures.ProcessPoolExecutor`` (fork), pickled chunks."""

    name = "cf_ppe"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default",),
        "W2": ("e2e",),
        "W3": ("e2e",),
        "W4": START_METHODS,
        "W6": ("default",),
        "W7": ("default",),
    }

    def setup(self, workers: int) -> None:
        """An executor of ``workers``, started by a first map."""
        super().setup(workers)
        from concurrent.futures import ProcessPoolExecutor

        self._executor_class = ProcessPoolExecutor
        self.ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        self.warm()

    def teardown(self) -> None:
        """Shut down and wait."""
        self.ex.shutdown(wait=True)

    def warm(self) -> None:
        """One tiny map."""
        list(self.ex.map(kernels.w4_item, range(2 * self.workers)))

    def w1(self, variant: str, case: Case) -> Any:
        """``executor.map`` (chunksize 1, the default)."""
        items = _items(case)
        with case.timed():
            return list(self.ex.map(kernels.w1_item, items))

    def w2(self, variant: str, case: Case) -> Any:
        """``executor.map`` over the chunks."""
        with case.timed():
            return _map_chunks(lambda f, parts: list(self.ex.map(f, parts)), case)

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """A new executor, one map, ``shutdown(wait=True)``."""
        with case.timed():
            ex = self._executor_class(self.workers, mp_context=multiprocessing.get_context(variant))
            try:
                results = list(ex.map(kernels.w4_item, range(case.size)))
            finally:
                ex.shutdown(wait=True)
        return results

    def w6(self, variant: str, case: Case) -> Any:
        """``executor.map`` of the two halves."""
        return _w6_by_pickling(lambda f, parts: list(self.ex.map(f, parts)), case)

    def w7(self, variant: str, case: Case) -> Any:
        """``list(executor.map(fn, items))``."""
        items = _items(case)
        with case.timed():
            return list(self.ex.map(kernels.w7_item, items))


# Kernels that shm_hand's tasks run, by workload.
_SHM_KERNELS: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "W2": kernels.w2_kernel,
    "W3": kernels.w3_kernel,
    "W6": kernels.w6_kernel,
}


def _attach(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    # Before 3.13 an attach registers the segment with the resource tracker; the host
    # started the tracker before forking the pool, so parent and workers share one and the
    # parent's unlink unregisters it (https://github.com/python/cpython/issues/82300).
    return shared_memory.SharedMemory(name=name)


def shm_task(spec: tuple[str, str, tuple[int, ...], str, str, int, int]) -> None:
    """A hand-written shared-memory task: attach both segments by name, run the kernel on
    rows ``start:stop`` in place, detach."""
    x_name, out_name, shape, dtype, kind, start, stop = spec
    x_seg, out_seg = _attach(x_name), _attach(out_name)
    try:
        x = np.ndarray(shape, dtype, buffer=x_seg.buf)
        out = np.ndarray(shape, dtype, buffer=out_seg.buf)
        _SHM_KERNELS[kind](x[start:stop], out[start:stop])
        del x, out
    finally:
        x_seg.close()
        out_seg.close()


class _Segments:
    """An input and an output segment of ``like``'s shape; the input holds a copy of it."""

    def __init__(self, like: np.ndarray):
        self.shape, self.dtype = like.shape, like.dtype
        self.x = shared_memory.SharedMemory(create=True, size=max(1, like.nbytes))
        try:
            self.out = shared_memory.SharedMemory(create=True, size=max(1, like.nbytes))
        except BaseException:
            self.x.close()
            self.x.unlink()
            raise
        view = np.ndarray(self.shape, self.dtype, buffer=self.x.buf)
        view[...] = like
        del view

    def output(self) -> np.ndarray:
        """A view of the output segment (drop it before :meth:`destroy`)."""
        return np.ndarray(self.shape, self.dtype, buffer=self.out.buf)

    def specs(self, kind: str, bounds: list[tuple[int, int]]) -> list[Any]:
        """One task per chunk."""
        return [(self.x.name, self.out.name, self.shape, self.dtype.str, kind, lo, hi) for lo, hi in bounds]

    def destroy(self) -> None:
        """Close and unlink both segments."""
        for seg in (self.x, self.out):
            seg.close()
            seg.unlink()


class ShmHandAdapter(Adapter):
    """What people write by hand: ``SharedMemory`` segments and a fork
    ``multiprocessing.Pool`` whose tasks attach by name and write in place."""

    name = "shm_hand"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W6": ("default",),
    }

    def setup(self, workers: int) -> None:
        """A fork pool, with the resource tracker started first so workers share it."""
        super().setup(workers)
        if sys.version_info < (3, 13):
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def teardown(self) -> None:
        """Close and join."""
        self.pool.close()
        self.pool.join()

    def warm(self) -> None:
        """One tiny map."""
        self.pool.map(kernels.w4_item, range(2 * self.workers))

    def _segments(self, like: np.ndarray) -> _Segments:
        segments = _Segments(like)
        self.created.update((segments.x.name.lstrip("/"), segments.out.name.lstrip("/")))
        return segments

    def _steady(self, case: Case) -> tuple[_Segments, np.ndarray]:
        def make() -> _Segments:
            segments = self._segments(case.x)
            case.at_release(segments.destroy)
            return segments

        segments: _Segments = case.cached("segments", make)
        out = segments.output()
        poison(out)
        return segments, out

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: create both segments, copy the input in, map, and hand back a view of the
        output (unlinked after the check, like shmpool's free); steady: map only."""
        kind = case.kind
        if variant == "e2e":
            with case.timed():
                segments = self._segments(case.x)
                self.pool.map(shm_task, segments.specs(kind, case.bounds), chunksize=1)
                out = segments.output()
            case.after_check(segments.destroy)
            return out
        segments, out = self._steady(case)
        del out
        with case.timed():
            self.pool.map(shm_task, segments.specs(kind, case.bounds), chunksize=1)
        return segments.output()

    w3 = w2

    def w6(self, variant: str, case: Case) -> Any:
        """Two attach-by-name tasks per map, ``n`` maps."""
        segments, out = self._steady(case)
        del out
        half = case.x.shape[0] // 2
        specs = segments.specs("W6", [(0, half), (half, case.x.shape[0])])
        with case.timed():
            for _ in range(case.n):
                self.pool.map(shm_task, specs, chunksize=1)
        return segments.output()


# ---- joblib ---------------------------------------------------------------------------------


def _shutdown_loky() -> None:
    # joblib keeps one reusable loky executor per process and has no public call that
    # stops it; shutting it down is the only way to time a full start-stop cycle.
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)


def _memmap_path(folder: str) -> str:
    fd, path = tempfile.mkstemp(prefix="memmap_", suffix=".dat", dir=folder)
    os.close(fd)
    return path


def _memmap_of(x: np.ndarray, folder: str, mode: str) -> tuple[np.memmap, str]:
    """An np.memmap file holding a copy of ``x``, reopened with ``mode``."""
    path = _memmap_path(folder)
    writer = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
    writer[...] = x
    writer.flush()
    del writer
    return np.memmap(path, dtype=x.dtype, mode=mode, shape=x.shape), path


class JoblibAdapter(Adapter):
    """joblib's ``Parallel`` with its defaults (loky, automatic batching, automatic
    memmapping of large inputs); results come back pickled."""

    name = "joblib"
    REQUIRES = ("joblib",)
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default", "1/msg"),
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W4": ("loky",),
        "W6": ("default",),
        "W7": ("default",),
    }

    def setup(self, workers: int) -> None:
        """Start the reusable executor with a first call."""
        super().setup(workers)
        import joblib

        self.joblib = joblib
        self.folder = tempfile.mkdtemp(prefix="shmpool-bench-", dir=MEMMAP_FOLDER)
        self.created.add(os.path.basename(self.folder))
        self.warm()

    def teardown(self) -> None:
        """Stop the executor, remove the memmap folder."""
        _shutdown_loky()
        shutil.rmtree(self.folder, ignore_errors=True)

    def warm(self) -> None:
        """One tiny call."""
        self._par()(self.joblib.delayed(kernels.w4_item)(i) for i in range(2 * self.workers))

    def _par(self, **options: Any) -> Any:
        return self.joblib.Parallel(n_jobs=self.workers, **options)

    def _input_memmap(self, case: Case) -> np.ndarray:
        def make() -> np.ndarray:
            xm, path = _memmap_of(case.x, self.folder, "r")
            case.at_release(lambda: os.unlink(path))
            return xm

        return case.cached("x_memmap", make)  # type: ignore[no-any-return]

    def w1(self, variant: str, case: Case) -> Any:
        """``Parallel(n_jobs)`` over the items, automatic batching or ``batch_size=1``."""
        items, delayed = _items(case), self.joblib.delayed
        options = {"batch_size": 1} if variant == "1/msg" else {}
        with case.timed():
            return self._par(**options)(delayed(kernels.w1_item)(v) for v in items)

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: plain chunks (joblib memmaps them), results pickled back and concatenated;
        steady: the input already an np.memmap, results copied into a reused output."""
        _, block = case.kernels
        delayed, bounds = self.joblib.delayed, case.bounds
        if variant == "e2e":
            x = case.x
            with case.timed():
                parts = self._par()(delayed(block)(x[lo:hi]) for lo, hi in bounds)
                return np.concatenate(parts)
        xm, out = self._input_memmap(case), _reused(case)
        with case.timed():
            parts = self._par()(delayed(block)(xm[lo:hi]) for lo, hi in bounds)
            for (lo, hi), part in zip(bounds, parts, strict=True):
                out[lo:hi] = part
        return out

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """One ``Parallel`` call on a fresh executor, then shut the executor down."""
        _shutdown_loky()
        delayed = self.joblib.delayed
        with case.timed():
            results = self._par()(delayed(kernels.w4_item)(i) for i in range(case.size))
            _shutdown_loky()
        return results

    def w6(self, variant: str, case: Case) -> Any:
        """A ``Parallel`` call of two tasks per map."""
        delayed = self.joblib.delayed
        return _w6_by_pickling(lambda f, parts: self._par()(delayed(f)(p) for p in parts), case)

    def w7(self, variant: str, case: Case) -> Any:
        """``Parallel(return_as="generator")`` over the items."""
        items, delayed = _items(case), self.joblib.delayed
        with case.timed():
            return list(self._par(return_as="generator")(delayed(kernels.w7_item)(i) for i in items))


class JoblibMemmapAdapter(JoblibAdapter):
    """joblib's documented in-place pattern: workers write into an ``np.memmap`` output
    (``w+`` file in /dev/shm), nothing comes back by pickling."""

    name = "joblib_memmap"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"W2": ("e2e", "steady"), "W3": ("e2e", "steady")}

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: a new memmap output, plain input (memmapped by joblib); steady: memmapped
        input and a reused memmap output."""
        inplace, _ = case.kernels
        delayed, bounds, x = self.joblib.delayed, case.bounds, case.x
        if variant == "e2e":
            path = _memmap_path(self.folder)
            with case.timed():
                out = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
                self._par()(delayed(inplace)(x[lo:hi], out[lo:hi]) for lo, hi in bounds)
            case.after_check(lambda: os.unlink(path))
            return out

        def make_out() -> np.memmap:
            path = _memmap_path(self.folder)
            case.at_release(lambda: os.unlink(path))
            return np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)

        xm, out = self._input_memmap(case), case.cached("out_memmap", make_out)
        poison(out)
        with case.timed():
            self._par()(delayed(inplace)(xm[lo:hi], out[lo:hi]) for lo, hi in bounds)
        return out

    w3 = w2


# ---- mpire ----------------------------------------------------------------------------------


def mpire_block(shared: np.ndarray, kind: str, start: int, stop: int) -> np.ndarray:
    """mpire task: run ``kind``'s returning kernel on rows of the shared object."""
    return kernels.ARRAY_KERNELS[kind][1](shared[start:stop])


class MpireAdapter(Adapter):
    """mpire's ``WorkerPool`` (fork, ``keep_alive``); arrays go in as copy-on-write
    ``shared_objects``, results come back pickled."""

    name = "mpire"
    REQUIRES = ("mpire",)
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default", "1/msg"),
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W4": START_METHODS,
        "W6": ("default",),
        "W7": ("default",),
    }

    def setup(self, workers: int) -> None:
        """A kept-alive pool of ``workers``."""
        super().setup(workers)
        from mpire import WorkerPool

        self.WorkerPool = WorkerPool
        self.pool = WorkerPool(n_jobs=workers, keep_alive=True, start_method="fork")
        self.warm()

    def teardown(self) -> None:
        """Stop and join the workers."""
        self.pool.stop_and_join(keep_alive=False)

    def warm(self) -> None:
        """One tiny map."""
        self.pool.map(kernels.w4_item, list(range(2 * self.workers)))

    def w1(self, variant: str, case: Case) -> Any:
        """``pool.map`` with mpire's automatic chunk size, or ``chunk_size=1``."""
        items = _items(case)
        chunk_size = 1 if variant == "1/msg" else None
        with case.timed():
            return self.pool.map(kernels.w1_item, items, chunk_size=chunk_size)

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: a pool started with the input as its shared object (mpire binds shared
        objects at worker start), map over the chunks; steady: that pool kept alive."""
        x, kind = case.x, case.kind
        tasks = [(kind, lo, hi) for lo, hi in case.bounds]
        if variant == "e2e":
            with (
                case.timed(),
                self.WorkerPool(n_jobs=self.workers, shared_objects=x, start_method="fork") as pool,
            ):
                return pool.map(mpire_block, tasks, chunk_size=1)

        def make() -> Any:
            pool = self.WorkerPool(
                n_jobs=self.workers, shared_objects=x, keep_alive=True, start_method="fork"
            )
            pool.map(mpire_block, tasks[:1], chunk_size=1)
            case.at_release(lambda: pool.stop_and_join(keep_alive=False))
            return pool

        pool, out = case.cached("pool", make), _reused(case)
        with case.timed():
            out[...] = pool.map(mpire_block, tasks, chunk_size=1)
        return out

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """A new pool with start method ``variant``, one map, terminate."""
        with case.timed(), self.WorkerPool(n_jobs=self.workers, start_method=variant) as pool:
            return pool.map(kernels.w4_item, list(range(case.size)))

    def w6(self, variant: str, case: Case) -> Any:
        """``pool.map`` of the two halves."""
        return _w6_by_pickling(
            lambda f, parts: np.split(self.pool.map(f, [(p,) for p in parts], chunk_size=1), 2), case
        )

    def w7(self, variant: str, case: Case) -> Any:
        """``list(pool.imap(fn, items))`` with mpire's automatic chunk size."""
        items = _items(case)
        with case.timed():
            return list(self.pool.imap(kernels.w7_item, items))


# ---- dask -----------------------------------------------------------------------------------


class DaskAdapter(Adapter):
    """``dask.distributed`` on a LocalCluster of ``workers`` single-threaded processes."""

    name = "dask"
    REQUIRES = ("dask", "distributed")
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "W1": ("default",),
        "W2": ("e2e", "steady"),
        "W3": ("e2e", "steady"),
        "W4": ("spawn",),
        "W6": ("default",),
        "W7": ("default",),
    }

    def _cluster(self) -> Any:
        from dask.distributed import LocalCluster

        return LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # The scheduler's HTTP server starts even without a dashboard; a random port
            # keeps two clusters (W4 starts one next to the main one) from colliding.
            scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
            silence_logs=logging.ERROR,
            local_directory=self.folder,
        )

    def setup(self, workers: int) -> None:
        """Start the cluster and a client."""
        super().setup(workers)
        from dask.distributed import Client

        self.folder = tempfile.mkdtemp(prefix="shmpool-bench-dask-")
        self.cluster = self._cluster()
        self.client = Client(self.cluster)
        self.warm()

    def teardown(self) -> None:
        """Close the client and the cluster."""
        self.client.close()
        self.cluster.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def warm(self) -> None:
        """One tiny map."""
        self.client.gather(self.client.map(kernels.w4_item, range(2 * self.workers), pure=False))

    def w1(self, variant: str, case: Case) -> Any:
        """``client.map`` over the items (one task each), then gather."""
        items = _items(case)
        with case.timed():
            return self.client.gather(self.client.map(kernels.w1_item, items, pure=False))

    def w2(self, variant: str, case: Case) -> Any:
        """e2e: ``from_array(x).map_blocks(kernel).compute()``; steady: the input
        persisted in the workers first."""
        import dask.array as da
        from dask.distributed import wait

        _, block = case.kernels
        x = case.x
        chunks = (case.chunk_len, *x.shape[1:])
        if variant == "e2e":
            with case.timed():
                return self.client.compute(
                    da.from_array(x, chunks=chunks).map_blocks(block, dtype=x.dtype), sync=True
                )

        def make() -> Any:
            stored = self.client.persist(da.from_array(x, chunks=chunks))
            wait(stored)
            return stored

        stored = case.cached("persisted", make)
        with case.timed():
            return self.client.compute(stored.map_blocks(block, dtype=x.dtype), sync=True)

    w3 = w2

    def w4(self, variant: str, case: Case) -> Any:
        """A new LocalCluster and client, one map, close both."""
        from dask.distributed import Client

        with case.timed(), self._cluster() as cluster, Client(cluster, set_as_default=False) as client:
            return client.gather(client.map(kernels.w4_item, range(case.size), pure=False))

    def w6(self, variant: str, case: Case) -> Any:
        """``client.map`` of the two halves, gathered."""
        return _w6_by_pickling(
            lambda f, parts: self.client.gather(self.client.map(f, parts, pure=False)), case
        )

    def w7(self, variant: str, case: Case) -> Any:
        """A dask bag over the items with its default partitioning."""
        import dask.bag as db

        items = _items(case)
        with case.timed():
            return self.client.compute(db.from_sequence(items).map(kernels.w7_item), sync=True)


ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a
    for a in (
        SerialAdapter,
        MemcpyAdapter,
        IdealAdapter,
        ShmpoolAdapter,
        ThreadPoolAdapter,
        DaskPoolAdapter,
        ThreadsAdapter,
        MpPoolAdapter,
        CfPpeAdapter,
        ShmHandAdapter,
        JoblibAdapter,
        JoblibMemmapAdapter,
        MpireAdapter,
        DaskAdapter,
    )
}
