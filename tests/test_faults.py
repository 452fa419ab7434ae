"""Faults, for real: each stage is killed (SIGKILL) while it writes, in a real process; a permission
error hits a write; a process dies while logging to MLflow. Afterwards an artifact is either the old
one or the new one, whole -- never a mix -- or missing with a clear error, and re-running gives
exactly what an uninterrupted run gives."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


# The file-size limit, for real: `ulimit -f` in the shell that starts the stage makes the kernel refuse (EFBIG)
# the write that crosses it, inside whichever library writes (polars, pyarrow, numpy, json, matplotlib). Each
# case: (stage, fold, a change that makes it rewrite its artifact, the limit in KiB, the writer that hits it).
LIMITS = [("ingest", None, "seed=7", 100, "polars parquet"), ("split", None, "split.test_frac=0.25", 100, "polars"),
          ("embed_load", "test", "embed_load.dim=16", 100, "numpy"), ("cf_load", "test", "cf_load.factors=8", 100,
                                                                    "numpy"),
          ("candidates", "test", "candidates.n_cf_seed=300", 100, "pyarrow pool parts"),
          ("evaluate", "tune", "rerank.mmr_lambda=0.5", 100, "numpy checkpoints"),
          ("evaluate", "tune", None, 60, "matplotlib plot"), ("evaluate", "tune", None, 16, "polars csv")]


def artifacts_tree(root: Path) -> dict[str, str]:
    """sha256 of every file of every artifact (run facts and checkpoints are not artifacts)."""
    data = root / "data"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.rglob("*"))
            if p.is_file() and p.relative_to(data).parts[0] not in ("runs", "checkpoints")}


def run_limited(cmd: list[str], limit_kib: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'ulimit -f {limit_kib} && exec "$@"', "limited", *cmd], cwd=ROOT,
                          env=tool_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(("stage", "fold", "change", "limit", "writer"), LIMITS,
                         ids=[f"{s}-{w.replace(' ', '-')}" for s, _, _, _, w in LIMITS])
def test_the_file_size_limit_is_one_clean_error_and_the_previous_artifact_stays_whole(
        base: Path, tmp_path: Path, stage: str, fold: str | None, change: str | None, limit: int,
        writer: str) -> None:
    work = tmp_path / "work"
    shutil.copytree(base, work)
    params = write_params(work, *([change] if change else []))
    before = artifacts_tree(work)
    proc = run_limited(stage_cmd(stage, fold, params), limit)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if writer == "numpy checkpoints":  # a checkpoint is one file outside the artifact, written atomically
        expected = (rf"error: cannot write \S+/data/checkpoints/\S+/(batch-\d+)\.npz: a file reached the file-size "
                    rf"limit \(File too large.*at most {limit} KiB, `ulimit -f`\) — raise the limit \(`ulimit -f "
                    r"unlimited`\), or set paths\.checkpoints to a folder on a filesystem that allows larger files; the "
                    r"previous \1\.npz, if any, is untouched$")
        assert not list((work / "data/checkpoints").rglob("*.tmp*")), "a partial checkpoint was left"
    else:
        expected = (rf"error: {stage}(@\w+)?: cannot write \S+/data/{stage}(/\w+)?: a file reached the file-size limit "
                    rf"\(File too large.*at most {limit} KiB, `ulimit -f`\) — raise the limit \(`ulimit -f unlimited`\)"
                    rf", or set paths\.{stage} to a folder on a filesystem that allows larger files; the previous "
                    r"artifact, if any, is untouched$")
    assert re.search(expected, proc.stderr, re.M), proc.stderr[-3000:]  # (after a progress bar)
    assert artifacts_tree(work) == before, "an artifact changed"
    assert not [*(work / "data").rglob(".*.staging-*"), *(work / "data").rglob(".*.old-*")]


def test_a_full_disk_is_one_clean_error_and_the_previous_artifact_stays_whole(tmp_path: Path) -> None:
    """A real 2 MiB filesystem (tmpfs, where this machine lets us mount one): the tiny preset's ingest fits, the
    small preset's does not (polars raises ComputeError "No space left on device")."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        run("ingest", None, write_params(tmp_path, f"paths.ingest={disk}/ingest", "data.preset=tiny"))
        before = {p.name: p.read_bytes() for p in (disk / "ingest").iterdir()}
        proc = subprocess.run(stage_cmd("ingest", None, write_params(tmp_path, f"paths.ingest={disk}/ingest")),
                              cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert re.search(rf"^error: ingest: cannot write {disk}/ingest: the disk is full \(No space left on device; "
                         r"\d+ \w?B of 2 MiB free there\) — free space on that disk, or set paths\.ingest to a folder "
                         r"on a disk with room; the previous artifact, if any, is untouched$", proc.stderr, re.M), \
            proc.stderr[-3000:]
        assert {p.name: p.read_bytes() for p in (disk / "ingest").iterdir()} == before
        assert sorted(p.name for p in disk.iterdir()) == ["ingest"], "a partial staging folder was left"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_file_that_appears_in_the_output_while_the_stage_runs_is_never_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap checks again that what it replaces is still the stage's own artifact."""
    from recopt import ingest as ingest_module
    from recopt.config import ConfigError

    cfg = read_params(write_params(tmp_path, "data.preset=tiny"))
    ingest_module.ingest(cfg)
    before = artifacts_tree(tmp_path)
    real = ingest_module.load_source

    def load_and_meanwhile(c):  # a user saves a note into the artifact folder while the stage works
        (tmp_path / "data/ingest/notes.txt").write_text("mine\n")
        return real(c)

    monkeypatch.setattr(ingest_module, "load_source", load_and_meanwhile)
    with pytest.raises(ConfigError, match=r"data/ingest holds files its ingest manifest does not list, which recopt "
                                          r"did not write: notes\.txt"):
        ingest_module.ingest(cfg)
    assert (tmp_path / "data/ingest/notes.txt").read_text() == "mine\n"
    assert {k: v for k, v in artifacts_tree(tmp_path).items() if not k.endswith("notes.txt")} == before


def test_a_failed_write_outside_an_artifact_is_one_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    """What the stage entry does with a library's out-of-space error raised after the artifact (MLflow's sqlite
    store, a metrics file): one message, exit 2; any other exception keeps its traceback."""
    from stages._entry import guarded

    def sqlite_full() -> None:
        raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    with pytest.raises(SystemExit) as stop:
        guarded(sqlite_full)
    assert stop.value.code == 2
    assert re.fullmatch(r"error: cannot write a file: the disk is full \(database or disk is full; .* free there\) — "
                        r"free space on that disk, or write to a folder on a disk with room\n", capsys.readouterr().err)
    with pytest.raises(ValueError):
        guarded(lambda: int("not a write error"))


def test_a_file_written_outside_the_artifacts_fails_cleanly(tmp_path: Path) -> None:
    """Run facts, metrics and sweep results are written atomically: a failed write is one error naming the path
    and the key, and leaves no temporary file."""
    from recopt.layout import write_text_atomic

    (tmp_path / "metrics").write_text("a file where the folder must be\n")
    with pytest.raises(ArtifactError, match=rf"^cannot write {tmp_path}/metrics: .+ — make the folder writable, or "
                                            r"set paths\.metrics to a folder you can write; the previous tune\.json, "
                                            r"if any, is untouched$"):
        write_text_atomic(tmp_path / "metrics" / "tune.json", "new\n", "paths.metrics")
    assert (tmp_path / "metrics").read_text() == "a file where the folder must be\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics"]
