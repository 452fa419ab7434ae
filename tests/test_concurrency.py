"""Concurrent runs, for real: two Hydra sweeps started together (on a fresh MLflow store, then on the
existing one) and two runs of the same alpha racing on the same checkpoints."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_repo, run_cmd, tool_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    run_cmd(["python", "-m", "stages.compose", "data.preset=tiny"], repo)
    for stage in ("ingest", "split", "embed-load@tune", "cf-load@tune", "candidates@tune"):
        run_cmd(["dvc", "repro", "-s", stage], repo)
    return repo


def start(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["python", "-m", "stages.evaluate", *args, "data.preset=tiny"], cwd=repo, env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def sweep_runs(repo: Path) -> dict[str, set[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recopt")
    out: dict[str, set[str]] = {}
    for r in client.search_runs([exp.experiment_id], max_results=5000):
        out.setdefault(r.data.tags.get("recopt.sweep", ""), set()).add(r.data.tags.get("recopt.run", "<parent>"))
    return out


@pytest.mark.parametrize("store", ["fresh", "existing"])
def test_two_sweeps_started_together_keep_every_run(repo: Path, store: str) -> None:
    if store == "fresh":
        shutil.rmtree(repo / "mlruns", ignore_errors=True)
    before = set((repo / "data/hydra/sweep").glob("*")) if (repo / "data/hydra/sweep").exists() else set()
    outs = finish([start(repo, "-m", "alpha=0.2,0.4", "hydra/launcher=joblib"),
                   start(repo, "-m", "alpha=0.6,0.8", "hydra/launcher=joblib")])
    folders = [Path(o.split("comparison: ")[1].split()[0]).parent for o in outs]
    assert folders[0] != folders[1]
    assert set((repo / "data/hydra/sweep").glob("*")) - before == {repo / f for f in folders}
    runs = sweep_runs(repo)
    for folder, alphas in zip(folders, (("0.2", "0.4"), ("0.6", "0.8"))):
        names = runs[f"hydra-{folder.name}"]
        jobs = {n.split(",")[0] for n in names if n.startswith("alpha=")}
        assert jobs == {f"alpha={a}" for a in alphas} and "baseline=popularity" in names
        # no tune evaluation exists in this repo: each job's name says its cold rule is the config's
        assert all(n.endswith("(from the config)") for n in names if n.startswith("alpha="))


def test_two_runs_of_the_same_alpha_at_once_agree(repo: Path) -> None:
    shutil.rmtree(repo / "data/checkpoints", ignore_errors=True)
    outs = finish([start(repo, "alpha=0.3"), start(repo, "alpha=0.3")])
    lines = [next(line for line in o.splitlines() if line.startswith("alpha=0.3")) for o in outs]
    assert " on validation: recall@10 " in lines[0] and lines[0] == lines[1]
    # a single run is one MLflow parent (a one-job sweep) holding its run and the baselines
    singles = [names for family, names in sweep_runs(repo).items()
               if any(n.startswith("alpha=0.3,") for n in names) and "baseline=popularity" in names]
    assert len(singles) == 2
    assert not list((repo / "data/checkpoints").rglob("*.tmp.npz"))


def test_a_failure_in_the_sweeps_end_of_run_work_exits_non_zero(repo: Path) -> None:
    """Hydra turns an exception raised in a callback into a warning and exits 0; recopt's callback turns it into
    one message and a non-zero status (here the comparison raises what a broken MLflow store raised)."""
    driver = ("import sys, stages.evaluate as ev\n"
              "def boom(*args, **kwargs):\n"
              "    raise RuntimeError('table _alembic_tmp_experiments already exists')\n"
              "ev.compare_sweep = boom\n"
              "sys.argv = ['stages.evaluate', '-m', 'alpha=0.5', 'data.preset=tiny']\n"
              "ev.run(ev.main, usage=ev.USAGE, hydra_overrides=('+hydra.callbacks.sweep_table._target_="
              "stages.evaluate.SweepTable',))\n")
    proc = subprocess.run(["python", "-c", driver], cwd=repo, env=tool_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: RuntimeError: table _alembic_tmp_experiments already exists" in proc.stderr
    assert "Traceback" not in proc.stderr and "raised RuntimeError" not in proc.stderr
