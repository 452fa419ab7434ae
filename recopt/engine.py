"""The batch executor: one way to run a pure batch function over many user batches.

A stage hands :meth:`Engine.map` a module-level function ``fn(shared, task)``, the
read-only arrays every batch shares, and one task per user batch. Results come
back in task order, whatever order the batches finish in, so the driver writes
the same bytes for any number of workers.

* ``engine=local``: ``engine.workers`` threads on this machine. The shared arrays are
  the driver's own (no copy); numba kernels, faiss and numpy release the GIL.
* ``engine=ray``: ``ray.put`` the shared arrays once (workers read them zero-copy
  from the object store), one Ray task per batch, results returned to the driver,
  which writes every file -- workers never need the driver's disk. A task whose
  worker dies is retried by Ray (``engine.ray.max_retries``).

Inside a batch every library runs on one thread (BLAS, OpenMP, faiss), so a batch
computes identical bytes on a 1-worker laptop and a 100-node cluster. At most
``engine.max_in_flight`` tasks are queued or unclaimed at once (backpressure:
memory stays bounded when workers are slower than the driver). With a deadline,
no task starts after it; the tasks already running finish.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


from recopt.config import EngineConfig
from recopt.errors import RecoptError
from recopt.runlog import Progress

RAY_EXTRA = "pip install 'recopt[ray]'"


@contextmanager
def one_thread_per_batch() -> Iterator[None]:
    """Limit BLAS, OpenMP and faiss to one thread (the executor parallelises over batches)."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _one_thread_here() -> None:
    """Per-thread part of the limits: OpenMP's thread count is a property of the calling thread."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(limits=1, user_api="openmp")


def _in_ray_worker(fn: Callable[[Any, Any], Any], shared: Any, task: Any) -> Any:
    with one_thread_per_batch():
        return fn(shared, task)


class Engine:
    """Runs `fn(shared, task)` for every task; subclasses decide where."""

    name = "engine"

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, tasks: Iterable[Any], *, desc: str,
            total: int | None = None, deadline: float | None = None) -> Iterator[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (a no-op for engines that hold none)."""


class LocalEngine(Engine):
    name = "local"

    def __init__(self, workers: int, max_in_flight: int) -> None:
        self.workers, self.max_in_flight = workers, max(max_in_flight, workers)

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, tasks: Iterable[Any], *, desc: str,
            total: int | None = None, deadline: float | None = None) -> Iterator[Any]:
        todo = iter(tasks)
        with one_thread_per_batch(), ThreadPoolExecutor(self.workers, thread_name_prefix="recopt",
                                                        initializer=_one_thread_here) as pool, \
                Progress(total, desc, "batches") as bar:
            pending: deque[Any] = deque()

            def top_up() -> None:
                while len(pending) < self.max_in_flight and (deadline is None or time.perf_counter() < deadline):
                    task = next(todo, _END)
                    if task is _END:
                        return
                    pending.append(pool.submit(fn, shared, task))

            top_up()
            while pending:
                result = pending.popleft().result()
                bar.update()
                yield result
                top_up()


_END = object()


class RayEngine(Engine):
    name = "ray"

    def __init__(self, cfg: EngineConfig) -> None:
        try:
            import ray
        except ImportError:
            raise RecoptError(f"engine=ray needs Ray: {RAY_EXTRA}") from None
        self.ray, self.cfg = ray, cfg
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                ray.init(address=cfg.ray.address or None, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise RecoptError(f"engine.ray.address={cfg.ray.address!r}: cannot connect to Ray: {err} — "
                                  "start the cluster (`ray start --head`) or set engine.ray.address=null "
                                  "for a local Ray") from None
        self.remote = ray.remote(num_cpus=cfg.ray.num_cpus_per_task, max_retries=cfg.ray.max_retries,
                                 retry_exceptions=False, scheduling_strategy="SPREAD")(_in_ray_worker)

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, tasks: Iterable[Any], *, desc: str,
            total: int | None = None, deadline: float | None = None) -> Iterator[Any]:
        ray = self.ray
        shared_ref = ray.put(shared)
        todo = enumerate(tasks)
        running: dict[Any, int] = {}
        done: dict[int, Any] = {}
        next_out = 0
        with Progress(total, f"{desc} (ray)", "batches") as bar:
            def top_up() -> None:
                while (len(running) + len(done) < self.cfg.max_in_flight
                       and (deadline is None or time.perf_counter() < deadline)):
                    item = next(todo, None)
                    if item is None:
                        return
                    i, task = item
                    running[self.remote.remote(fn, shared_ref, task)] = i

            top_up()
            while running or done:
                while next_out not in done:
                    ready, _ = ray.wait(list(running), num_returns=1)
                    for ref in ready:
                        done[running.pop(ref)] = ray.get(ref)
                        bar.update()
                result = done.pop(next_out)
                next_out += 1
                yield result
                top_up()


def make_engine(cfg: EngineConfig) -> Engine:
    """The engine `cfg.name` names (`local` or `ray`)."""
    if cfg.name == "ray":
        return RayEngine(cfg)
    return LocalEngine(cfg.workers, cfg.max_in_flight)
