"""End to end, for real: `dvc exp run` / `dvc repro`, a Hydra multirun and MLflow, in temporary repo copies."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import copy_repo, needs_ml_small, run_cmd

pytestmark = pytest.mark.e2e

USER_COLUMNS = ["alpha", "users_eval", "users_skipped", "mean_cand", "recall@10", "map@10",
                "alpha_time_sec", "alpha_timed_out"]


def _mlflow_runs(repo: Path) -> pl.DataFrame:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recopt")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return pl.DataFrame({
        "name": [r.info.run_name for r in runs],
        "sweep": [r.data.tags.get("recopt.sweep") for r in runs],
        "recall": [r.data.metrics.get("recall_at_10") for r in runs],
        "commit": [r.data.tags.get("recopt.git_commit") for r in runs],
    })


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("tiny"))
    run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny"], repo)
    return repo


def test_dvc_pipeline_builds_every_output(tiny_repo: Path) -> None:
    params = (tiny_repo / "params.yaml").read_text()
    assert "preset: tiny" in params  # DVC's Hydra composition wrote the override
    results = tiny_repo / "data/evaluate/results"
    tuning = pl.read_csv(results / "tuning_results.csv")
    assert tuning.columns[: len(USER_COLUMNS)] == USER_COLUMNS
    assert tuning["alpha"].to_list() == [0.35, 0.5, 0.65]
    assert (tuning["users_eval"] > 0).all() and not tuning["alpha_timed_out"].any()
    baselines = pl.read_csv(results / "baselines.csv")
    assert sorted(baselines["run"].to_list()) == sorted(
        f"baseline={b}" for b in ("popularity", "random", "cf_only", "content_only"))
    slices = pl.read_csv(results / "slices.csv")
    assert set(slices["slice"]) == {"cold", "warm", "heavy"}
    lists = pl.read_parquet(results / "lists.parquet")
    assert lists.group_by("run", "userId").agg(pl.col("rank").max())["rank"].max() == 50
    metrics = json.loads((tiny_repo / "data/evaluate/metrics.json").read_text())
    assert metrics["best_alpha"] in (0.35, 0.5, 0.65)
    report = (results / "report.md").read_text()
    assert "## Acceptance gates" in report and (results / "alpha_curve.png").stat().st_size > 1000
    runs = _mlflow_runs(tiny_repo)
    assert {"alpha=0.35", "alpha=0.50", "alpha=0.65", "baseline=popularity", "baseline=cf_only"} <= set(runs["name"])
    best = tuning.sort("recall@10", descending=True).row(0, named=True)
    logged = runs.filter(pl.col("name") == f"alpha={best['alpha']:.2f}")["recall"][0]
    assert logged == pytest.approx(best["recall@10"])
    status = run_cmd(["dvc", "status"], tiny_repo).stdout
    assert "up to date" in status


def test_changing_alpha_reruns_only_evaluate(tiny_repo: Path) -> None:
    # DVC composes conf/ + this run's overrides, so the preset is given again
    out = run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny", "-S", "alpha=0.8"], tiny_repo).stdout
    assert "Running stage 'evaluate'" in out
    for stage in ("ingest", "split", "embed-load", "cf-load", "candidates"):
        assert f"Running stage '{stage}'" not in out
    tuning = pl.read_csv(tiny_repo / "data/evaluate/results/tuning_results.csv")
    assert 0.8 in tuning["alpha"].to_list()


def test_hydra_multirun_sweep_logs_every_run(tiny_repo: Path) -> None:
    # jobs in parallel through hydra-joblib-launcher: every run must still be recorded
    out = run_cmd(["python", "-m", "stages.evaluate", "-m", "alpha=0.2,0.9", "data.preset=tiny",
                   "hydra/launcher=joblib"], tiny_repo).stdout
    assert "baseline=content_only" in out  # the comparison table printed at the end
    sweeps = sorted((tiny_repo / "data/hydra/sweep").iterdir())
    table = pl.read_csv(sweeps[-1] / "comparison.csv")
    assert {"alpha=0.20", "alpha=0.90", "baseline=popularity"} <= set(table["run"])
    runs = _mlflow_runs(tiny_repo).filter(pl.col("sweep") == f"hydra-{sweeps[-1].name}")
    assert {"alpha=0.20", "alpha=0.90", "baseline=random", "baseline=cf_only"} <= set(runs["name"])
    assert runs["recall"].is_not_null().all()


def test_dvc_pipeline_on_movielens_sample(tmp_path: Path) -> None:
    ml = needs_ml_small()
    repo = copy_repo(tmp_path)
    run_cmd(["dvc", "exp", "run", "-S", "data=movielens", "-S", f"data.path={ml}"], repo)
    manifest = json.loads((repo / "data/ingest/manifest.json").read_text())
    assert manifest["counts"]["n_ratings"] == 100_836 and manifest["counts"]["n_users"] == 610
    tuning = pl.read_csv(repo / "data/evaluate/results/tuning_results.csv")
    assert tuning.height == 3 and (tuning["recall@10"] > 0).all()
    assembly = json.loads((repo / "data/candidates/assembly.json").read_text())
    assert assembly  # the aligned-inputs description exists
