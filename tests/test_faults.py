"""Faults, for real: each stage is killed (SIGKILL) while it writes, in a real process; a permission
error hits a write; a process dies while logging to MLflow. Afterwards an artifact is either the old
one or the new one, whole -- never a mix -- or missing with a clear error, and re-running gives
exactly what an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from recopt.artifacts import ArtifactError, open_artifact
from recopt.layout import artifact_dir
from recopt.config import read_params
from stages._entry import compose
from tests.conftest import ROOT, STAGE_DIRS, tool_env

# stage, its --fold, the artifact watched, a change of config that changes it (old and new differ)
STAGES = [("ingest", None, None, "seed=7"), ("split", None, "test", "split.test_frac=0.25"),
          ("embed_load", "test", "test", "embed_load.dim=16"), ("cf_load", "test", "test", "cf_load.factors=8"),
          ("candidates", "test", "test", "candidates.n_cf_seed=300"),
          ("evaluate", "tune", "tune", "rerank.mmr_lambda=0.5")]


def write_params(root: Path, *overrides: str) -> Path:
    raw = compose([*(f"paths.{k}={root}/data/{k}" for k in STAGE_DIRS),
                   f"paths.mlflow_uri=sqlite:///{root}/mlruns/mlflow.db",
                   f"paths.mlflow_artifacts={root}/mlruns/artifacts", "data.preset=small",
                   "candidates.batch_users=512", "evaluate.references=[]", *overrides])
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stage_cmd(stage: str, fold: str | None, params: Path) -> list[str]:
    return [sys.executable, "-m", f"stages.{stage}", "--params", str(params), *(["--fold", fold] if fold else [])]


def run(stage: str, fold: str | None, params: Path) -> None:
    proc = subprocess.run(stage_cmd(stage, fold, params), cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def build_all(root: Path, *overrides: str) -> Path:
    params = write_params(root, *overrides)
    for stage, fold in (("ingest", None), ("split", None), ("embed_load", "test"), ("cf_load", "test"),
                        ("candidates", "test"), ("embed_load", "tune"), ("cf_load", "tune"),
                        ("candidates", "tune"), ("evaluate", "tune")):
        run(stage, fold, params)
    return params


# Runs a stage in a real process that SIGKILLs itself at a chosen point of its write, so the point is
# hit every time (polling from outside misses a fast stage): "files" = when a file is about to be written
# into the staging folder after another one landed there; "swap" = inside the commit, after the old artifact
# was moved aside and before the new one is renamed into place.
KILLER = """
import os, runpy, signal, sys
from recopt import artifacts
point, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
if point == "files":
    real_path = artifacts.Output.path
    def path(self, name):
        if any(p.is_file() for p in self.staging.rglob("*")):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_path(self, name)
    artifacts.Output.path = path
else:
    real_replace = os.replace
    def replace(src, dst):
        if ".staging-" in str(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    artifacts.os.replace = replace
runpy.run_module(module, run_name="__main__")
"""


def kill_while_writing(stage: str, fold: str | None, params: Path, point: str) -> bool:
    """Run the stage until it SIGKILLs itself at `point`; False if it exited otherwise."""
    cmd = stage_cmd(stage, fold, params)
    proc = subprocess.run([sys.executable, "-c", KILLER, point, cmd[2], *cmd[3:]], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=900)
    return proc.returncode == -signal.SIGKILL


def digests(root: Path) -> dict[str, str]:
    return {p.parent.relative_to(root).as_posix(): json.dumps(json.loads(p.read_text())["files"], sort_keys=True)
            for p in sorted((root / "data").rglob("manifest.json"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    build_all(root)
    return root


# every stage killed mid-write; the swap (shared code in recopt.artifacts) once, on the folder with subfolders
KILLS = [(*s, "files") for s in STAGES] + [(*s, "swap") for s in STAGES if s[0] == "candidates"]


@pytest.mark.parametrize(("stage", "fold", "art_fold", "change", "point"), KILLS,
                         ids=[f"{s}@{f}-{p}" if f else f"{s}-{p}" for s, _, f, _, p in KILLS])
def test_a_stage_killed_while_writing_leaves_old_or_nothing_and_reruns_identically(
        base: Path, tmp_path: Path, stage: str, fold: str | None, art_fold: str | None, change: str,
        point: str) -> None:
    work = tmp_path / "work"
    shutil.copytree(base, work)
    old = artifact_dir(read_params(write_params(work)).paths, stage, art_fold)
    old_manifest = (old / "manifest.json").read_bytes()
    params = write_params(work, change)
    assert kill_while_writing(stage, fold, params, point), f"the stage never reached the {point!r} point"
    cfg = read_params(params)
    try:
        art = open_artifact(cfg.paths, stage, art_fold, reader="test")
        assert (art.root / "manifest.json").read_bytes() == old_manifest  # the old artifact, whole
    except ArtifactError as err:  # or gone, with the stage to re-run
        assert "re-run `dvc repro" in str(err)
    # a reader downstream of it either works on a whole artifact or refuses with the fix
    run(stage, fold, params)
    # the re-run equals an uninterrupted run of the same config
    fresh = tmp_path / "fresh"
    shutil.copytree(base, fresh)
    run(stage, fold, write_params(fresh, change))
    rel = artifact_dir(cfg.paths, stage, art_fold).relative_to(work).as_posix()
    assert digests(work)[rel] == digests(fresh)[rel]
    leftovers = [*(work / "data").rglob(".*.staging-*"), *(work / "data").rglob(".*.old-*")]
    assert not leftovers, f"a killed run's folders were not cleaned up: {leftovers}"


def test_evaluate_killed_mid_pass_resumes_to_identical_results(base: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(base, work)
    shutil.rmtree(work / "data/checkpoints")
    params = write_params(work, "rerank.mmr_lambda=0.4")
    proc = subprocess.Popen(stage_cmd("evaluate", "tune", params), cwd=ROOT, env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((work / "data/checkpoints").rglob("batch-*.npz")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list((work / "data/checkpoints").rglob("batch-*.npz"))
    assert done, "killed before any batch was checkpointed"
    run("evaluate", "tune", params)
    fresh = tmp_path / "fresh"
    shutil.copytree(base, fresh)
    shutil.rmtree(fresh / "data/checkpoints")
    run("evaluate", "tune", write_params(fresh, "rerank.mmr_lambda=0.4"))
    assert digests(work)["data/evaluate/tune"] == digests(fresh)["data/evaluate/tune"]


def test_a_write_error_leaves_the_previous_artifact_whole(base: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from recopt import artifacts
    from recopt.cf import run_cf_load

    work = tmp_path / "work"
    shutil.copytree(base, work)
    cfg = read_params(write_params(work, "cf_load.factors=8"))
    before = (work / "data/cf_load/test/manifest.json").read_bytes()
    calls = {"n": 0}
    real = np.save

    def failing_save(path, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, arr, **kw)

    monkeypatch.setattr(artifacts.np, "save", failing_save)
    with pytest.raises(ArtifactError, match=r"cf_load@test: cannot write .*Permission denied .* the previous "
                                            r"artifact, if any, is untouched"):
        run_cf_load(cfg, "test")
    assert (work / "data/cf_load/test/manifest.json").read_bytes() == before
    open_artifact(cfg.paths, "cf_load", "test", reader="test")  # still whole and verified
    assert not list((work / "data/cf_load").glob(".test.staging-*"))


def test_a_run_left_running_by_a_killed_process_is_marked_failed(tmp_path: Path) -> None:
    import socket

    from mlflow.tracking import MlflowClient

    from recopt import tracking

    cfg = read_params(write_params(tmp_path))
    tracking.log_family(cfg, tracking.RunRecord("first", 1, 2), [], None)
    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.evaluate.experiment)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = client.create_run(exp.experiment_id, run_name="orphan",
                               tags={"recopt.host": socket.gethostname(), "recopt.pid": str(dead.pid)})
    alive = client.create_run(exp.experiment_id, run_name="alive",
                              tags={"recopt.host": socket.gethostname(), "recopt.pid": str(os.getpid())})
    tracking.log_family(cfg, tracking.RunRecord("second", 3, 4), [], None)
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
