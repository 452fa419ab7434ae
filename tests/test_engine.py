"""Tests for recopt.engine: results in task order whatever order tasks finish in, bounded
work in flight, the deadline, errors, one thread per batch inside, and identical candidate
stores from one worker and from two."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from recopt.config import Config
from recopt.engine import LocalEngine, make_engine, one_thread_per_batch


class Tracker:
    """Counts tasks pulled from the task iterator, results consumed, and tasks running."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pulled = self.consumed = self.running = 0
        self.max_outstanding = self.max_running = 0
        self.pull_times: list[float] = []
        self.finish_order: list[int] = []

    def tasks(self, items):
        for item in items:
            with self.lock:
                self.pulled += 1
                self.pull_times.append(time.perf_counter())
                self.max_outstanding = max(self.max_outstanding, self.pulled - self.consumed)
            yield item

    def consume(self, results):
        out = []
        for r in results:
            with self.lock:
                self.consumed += 1
            out.append(r)
        return out


def _sleepy(tracker: Tracker, task: tuple[int, float]) -> int:
    i, seconds = task
    with tracker.lock:
        tracker.running += 1
        tracker.max_running = max(tracker.max_running, tracker.running)
    time.sleep(seconds)
    with tracker.lock:
        tracker.running -= 1
        tracker.finish_order.append(i)
    return i * 10


def test_results_come_back_in_task_order_when_tasks_finish_out_of_order():
    t = Tracker()
    # earlier tasks sleep longer, so later ones finish first
    tasks = [(i, 0.02 * (6 - i)) for i in range(6)]
    out = t.consume(LocalEngine(workers=3, max_in_flight=6).map(_sleepy, t, t.tasks(tasks), desc="t"))
    assert out == [i * 10 for i in range(6)]
    assert t.finish_order != sorted(t.finish_order)  # they really finished out of order


@pytest.mark.parametrize(("workers", "max_in_flight"), [(2, 3), (3, 3), (1, 4)])
def test_work_in_flight_and_running_tasks_are_bounded(workers, max_in_flight):
    t = Tracker()
    tasks = [(i, 0.005 * (i % 3)) for i in range(24)]
    out = t.consume(LocalEngine(workers, max_in_flight).map(_sleepy, t, t.tasks(tasks), desc="t", total=24))
    assert out == [i * 10 for i in range(24)]
    # tasks pulled but not yet handed back never exceed max_in_flight (the bound is reached)
    assert t.max_outstanding == max_in_flight
    assert 1 <= t.max_running <= workers


def test_max_in_flight_below_workers_still_uses_every_worker():
    t = Tracker()
    t.consume(LocalEngine(workers=3, max_in_flight=1).map(_sleepy, t, t.tasks([(i, 0.03) for i in range(9)]),
                                                          desc="t"))
    assert t.max_running == 3


def test_deadline_stops_submitting_new_tasks():
    with one_thread_per_batch():  # warm up (its first call imports faiss) so the deadline measures tasks only
        pass
    t = Tracker()
    deadline = time.perf_counter() + 0.15
    tasks = [(i, 0.05) for i in range(40)]
    out = t.consume(LocalEngine(workers=1, max_in_flight=2).map(_sleepy, t, t.tasks(tasks), desc="t",
                                                                deadline=deadline))
    assert 0 < len(out) < 40
    assert out == [i * 10 for i in range(len(out))]  # a prefix, in order
    assert len(out) == t.pulled                      # every submitted task finished and was returned
    assert all(p < deadline for p in t.pull_times)   # nothing was submitted after the deadline


def test_a_deadline_already_past_runs_nothing():
    t = Tracker()
    out = t.consume(LocalEngine(2, 2).map(_sleepy, t, t.tasks([(0, 0.0)]), desc="t",
                                          deadline=time.perf_counter() - 1))
    assert out == [] and t.pulled == 0


def _fails_on_three(_: object, task: int) -> int:
    if task == 3:
        raise ValueError(f"task {task} is broken")
    return task


def test_an_error_in_a_task_reaches_the_caller_after_the_earlier_results():
    got = []
    with pytest.raises(ValueError, match="task 3 is broken"):
        for r in LocalEngine(2, 4).map(_fails_on_three, None, range(8), desc="t"):
            got.append(r)
    assert got == [0, 1, 2]


def test_one_thread_per_batch_limits_blas_and_faiss_and_restores_them():
    import faiss
    from threadpoolctl import threadpool_info

    before = faiss.omp_get_max_threads()
    blas_before = [p["num_threads"] for p in threadpool_info()]
    with one_thread_per_batch():
        assert faiss.omp_get_max_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert faiss.omp_get_max_threads() == before
    assert [p["num_threads"] for p in threadpool_info()] == blas_before
    with pytest.raises(RuntimeError, match="boom"), one_thread_per_batch():
        raise RuntimeError("boom")
    assert faiss.omp_get_max_threads() == before


def _thread_limits(_: object, task: int) -> tuple[int, dict[str, int]]:
    import faiss
    from threadpoolctl import threadpool_info

    return faiss.omp_get_max_threads(), {p["filepath"]: p["num_threads"] for p in threadpool_info()}


def test_batches_run_on_one_thread_inside_local_worker_threads():
    # the module promise: inside a batch every library (BLAS, OpenMP, faiss) runs on one thread,
    # whichever worker thread runs it -- OpenMP limits are per thread, so the driver's are not enough
    for faiss_threads, pools in LocalEngine(2, 2).map(_thread_limits, None, range(4), desc="t"):
        assert faiss_threads == 1
        assert pools and all(n == 1 for n in pools.values()), pools


def _blas_task(_: object, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(120, 80))
    return a.T @ a @ rng.normal(size=80)


def test_one_and_two_workers_give_identical_bytes():
    one = list(LocalEngine(1, 1).map(_blas_task, None, range(12), desc="t"))
    two = list(LocalEngine(2, 4).map(_blas_task, None, range(12), desc="t"))
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()


def _pool_tables(cfg: Config, fold: str) -> list:
    from recopt.artifacts import open_artifact

    store = open_artifact(cfg.paths, "candidates", fold, reader="test")
    return [pq.read_table(store.part("pools", b)) for b in range(store.summary["n_batches"])]


def test_candidate_stores_are_identical_with_one_and_two_workers(tiny_built: Config, tmp_path):
    from recopt.pools import run_candidates

    stores = []
    for workers in (1, 2):
        cfg = dataclasses.replace(
            tiny_built,
            paths=dataclasses.replace(tiny_built.paths, candidates=str(tmp_path / f"w{workers}")),
            candidates=dataclasses.replace(tiny_built.candidates, batch_users=16),
            engine=dataclasses.replace(tiny_built.engine, name="local", workers=workers, max_in_flight=workers))
        summary = run_candidates(cfg, "test")
        assert summary["n_batches"] > 4  # several batches really ran concurrently
        stores.append(_pool_tables(cfg, "test"))
    one, two = stores
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert a.column_names == b.column_names
        for name in a.column_names:  # NaN (a missing component) equals NaN here, unlike Table.equals
            np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)


def test_make_engine_builds_the_configured_local_engine(tiny: Config):
    engine = make_engine(dataclasses.replace(tiny.engine, name="local", workers=2, max_in_flight=5))
    assert isinstance(engine, LocalEngine)
    t = Tracker()
    t.consume(engine.map(_sleepy, t, t.tasks([(i, 0.01) for i in range(12)]), desc="t"))
    assert t.max_outstanding == 5 and t.max_running == 2
    engine.close()
