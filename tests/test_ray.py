"""engine=ray, for real: a local Ray, then a two-node cluster on 127.0.0.1 (ray.cluster_utils.Cluster)
that loses its worker node mid-stage. The candidates and evaluate artifacts must be byte-identical to
engine=local whatever the workers and the order tasks finish; and the Hydra sweep on the Ray launcher.

Needs the extra `recopt[ray]`; skipped without it unless RECOPT_REQUIRE_RAY=1 (CI sets it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

from recopt.config import Config
from tests.conftest import build_folds, copy_repo, run_cmd, tmp_config

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: every node on 127.0.0.1
if os.environ.get("RECOPT_REQUIRE_RAY"):
    import ray
else:
    ray = pytest.importorskip("ray", reason="optional extra recopt[ray] is not installed")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

pytestmark = pytest.mark.e2e


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def with_engine(cfg: Config, root: Path, **engine: object) -> Config:
    """`cfg` writing candidates, evaluate, checkpoints and run facts under `root`, on another engine."""
    paths = dataclasses.replace(cfg.paths, candidates=str(root / "candidates"), evaluate=str(root / "evaluate"),
                                checkpoints=str(root / "checkpoints"), runs=str(root / "runs"),
                                metrics=str(root / "metrics"), mlflow_uri=f"sqlite:///{root}/mlruns/mlflow.db",
                                mlflow_artifacts=str(root / "mlruns/artifacts"))
    ray_cfg = dataclasses.replace(cfg.engine.ray, **{k: v for k, v in engine.items() if k in ("address",)})
    eng = dataclasses.replace(cfg.engine, name="ray", ray=ray_cfg)
    return dataclasses.replace(cfg, paths=paths, engine=eng)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny pipeline on engine=local in batches of 32 users: the reference artifacts."""
    from recopt.ingest import ingest
    from recopt.split import run_split
    from recopt.study import run_tune

    cfg = tmp_config(tmp_path_factory.mktemp("local"), "data.preset=tiny", "candidates.batch_users=32",
                     "evaluate.references=[]")
    ingest(cfg)
    run_split(cfg)
    build_folds(cfg, ("tune",))
    run_tune(cfg)
    return cfg


def _run(cfg: Config) -> None:
    from recopt.pools import run_candidates
    from recopt.study import run_tune

    run_candidates(cfg, "tune")
    run_tune(cfg)


def _same_as_local(local: Config, other: Config) -> None:
    for stage in ("candidates", "evaluate"):
        a, b = files(Path(getattr(local.paths, stage)) / "tune"), files(Path(getattr(other.paths, stage)) / "tune")
        assert a == b, f"{stage}: {sorted(k for k in a if a.get(k) != b.get(k))}"


def test_local_ray_gives_byte_identical_candidates_and_evaluation(local: Config, tmp_path: Path) -> None:
    other = with_engine(local, tmp_path)
    try:
        _run(other)
    finally:
        ray.shutdown()
    _same_as_local(local, other)


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 * 2**20,
                                                        "include_dashboard": False})
    worker = c.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    c.wait_for_nodes()
    yield c, worker
    ray.shutdown()
    c.shutdown()


def _where(_: object, i: int) -> tuple[int, str]:
    time.sleep(0.3)  # long enough that one 1-CPU node cannot take them all
    return i, ray.get_runtime_context().get_node_id()


def test_two_nodes_share_the_batches_and_a_lost_node_changes_nothing(local: Config, tmp_path: Path,
                                                                     cluster, monkeypatch) -> None:
    from recopt import engine as engine_module

    c, worker = cluster
    other = with_engine(local, tmp_path, address=c.address)
    spread = list(engine_module.make_engine(other.engine).map(_where, None, range(8), desc="nodes"))
    assert [i for i, _ in spread] == list(range(8)) and len({node for _, node in spread}) == 2

    real = engine_module.RayEngine.map
    state = {"killed": False}

    def map_then_kill(self, fn, shared, tasks, **kw):  # the worker node dies after the first batch
        for n, result in enumerate(real(self, fn, shared, tasks, **kw)):
            if n == 0 and not state["killed"]:
                c.remove_node(worker)
                state["killed"] = True
            yield result

    monkeypatch.setattr(engine_module.RayEngine, "map", map_then_kill)
    _run(other)
    assert state["killed"]
    _same_as_local(local, other)


def test_hydra_sweep_on_the_ray_launcher_logs_every_run(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)
    run_cmd(["python", "-m", "stages.compose", "data.preset=tiny"], repo)
    for stage in ("ingest", "split", "embed-load@tune", "cf-load@tune", "candidates@tune"):
        run_cmd(["dvc", "repro", "-s", stage], repo)
    out = run_cmd(["python", "-m", "stages.evaluate", "-m", "alpha=0.2,0.9", "data.preset=tiny",
                   "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                   "+hydra.launcher.ray.init.include_dashboard=false"], repo).stdout
    csv = repo / out.split("comparison: ")[1].split()[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recopt")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`recopt.sweep` = 'hydra-{csv.parent.name}'")
    names = sorted(r.data.tags.get("recopt.run", "<parent>") for r in runs)
    jobs = [n.split(",")[0] for n in names if n.startswith("alpha=")]  # no evaluate@tune: the config's cold rule
    assert sorted(jobs) == ["alpha=0.2", "alpha=0.9"] and names.count("<parent>") == 1
    assert all(n.endswith("(from the config)") for n in names if n.startswith("alpha="))
    assert json.loads((csv.parent / "0" / "result.json").read_text())["complete"]
