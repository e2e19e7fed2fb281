"""DaskPool: what crosses the network, worker deaths, a real cluster, and optional Dask.

The pool-behaviour tests that SharedPool and DaskPool share are in test_pool_contract.py;
this module holds the Dask clusters the tests use (imported there too) and what only a
cluster has: bytes moved per map, lost workers, the scheduler and worker commands.
"""

from __future__ import annotations

import copyreg
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import shmpool

# Importing distributed runs tblib.pickling_support.install(), which re-registers pickling
# (copyreg) for every exception class defined so far. SharedPool workers started with fork
# by other test modules of this session would inherit it, and an exception that cannot be
# rebuilt would no longer arrive as KernelError there. Keep this process's pickling as is.
_pickling_before = dict(copyreg.dispatch_table)
try:
    distributed = pytest.importorskip("distributed")
    from shmpool.dask_pool import DaskPool
finally:
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(_pickling_before)

from . import conftest, kernels  # noqa: E402
from .conftest import run_script  # noqa: E402

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20

# ---- clusters, and their processes in the leak check --------------------------------------
#
# conftest's leak check fails a test that leaves a child process behind. The workers of the
# clusters below live for a whole module, and a nanny replaces a worker that a test killed
# with a new process: those are the cluster's, not the test's. Each cluster registers how
# to list its processes now; the check leaves exactly those out.

_CLUSTER_PROCESSES: list[Callable[[], set[int]]] = []


def _with_descendants(pid: int | None) -> set[int]:
    if not pid:
        return set()
    try:
        process = psutil.Process(pid)
        return {pid} | {child.pid for child in process.children(recursive=True)}
    except psutil.Error:
        return set()


@pytest.fixture(scope="module", autouse=True)
def dask_cluster_processes_are_not_leaks() -> Iterator[None]:
    """While a module's clusters live, their processes are not counted as leaked."""
    original = conftest.child_pids

    def child_pids() -> set[int]:
        ours: set[int] = set()
        for processes in _CLUSTER_PROCESSES:
            ours |= processes()
        return original() - ours

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conftest, "child_pids", child_pids)
        yield


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    """A LocalCluster of two worker processes with one thread each, for one module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )

    def processes() -> set[int]:
        found: set[int] = set()
        for nanny in list(cluster.workers.values()):
            found |= _with_descendants(nanny.pid)
        return found

    _CLUSTER_PROCESSES.append(processes)
    try:
        yield cluster
    finally:
        cluster.close(timeout=30)
        _CLUSTER_PROCESSES.remove(processes)


@pytest.fixture(scope="module")
def dask_client(local_cluster: Any) -> Iterator[Any]:
    """A client of the module's LocalCluster."""
    with distributed.Client(local_cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def dask_pool(dask_client: Any) -> Iterator[DaskPool]:
    """A DaskPool on the module's LocalCluster (the pool is cheap; the cluster is not)."""
    with DaskPool(dask_client) as pool:
        yield pool


def _dask_command() -> str:
    found = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    if found is None:
        pytest.skip("the dask command is not installed")
    return found


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two workers started with the ``dask`` command, on 127.0.0.1 only;
    yields the scheduler file. Everything is stopped afterwards, however the tests end."""
    dask = _dask_command()
    folder = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with open(folder / f"{name}.log", "wb") as log:
            started.append(
                subprocess.Popen(
                    [dask, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=folder,
                    start_new_session=True,
                )
            )

    def processes() -> set[int]:
        found: set[int] = set()
        for process in started:
            found |= _with_descendants(process.pid)
        return found

    _CLUSTER_PROCESSES.append(processes)
    try:
        start(
            "scheduler",
            "scheduler",
            "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not scheduler_file.exists():
            assert started[0].poll() is None, (folder / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start within 30 s"
            time.sleep(0.1)
        for i in range(2):
            start(
                f"worker-{i}",
                "worker",
                "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                "--name", f"worker-{i}", "--death-timeout", "30",
            )  # fmt: skip
        yield str(scheduler_file)
    finally:
        everything = processes()
        for process in reversed(started):  # workers first, then the scheduler
            process.terminate()
        for process in reversed(started):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for pid in everything:  # a worker process its nanny had no time to stop
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        _CLUSTER_PROCESSES.remove(processes)


@pytest.fixture(scope="module")
def real_client(real_cluster: str) -> Iterator[Any]:
    """A client of the real cluster, once both workers have joined."""
    with distributed.Client(scheduler_file=real_cluster, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def _worker_pids(client: Any) -> list[int]:
    return sorted(client.run(os.getpid).values())


def bytes_sent_by_workers(client: Any) -> int:
    """What the workers have sent (to the client and to each other), by Dask's count."""

    def sent(dask_worker: Any) -> int:
        return int(dask_worker.transfer_outgoing_bytes_total)

    return sum(client.run(sent).values())


# ---- construction and ownership -----------------------------------------------------------


def test_client_is_used_and_left_open(dask_client: Any) -> None:
    pool = DaskPool(dask_client)
    assert pool.client is dask_client and pool.workers == 2
    assert "running" in repr(pool) and "tcp://127.0.0.1" in repr(pool)
    pool.close()
    assert pool.closed and "closed" in repr(pool)
    assert dask_client.status == "running"  # not the pool's to close
    assert dask_client.submit(sum, [1, 2]).result(timeout=30) == 3


def test_address_makes_a_client_that_the_pool_closes(local_cluster: Any) -> None:
    with DaskPool(address=local_cluster.scheduler_address) as pool:
        client = pool.client
        assert pool.map(kernels.chunk_length, np.zeros(6), chunks=3) == [3, 3]
    assert client.status == "closed"
    assert local_cluster.status.name == "running"


def test_no_arguments_start_a_local_cluster_that_the_pool_closes() -> None:
    before = conftest.child_pids()
    with DaskPool() as pool:
        cluster = pool.cluster
        assert isinstance(cluster, distributed.LocalCluster)
        assert pool.workers == shmpool.usable_cpus()
        workers = set(_worker_pids(pool.client))
        assert workers <= conftest.child_pids() - before  # processes, not threads
        x = np.arange(10.0)
        pool.map(kernels.double_in_place, x, chunks=5)
        assert x.tolist() == [2.0 * i for i in range(10)]
    assert cluster.status.name == "closed"
    assert not workers & {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}


def test_worker_threads_in_this_process() -> None:
    # LocalCluster(processes=False): the "worker" runs kernels on the caller's own arrays,
    # and must not mark the caller as a worker (decorated kernels would then run in place).
    from shmpool import _active

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        DaskPool(client) as pool,
    ):
        x = np.arange(10.0)
        src = np.arange(10.0)
        src.flags.writeable = False
        out = np.zeros(10)
        pool.map(_double_and_copy, x, src, out, chunks=3)
        assert x.tolist() == [2.0 * i for i in range(10)] and out.tolist() == [i + 1.0 for i in range(10)]
        with pytest.raises(ValueError, match="read-only"):
            pool.map(kernels.double_in_place, src)
    assert not _active.in_worker()


def _double_and_copy(x: np.ndarray, src: np.ndarray, out: np.ndarray) -> None:
    x *= 2
    out[:] = src + 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not both"):
        DaskPool(object(), address="tcp://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        DaskPool("tcp://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress"):
        DaskPool(address="tcp://127.0.0.1:1", progress="bar")  # type: ignore[arg-type]


# ---- what travels -------------------------------------------------------------------------


def _touch_nothing(x: np.ndarray, out: np.ndarray) -> float:
    return float(x[0])


def _rewrite_same_values(x: np.ndarray) -> None:
    x[...] = x.copy()  # writes every byte, changes none


def _scale_head(x: np.ndarray, *, below: float) -> None:
    x[x < below] *= 2


def _copy_plus_one(src: np.ndarray, out: np.ndarray) -> None:
    out[...] = src + 1


def test_unchanged_chunks_are_not_sent_back(dask_pool: DaskPool) -> None:
    x = np.random.default_rng(0).random(2 * MiB // 8 * 4)  # 8 MiB
    out = np.zeros_like(x)
    client = dask_pool.client
    before, sent_before = dask_pool.stats, bytes_sent_by_workers(client)
    dask_pool.map(_touch_nothing, x, out)
    dask_pool.map(_rewrite_same_values, x)  # "do not trust the kernel": compared, not assumed
    after, sent_after = dask_pool.stats, bytes_sent_by_workers(client)
    assert after.bytes_copied_back == before.bytes_copied_back
    assert after.bytes_staged_in - before.bytes_staged_in >= 3 * x.nbytes  # x twice, out once
    assert sent_after - sent_before < x.nbytes // 20  # results and spec only: no array data


def test_changed_chunks_come_back_and_only_they(dask_pool: DaskPool) -> None:
    x = np.arange(2 * MiB // 8 * 4, dtype=np.float64)  # 8 MiB, in 16 chunks
    expected = np.where(x < x.size // 4, 2 * x, x)
    client = dask_pool.client
    before, sent_before = dask_pool.stats, bytes_sent_by_workers(client)
    dask_pool.map(_scale_head, x, chunks=x.size // 16, below=float(x.size // 4))
    after, sent_after = dask_pool.stats, bytes_sent_by_workers(client)
    assert np.array_equal(x, expected)
    assert after.bytes_copied_back - before.bytes_copied_back == x.nbytes // 4  # 4 chunks of 16
    assert x.nbytes // 4 <= sent_after - sent_before < x.nbytes // 4 + x.nbytes // 20
    before = dask_pool.stats
    dask_pool.map(kernels.double_in_place, x)
    assert dask_pool.stats.bytes_copied_back - before.bytes_copied_back == x.nbytes
    assert np.array_equal(x, 2 * expected)


def test_read_only_arrays_are_never_sent_back(dask_pool: DaskPool) -> None:
    src = np.arange(MiB // 8, dtype=np.float64)
    src.flags.writeable = False
    out = np.zeros_like(src)
    before = dask_pool.stats
    dask_pool.map(_copy_plus_one, src, out)
    assert np.array_equal(out, src + 1)
    assert dask_pool.stats.bytes_copied_back - before.bytes_copied_back == out.nbytes


def test_whole_arguments_travel_once_per_map(dask_pool: DaskPool) -> None:
    table = np.arange(MiB // 8 * 4, dtype=np.float64)  # 4 MiB, read-only use
    table.flags.writeable = False
    idx = np.arange(0, table.size, 997)
    out = np.zeros(idx.size)
    client = dask_pool.client
    before, sent_before = dask_pool.stats, bytes_sent_by_workers(client)

    def lookup(i: np.ndarray, t: np.ndarray, o: np.ndarray) -> None:
        o[:] = t[i]

    dask_pool.map(lookup, idx, shmpool.whole(table), out, chunks=max(1, idx.size // 32))
    after, sent_after = dask_pool.stats, bytes_sent_by_workers(client)
    assert np.array_equal(out, table[idx])
    chunk_bytes = idx.nbytes + out.nbytes
    sent = after.bytes_staged_in - before.bytes_staged_in
    assert table.nbytes + chunk_bytes <= sent < table.nbytes + chunk_bytes + 64 * 1024  # once, not 32 times
    # Between workers, the spec goes to each worker that runs chunks, again only if Dask
    # dropped its copy while it had no chunk queued: far from once per chunk (16 here).
    assert sent_after - sent_before < 4 * table.nbytes


def test_writable_whole_array_brings_back_changed_elements_only(dask_pool: DaskPool) -> None:
    hits = np.zeros(1000, dtype=np.int64)
    idx = np.arange(0, 1000, 10)
    before = dask_pool.stats

    def mark(i: np.ndarray, h: np.ndarray) -> None:
        h[i] = i + 1

    dask_pool.map(mark, idx, shmpool.whole(hits), chunks=10)
    expected = np.zeros(1000, dtype=np.int64)
    expected[idx] = idx + 1
    assert np.array_equal(hits, expected)
    # 100 changed int64 elements plus their indices, not 10 copies of 8 kB.
    assert dask_pool.stats.bytes_copied_back - before.bytes_copied_back == 100 * (8 + 8)


def test_views_and_fortran_order_are_written_back(dask_pool: DaskPool) -> None:
    base = np.zeros((12, 6), order="F")

    def fill(v: np.ndarray) -> None:
        v[...] = 7

    dask_pool.map(fill, base[:, ::2], axis=1, chunks=1)
    dask_pool.map(fill, base[::-1, 1], chunks=5)
    assert (base[:, ::2] == 7).all() and (base[:, 1] == 7).all()
    assert (base[:, 3] == 0).all() and (base[:, 5] == 0).all()


def test_nan_and_signed_zero_count_as_bytes(dask_pool: DaskPool) -> None:
    x = np.array([np.nan, 0.0, 1.0, np.nan])

    def flip_zero(v: np.ndarray) -> None:
        v[v == 0] = -0.0  # equal as a value, different as bytes: must come back

    before = dask_pool.stats
    dask_pool.map(flip_zero, x, chunks=2)
    assert np.signbit(x[1]) and np.isnan(x[0])
    assert dask_pool.stats.bytes_copied_back - before.bytes_copied_back == 16  # chunk 0 only


# ---- errors and lost workers -------------------------------------------------------------


def test_a_chunk_that_cannot_complete_is_worker_crashed(local_cluster: Any, dask_client: Any) -> None:
    scheduler = local_cluster.scheduler
    allowed = scheduler.allowed_failures
    scheduler.allowed_failures = 0  # the first death of a chunk's worker is final
    try:
        with DaskPool(dask_client) as pool:
            x = np.arange(8)
            with pytest.raises(shmpool.WorkerCrashedError) as info:
                pool.map(kernels.crash_on, x, chunks=2, bad=0, how="kill")
            assert info.value.chunk == 0
            assert "allowed-failures" in str(info.value)
            assert isinstance(info.value.__cause__, distributed.scheduler.KilledWorker)
            dask_client.wait_for_workers(2, timeout=60)  # the nanny starts a new one
            assert pool.map(kernels.chunk_length, x, chunks=4) == [4, 4]
    finally:
        scheduler.allowed_failures = allowed
    dask_client.wait_for_workers(2, timeout=60)


def test_spec_that_a_worker_cannot_load(dask_pool: DaskPool, tmp_path: Path) -> None:
    # A kernel from a module the workers cannot import: its error comes back as itself.
    module = tmp_path / "only_here_kernels.py"
    module.write_text("def inc(x):\n    x += 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here_kernels  # type: ignore[import-not-found]

        with pytest.raises(ModuleNotFoundError, match="only_here_kernels") as info:
            dask_pool.map(only_here_kernels.inc, np.zeros(4))
        assert "kernel 'inc'" in str(info.value.__cause__)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here_kernels", None)


def test_timeout(dask_pool: DaskPool) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.5 s"):
        dask_pool.map(kernels.sleep_chunk, np.zeros(8), chunks=1, seconds=0.4, timeout=0.5)
    assert time.monotonic() - start < 5
    assert dask_pool.map(kernels.chunk_length, np.zeros(4), chunks=2) == [2, 2]


def test_terminate_stops_maps_in_flight(dask_client: Any) -> None:
    pool = DaskPool(dask_client)
    future = pool.map_async(kernels.sleep_chunk, np.zeros(20), chunks=1, seconds=0.2)
    time.sleep(0.5)
    pool.terminate()
    with pytest.raises(shmpool.PoolClosedError):
        future.result(timeout=30)
    with pytest.raises(shmpool.PoolClosedError):
        pool.map(kernels.chunk_length, np.zeros(2))


def test_close_waits_for_maps_in_flight(dask_client: Any) -> None:
    pool = DaskPool(dask_client)
    x = np.zeros(6)
    future = pool.map_async(kernels.sleep_chunk, x, chunks=1, seconds=0.1)
    call = pool.submit(kernels.slow_square, 3.0)
    pool.close()
    assert future.done() and call.done()
    assert len(future.result()) == 6 and call.result() == 9.0


# ---- a real cluster: `dask scheduler` and `dask worker` ------------------------------------


def test_real_cluster_runs_the_same_kernel(real_client: Any) -> None:
    with DaskPool(real_client) as pool:
        assert pool.workers == 2
        x = np.random.default_rng(5).random((4000, 16))
        y = np.random.default_rng(6).random((4000, 16))
        out = np.zeros_like(x)
        pool.map(kernels.saxpy, x, y, out, a=2.0)
        assert np.array_equal(out, 2.0 * x + y)
        assert sorted(set(pool.map(kernels.worker_pid, np.zeros(40), chunks=1))) == _worker_pids(real_client)
        assert list(pool.imap(kernels.square, range(20), chunksize=3)) == [i * i for i in range(20)]
        with pytest.raises(KeyError):
            pool.map(kernels.fail_on, np.arange(50), chunks=5, bad=17)


def test_real_cluster_worker_killed_mid_map_is_retried(real_client: Any) -> None:
    x = np.arange(24.0)
    with DaskPool(real_client) as pool:

        def slow_double(v: np.ndarray) -> int:
            time.sleep(0.25)
            v *= 2
            return os.getpid()

        future = pool.map_async(slow_double, x, chunks=1)
        victim = _worker_pids(real_client)[0]
        time.sleep(1.0)  # both workers are busy with chunks by now
        os.kill(victim, signal.SIGKILL)
        pids = future.result(timeout=60)
    assert np.array_equal(x, 2 * np.arange(24.0))
    assert len(pids) == 24 and victim in pids  # chunks done before the kill were kept
    real_client.wait_for_workers(2, timeout=60)  # the nanny replaced the worker
    assert victim not in _worker_pids(real_client)


def _w2(x: np.ndarray, y: np.ndarray) -> None:
    np.sqrt(x, out=y)
    y *= 2
    y += 1


def test_real_cluster_keeps_cluster_arrays_on_the_workers(real_client: Any) -> None:
    data = np.random.default_rng(7).random((4000, 16))
    with DaskPool(real_client) as pool:
        x = pool.asarray(data)
        y = pool.empty_like(x)
        before, sent = pool.stats, bytes_sent_by_workers(real_client)
        for _ in range(4):
            pool.map(_w2, x, y)
            x, y = y, x
        after = pool.stats
        assert after.bytes_staged_in - before.bytes_staged_in < 4 * 16 * 1024  # tasks, not chunks
        assert bytes_sent_by_workers(real_client) - sent < 4 * 16 * 1024
        expected = data
        for _ in range(4):
            expected = np.sqrt(expected) * 2 + 1
        assert np.array_equal(x.gather(), expected) and np.array_equal(x[100:103, 5], expected[100:103, 5])
        pids = pool.map(kernels.worker_pid, x)
        assert sorted(pids) == _worker_pids(real_client)  # one chunk on each worker

    def keys(dask_worker: Any) -> int:
        return sum(1 for k in dask_worker.data if "shmpool" in str(k))

    deadline = time.monotonic() + 10
    while sum(real_client.run(keys).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(real_client.run(keys).values()) == 0  # the pool's close released its chunks


# ---- Dask stays optional ------------------------------------------------------------------


def test_import_shmpool_does_not_import_dask() -> None:
    proc = run_script(
        """
        import sys, shmpool
        assert "dask" not in sys.modules and "distributed" not in sys.modules
        assert "DaskPool" not in vars(shmpool)
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_lazy_export() -> None:
    proc = run_script(
        """
        import sys, shmpool
        from shmpool.dask_pool import DaskPool
        assert shmpool.DaskPool is DaskPool and "distributed" in sys.modules
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_importing_dask_pool_keeps_the_kernel_decorator() -> None:
    # The decorator's module is private (shmpool._kernel): importing the pools, which import
    # it, must leave the @shmpool.kernel decorator in place on the package.
    proc = run_script(
        """
        import shmpool
        from shmpool.dask_pool import DaskPool
        from shmpool.pool import SharedPool

        @shmpool.kernel(chunks=2)
        def inc(x):
            x += 1

        assert isinstance(inc, shmpool.Kernel), shmpool.kernel
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_without_dask_a_clear_import_error() -> None:
    proc = run_script(
        """
        import sys
        sys.modules["distributed"] = None  # as if Dask were not installed
        import shmpool
        for get in (lambda: shmpool.DaskPool, lambda: __import__("shmpool.dask_pool")):
            try:
                get()
            except ImportError as exc:
                print(exc)
            else:
                raise SystemExit("no ImportError")
        """
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all('pip install "shmpool[dask]"' in line for line in lines)


# ---- progress --------------------------------------------------------------------------------


def test_progress_bar_and_pool_default(dask_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with DaskPool(dask_client, progress={"desc": "default-bar"}) as pool:
        pool.map(kernels.sleep_chunk, np.zeros(6), chunks=1, seconds=0.05)
        err = capsys.readouterr().err
        assert "default-bar" in err and "6/6" in err
        pool.map(kernels.chunk_length, np.zeros(4), chunks=2, progress=False)
        assert capsys.readouterr().err == ""


def test_retries_are_passed_on_and_chunk_timeout_is_refused(dask_pool: DaskPool) -> None:
    # Dask reruns a task its worker lost by itself; retries= reaches client.submit.
    assert dask_pool.map(np.sum, np.arange(6), chunks=3, retries=2) == [3, 12]
    with pytest.raises(ValueError, match="chunk_timeout is not available on a DaskPool"):
        dask_pool.map(np.sum, np.arange(6), chunk_timeout=1.0)
    with pytest.raises(ValueError, match="retries must be a non-negative int"):
        dask_pool.map(np.sum, np.arange(6), retries=-1)
    shmpool.advance()  # a no-op here, as in any code outside a SharedPool or ThreadPool map


def test_threads_share_a_pool(dask_pool: DaskPool) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(3):
                data = np.random.default_rng(seed).random(5000)
                x = data.copy()
                dask_pool.map(kernels.double_in_place, x, chunks=1000)
                assert np.array_equal(x, data * 2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_remote_traceback_points_at_a_cell_kernel(dask_pool: DaskPool) -> None:
    # The workers are processes that never saw the "cell": its lines travel with the kernel.
    from .test_tracebacks import assert_points_at_cell, cell_kernel

    kernel, filename = cell_kernel()
    with pytest.raises(ZeroDivisionError) as info:
        dask_pool.map(kernel, np.arange(8.0), chunks=4)
    assert_points_at_cell(str(info.value.__cause__), filename)
    with pytest.raises(ZeroDivisionError) as submitted:
        dask_pool.submit(kernel, np.arange(8.0)).result()
    assert_points_at_cell(str(submitted.value.__cause__), filename)
