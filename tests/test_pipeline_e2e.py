"""End to end, for real: `dvc exp run` / `dvc repro`, `dvc exp show`, a Hydra multirun and MLflow, in
temporary repo copies."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import zlib
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import chromium_dom, copy_repo, needs_ml_small, run_cmd, tool_env

pytestmark = pytest.mark.e2e

USER_COLUMNS = ["alpha", "users_eval", "users_skipped", "mean_cand", "recall@10", "map@10", "alpha_timed_out"]
FOLD_STAGES = ("embed-load", "cf-load", "candidates", "evaluate")
# the README's `dvc exp show` recipes (between its <!-- exp-show --> marker and the end of that block)
README_RECIPES = [line for line in (Path(__file__).resolve().parents[1] / "README.md").read_text()
                  .split("<!-- exp-show -->", 1)[1].split("```", 2)[1].splitlines() if line.startswith("dvc exp show")]


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")


def _runs(repo: Path) -> list:
    client = _client(repo)
    exp = client.get_experiment_by_name("recopt")
    return client.search_runs([exp.experiment_id], max_results=5000)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repo copy after `dvc exp run -S data.preset=tiny`, and what the run printed."""
    repo = copy_repo(tmp_path_factory.mktemp("tiny"))
    return repo, run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny"], repo).stdout


@pytest.fixture(scope="module")
def tiny_repo(tiny_run: tuple[Path, str]) -> Path:
    return tiny_run[0]


def test_dvc_pipeline_builds_both_folds_and_every_output(tiny_repo: Path) -> None:
    assert "preset: tiny" in (tiny_repo / "params.yaml").read_text()  # DVC's Hydra composition wrote it
    sel = json.loads((tiny_repo / "data/evaluate/tune/selection.json").read_text())
    for fold in ("tune", "test"):
        results = tiny_repo / "data/evaluate" / fold
        tuning = pl.read_csv(results / "tuning_results.csv")
        assert tuning.columns[: len(USER_COLUMNS)] == USER_COLUMNS
        # the grid and every point the search added on validation, reported on both folds
        assert tuning["alpha"].to_list() == sorted(sel["alpha"]["tried"])
        assert {0.35, 0.5, 0.65} <= set(sel["alpha"]["tried"])
        assert (tuning["users_eval"] > 0).all() and not tuning["alpha_timed_out"].any()
    runs = pl.read_csv(tiny_repo / "data/evaluate/test/runs.csv")
    chosen = dict(zip(runs["run"], runs["chosen"]))
    assert chosen[f"alpha={sel['alpha']['chosen']!r}"] == "alpha* (validation)"
    assert chosen[f"baseline={sel['baseline']['chosen']}"] == "best baseline (validation)"
    assert any(n.startswith("adaptive") for n in chosen) and any(n.startswith("reference=ease") for n in chosen)
    gates = json.loads((tiny_repo / "data/evaluate/test/gates.json").read_text())
    assert gates["gate1"]["verdict"] in ("PASS", "INCONCLUSIVE", "FAIL")
    lists = pl.read_parquet(tiny_repo / "data/evaluate/test/lists/*.parquet")
    assert lists.group_by("run", "userId").agg(pl.col("rank").max())["rank"].max() == 50
    assert "up to date" in run_cmd(["dvc", "status"], tiny_repo).stdout


def test_console_ends_with_the_table_the_verdicts_and_the_report(tiny_run: tuple[Path, str]) -> None:
    out = tiny_run[1]
    tail = out[out.index("evaluate@test — runs on test"):]
    assert "* alpha=" in tail and "recall@10" in tail and "Gate 1 " in tail and "Gate 2 " in tail
    assert "report: data/evaluate/test/report.md" in tail


def test_dvc_exp_show_lists_the_metrics_of_each_experiment(tiny_repo: Path) -> None:
    run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny", "-n", "alpha-05"], tiny_repo)
    run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny", "-S", "alpha=0.8", "-n", "alpha-08"], tiny_repo)
    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], tiny_repo).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    found = {}
    for exp in experiments:
        for rev in exp.get("revs", []):
            data = rev.get("data") or {}
            metrics = data.get("metrics", {}).get("metrics/test.json", {}).get("data", {})
            if metrics:
                found[rev.get("name") or data.get("name")] = metrics
    assert {"alpha-05", "alpha-08"} <= set(found)
    for block in ("alpha", "star"):
        for m in ("recall@10", "map@10", "ndcg@10", "coverage@10", "novelty@10"):
            assert isinstance(found["alpha-08"]["test"][block][m], float)
    # experiments that differ in alpha differ in what they report: each reports its own alpha's run
    assert found["alpha-05"]["test"]["alpha"]["recall@10"] != found["alpha-08"]["test"]["alpha"]["recall@10"]
    diff = json.loads(run_cmd(["dvc", "metrics", "diff", "alpha-05", "alpha-08", "--json"], tiny_repo).stdout)
    changed = diff.get("metrics/test.json", {})
    assert "test.alpha.recall@10" in changed, changed


@pytest.mark.parametrize("recipe", README_RECIPES)
def test_the_readmes_dvc_exp_show_recipes_fit_120_columns(tiny_repo: Path, recipe: str) -> None:
    """The README's `dvc exp show` lines print every column they keep, untruncated, in 120 columns."""
    env = tool_env() | {"COLUMNS": "120"}
    proc = subprocess.run(["bash", "-c", recipe + " --no-pager"], cwd=tiny_repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "…" not in proc.stdout and max(len(line) for line in lines) <= 120, proc.stdout
    assert "alpha-08" in proc.stdout and "alpha-05" in proc.stdout
    header = next(line for line in lines if "Experiment" in line)
    assert ("test.alpha.recall@10" in header) or ("val.star.alpha" in header), header


def test_dvc_plots_render_without_a_network(tiny_repo: Path) -> None:
    """`python -m recopt plots HEAD alpha-08`: DVC's page with Vega inlined, drawn by headless Chromium with
    its network off (no CDN script can load, so a blank page would have no chart)."""
    out = run_cmd(["python", "-m", "recopt", "plots", "HEAD", "alpha-08", "--out", "plots_offline"], tiny_repo).stdout
    page = Path(out.strip().removeprefix("file://"))
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and not re.search(r"<script[^>]+src=", html)
    dom = chromium_dom(page)
    assert dom.count('class="marks"') >= 2, dom[-2000:]  # one chart per alpha curve (tune, test)
    assert "alpha-08" in dom


def test_changing_alpha_reruns_only_evaluate(tiny_repo: Path) -> None:
    out = run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny", "-S", "alpha=0.9"], tiny_repo).stdout
    assert "Running stage 'evaluate@tune'" in out and "Running stage 'evaluate@test'" in out
    for stage in ("ingest", "split", *[f"{s}@{f}" for s in FOLD_STAGES[:3] for f in ("tune", "test")]):
        assert f"Running stage '{stage}'" not in out, stage
    assert 0.9 in pl.read_csv(tiny_repo / "data/evaluate/tune/tuning_results.csv")["alpha"].to_list()


def test_a_stage_rerun_with_identical_data_does_not_rerun_what_follows(tiny_repo: Path) -> None:
    run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny"], tiny_repo)
    out = run_cmd(["dvc", "repro", "-f", "-s", "split"], tiny_repo).stdout
    assert "Running stage 'split'" in out
    status = run_cmd(["dvc", "status"], tiny_repo).stdout
    assert "up to date" in status, status


def test_mlflow_holds_parents_children_params_datasets_and_artifacts(tiny_repo: Path) -> None:
    client = _client(tiny_repo)
    exp = client.get_experiment_by_name("recopt")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.recopt"])  # the saved view the printed link opens
    state = json.loads(zlib.decompress(base64.b64decode(view["state"].removeprefix("deflate;"))))
    assert view["name"] == "recopt: key metrics" and "metrics.`recall_at_10`" in state["selectedColumns"]
    runs = _runs(tiny_repo)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parents and children and all(r.info.status == "FINISHED" for r in runs)
    parent_ids = {p.info.run_id for p in parents}
    assert all(c.data.tags["mlflow.parentRunId"] in parent_ids for c in children)
    for c in children:
        name = c.data.tags["recopt.run"]
        if name.startswith("alpha=") and "full" not in name:
            assert c.data.params["alpha"] == name.split("=")[1]
        assert c.info.run_name.startswith("synthetic-tiny · ")
        assert c.info.end_time > c.info.start_time
        ds = c.inputs.dataset_inputs
        assert ds and ds[0].dataset.name == "synthetic-tiny" and len(ds[0].dataset.digest) > 8
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "slices.csv" in arts
        assert c.data.tags["recopt.chosen"] != "cold-start grid (information)"  # those rows are the parent's runs.csv
    for p in parents:
        arts = {a.path for a in client.list_artifacts(p.info.run_id)}
        assert {"report.md", "alpha_curve.png", "runs.csv"} <= arts
    # within a fold, every alpha child carries the same metric set
    for fold in ("tune", "test"):
        keys = [set(c.data.metrics) for c in children if c.data.tags["recopt.run"].startswith("alpha=")
                and c.data.tags["recopt.fold"] == fold]
        assert keys and all(k == keys[0] for k in keys), fold
        assert {"recall_at_10", "warm.recall_at_10", "cold.users"} <= keys[0]


def test_hydra_multirun_sweep_compares_on_the_same_users_and_logs_every_run(tiny_repo: Path) -> None:
    out = run_cmd(["python", "-m", "stages.evaluate", "-m", "alpha=0.2,0.9", "data.preset=tiny",
                   "hydra/launcher=joblib"], tiny_repo).stdout
    assert "{" not in out.split("sweep on validation")[-1]  # no raw dicts
    csv = Path(out.split("comparison: ")[1].split()[0])
    sweep = csv.parent
    table = pl.read_csv(tiny_repo / csv)
    assert {"alpha=0.2", "alpha=0.9", "baseline=popularity"} <= set(table["run"])
    assert table["users_compared"].n_unique() == 1 and (table["users_eval"] == table["users_compared"]).all()
    runs = [r for r in _runs(tiny_repo) if r.data.tags.get("recopt.sweep") == f"hydra-{sweep.name}"]
    names = {r.data.tags.get("recopt.run") for r in runs}
    assert {"alpha=0.2", "alpha=0.9", "baseline=random", "baseline=cf_only"} <= names
    assert all(r.data.tags.get("recopt.fold") == "tune" for r in runs)
    # a sweep's alpha runs log the same metrics as the DVC tune fold's alpha runs
    dvc_keys = next(set(r.data.metrics) for r in _runs(tiny_repo) if r.data.tags.get("recopt.fold") == "tune"
                    and r.data.tags.get("recopt.sweep", "").startswith("dvc-")
                    and r.data.tags.get("recopt.run", "").startswith("alpha=0.35"))
    sweep_keys = next(set(r.data.metrics) for r in runs if r.data.tags.get("recopt.run") == "alpha=0.2")
    assert sweep_keys == dvc_keys


def test_one_run_name_is_one_computation(tiny_repo: Path) -> None:
    """A sweep job of alpha=0.5 serves cold users by the rule chosen on validation, as the pipeline does:
    same name, same numbers. A sweep whose rerank values differ uses the config's rule and says so."""
    run_cmd(["dvc", "exp", "run", "-S", "data.preset=tiny"], tiny_repo)
    out = run_cmd(["python", "-m", "stages.evaluate", "-m", "alpha=0.5", "data.preset=tiny"], tiny_repo).stdout
    sweep = Path(out.split("comparison: ")[1].split()[0]).parent.name
    runs = _runs(tiny_repo)
    pipeline = [r for r in runs if r.data.tags.get("recopt.fold") == "tune" and r.data.tags.get("recopt.run") == "alpha=0.5"
                and r.data.tags.get("recopt.sweep", "").startswith("dvc-")]
    job = [r for r in runs if r.data.tags.get("recopt.sweep") == f"hydra-{sweep}" and r.info.run_name.endswith("validation")
           and r.data.tags.get("recopt.run") == "alpha=0.5"]
    assert pipeline and job and pipeline[0].info.run_name == job[0].info.run_name
    for key in ("recall_at_10", "map_at_10", "ndcg_at_10", "coverage_at_10", "novelty_at_10", "cold.recall_at_10"):
        assert job[0].data.metrics[key] == pipeline[0].data.metrics[key], key
    assert job[0].data.params["cold_rule"] == pipeline[0].data.params["cold_rule"]
    other = run_cmd(["python", "-m", "stages.evaluate", "-m", "alpha=0.5", "data.preset=tiny", "rerank.mmr_lambda=0.1"],
                    tiny_repo).stdout
    assert "cold users get the config's" in other
    label = other.split("(from the config)")[0].splitlines()[-1]
    assert "alpha=0.5" in label and "cold: beta=" in label


def test_a_sweep_refuses_what_the_pipeline_was_not_built_with(tiny_repo: Path) -> None:
    """A Hydra run composes conf/ with its overrides: a value the artifacts were not built with would be
    reported under the wrong label, and a value listed twice would be two rows of one run."""
    cases = ((["data.preset=tiny", "candidates.c_max=300"],
              r"its input candidates@tune was built with candidates\.c_max=\d+ \(the config now has 300\)"),
             (["alpha=0.4"], r"was built with data\.preset=\"tiny\" \(the config now has \"small\"\)"),
             (["data.preset=tiny", "alpha=0.3,0.30"], r"alpha: the sweep lists 0\.3 more than once"))
    for overrides, message in cases:
        proc = subprocess.run(["python", "-m", "stages.evaluate", "-m", *overrides], cwd=tiny_repo, env=tool_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_fresh_clone_then_dvc_repro_leaves_git_clean(tiny_repo: Path, tmp_path: Path) -> None:
    """The module's tiny pipeline, committed with its dvc.lock; a fresh clone's dvc repro changes no tracked file."""
    run_cmd(["dvc", "repro"], tiny_repo)  # up to date after the tests above (or brought up to date)
    for cmd in (["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock", "--allow-empty"]):
        subprocess.run(cmd, cwd=tiny_repo, check=True, capture_output=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tiny_repo), str(clone)], check=True)
    run_cmd(["dvc", "repro"], clone)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", status


def test_dvc_pipeline_on_movielens_sample(tmp_path: Path) -> None:
    ml = needs_ml_small()
    repo = copy_repo(tmp_path)
    run_cmd(["dvc", "exp", "run", "-S", "data=movielens", "-S", f"data.path={ml}"], repo)
    manifest = json.loads((repo / "data/ingest/manifest.json").read_text())
    assert manifest["summary"]["counts"]["n_ratings"] == 100_836 and manifest["summary"]["counts"]["n_users"] == 610
    tuning = pl.read_csv(repo / "data/evaluate/test/tuning_results.csv")
    assert tuning.height >= 3 and (tuning["recall@10"] > 0).all()
    metrics = json.loads((repo / "metrics/test.json").read_text())
    assert metrics["test"]["star"]["alpha"] in tuning["alpha"].to_list()


def test_an_optuna_search_maximises_validation_recall(tiny_repo: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    out = run_cmd(["python", "-m", "stages.evaluate", "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3",
                   "data.preset=tiny", "rerank.mmr_lambda=interval(0,0.5)"], tiny_repo).stdout
    csv = tiny_repo / out.split("comparison: ")[1].split()[0]
    table = pl.read_csv(csv)
    trials = table.filter(pl.col("run").str.starts_with("alpha="))
    assert trials.height == 3 and trials["run"].str.contains("rerank.mmr_lambda=").all()
    best = yaml.safe_load((csv.parent / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(trials["recall@10"].max())
    plots = run_cmd(["dvc", "plots", "diff", "HEAD", "--json"], tiny_repo).stdout
    assert "alpha_curve" in plots
