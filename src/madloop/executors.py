"""Where sweep tasks run: one small interface over an engine that does the distribution.

An :class:`Executor` maps a top-level, picklable function over tasks and yields one
:class:`TaskResult` per task as each finishes (in completion order, not submission order). A task
that raises becomes a result with ``error`` set; it never stops the others.

- :class:`SerialExecutor`: in this process, one after another (debugging, tiny sweeps).
- :class:`LocalExecutor`: ``concurrent.futures.ProcessPoolExecutor`` on this machine (default).
- :class:`RayExecutor`: Ray tasks on an existing cluster (``address``) or on a local Ray instance
  it starts with ``ray.init(num_cpus=workers)``. Ray is imported here only, and only lazily.

No executor schedules, queues or retries anything itself: the engine does.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray", "serial")


@dataclass(frozen=True)
class TaskResult(Generic[R]):
    """One finished task: its ``value`` or its ``error`` (``"Type: message"``) and traceback.

    ``seconds`` is the time the function ran inside the worker (so an executor's overhead is the
    wall time minus the sum of these); ``worker`` says where (``host:pid``).
    """

    task_id: str
    value: R | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = float("nan")
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs ``fn(task)`` for every task; yields a :class:`TaskResult` per task as it finishes.

    ``fn`` must be a top-level (picklable) function. A task's id is its ``id`` attribute, else its
    position in ``tasks``.
    """

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[TaskResult[R]]: ...


def task_id(task: Any, index: int) -> str:
    return str(getattr(task, "id", index))


def call(fn: Callable[[T], R], task: T, tid: str) -> TaskResult[R]:
    """Run one task, timing it and turning an exception into an error result (in the worker, so
    unpicklable exceptions never have to travel)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    try:
        value = fn(task)
    except Exception as exc:  # a failed task is a result, not a crash of the sweep
        return TaskResult(
            tid,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            seconds=time.perf_counter() - t0,
            worker=worker,
        )
    return TaskResult(tid, value=value, seconds=time.perf_counter() - t0, worker=worker)


class SerialExecutor:
    """Every task in this process, in order."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[TaskResult[R]]:
        for i, task in enumerate(tasks):
            yield call(fn, task, task_id(task, i))

    def __repr__(self) -> str:
        return "SerialExecutor()"


def _limit_threads(n: int) -> None:
    """Worker initializer: one BLAS/OpenMP thread per worker, as Ray gives a one-CPU task.

    Parallelism comes from the workers; ``workers`` processes x all-core BLAS would oversubscribe
    the CPUs, and spinning BLAS threads are slow on a busy machine."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # for libraries loaded later (torch reads it at import)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        pass


class LocalExecutor:
    """A process pool on this machine (``concurrent.futures``), ``workers`` processes.

    Workers start from a ``forkserver`` that has imported madloop once, so each starts fast and
    none inherits the parent's threads (a progress bar's, say). ``workers=None``: all CPUs.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[TaskResult[R]]:
        if not tasks:
            return
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["madloop.sweeps"])
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=ctx,
            initializer=_limit_threads,
            initargs=(1,),
        )
        futures: dict[Future, str] = {}
        try:
            for i, task in enumerate(tasks):
                tid = task_id(task, i)
                futures[pool.submit(call, fn, task, tid)] = tid
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        yield fut.result()
                    except Exception as exc:  # the worker died (killed, out of memory...)
                        yield TaskResult(
                            futures[fut], error=f"{type(exc).__name__}: {exc}", worker="local"
                        )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"


class RayExecutor:
    """Ray tasks, one CPU each. ``address``: an existing cluster (``"auto"``, ``"HOST:6379"``,
    ``"ray://HOST:10001"``), where ``workers`` (if given) caps the tasks running at once; None: a
    local Ray instance with ``workers`` CPUs, shut down again afterwards. If Ray is already
    initialised in this process, that session is used as it is.

    ``max_in_flight`` bounds the tasks submitted but not yet collected (default: twice the
    cluster's CPUs), so a sweep of many tasks never floods the object store.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self.address = address
        self.workers = workers
        self.max_in_flight = max_in_flight

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[TaskResult[R]]:
        if not tasks:
            return
        try:
            import ray
        except ImportError:
            raise ImportError("the ray executor needs Ray: pip install 'madloop[ray]'") from None
        started = False
        if not ray.is_initialized():
            import logging

            if self.address:
                try:
                    ray.init(address=self.address, logging_level=logging.WARNING)
                except ConnectionError as exc:
                    raise ConnectionError(
                        f"--address {self.address}: no Ray cluster answered ({exc}); start one "
                        "with `ray start --head` and pass the address it prints"
                    ) from None
            else:
                ray.init(
                    num_cpus=self.workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            started = True
        remote = ray.remote(num_cpus=1, max_retries=0)(call)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if self.max_in_flight:
            limit = self.max_in_flight
        elif self.address and self.workers:  # on a shared cluster: at most `workers` at once
            limit = self.workers
        else:  # Ray runs as many as there are CPUs; a few more queued keep them busy
            limit = 2 * cpus
        todo = iter(enumerate(tasks))
        pending: dict[Any, str] = {}

        def submit() -> None:
            for i, task in todo:
                tid = task_id(task, i)
                pending[remote.remote(fn, task, tid)] = tid
                if len(pending) >= limit:
                    return

        try:
            submit()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                tid = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the worker or node died
                    yield TaskResult(tid, error=f"{type(exc).__name__}: {exc}", worker="ray")
                submit()
        finally:
            for ref in pending:
                ray.cancel(ref)
            if started:
                ray.shutdown()

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, workers={self.workers})"


def make_executor(
    kind: str | Executor = "local", *, workers: int | None = None, address: str | None = None
) -> Executor:
    """``"local"`` (default), ``"ray"`` or ``"serial"``; an Executor instance is returned as is."""
    if not isinstance(kind, str):
        return kind
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    if kind == "serial":
        return SerialExecutor()
    raise ValueError(f"executor: unknown executor {kind!r} (available: {', '.join(EXECUTORS)})")
