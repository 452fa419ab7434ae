"""Shared fixtures: composed configs pointing into tmp dirs, and temporary copies of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from recopt.config import Config, load_config
from stages._entry import compose

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"
STAGE_DIRS = ("ingest", "split", "embed_load", "cf_load", "candidates", "evaluate", "downloads", "runs",
              "checkpoints", "metrics")


def tmp_config(tmp: Path, *overrides: str) -> Config:
    """The composed conf/ with every path under `tmp` (like lightning-hydra-template's cfg fixtures)."""
    paths = [f"paths.{k}={tmp}/{k}" for k in STAGE_DIRS]
    mlflow = [f"paths.mlflow_uri=sqlite:///{tmp}/mlruns/mlflow.db", f"paths.mlflow_artifacts={tmp}/mlruns/artifacts"]
    return load_config(compose([*paths, *mlflow, *overrides]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A tiny-preset config with ingest and split already built under a fresh tmp dir."""
    from recopt.ingest import ingest
    from recopt.split import run_split

    cfg = tmp_config(tmp_path_factory.mktemp("tiny"), "data.preset=tiny")
    ingest(cfg)
    run_split(cfg)
    return cfg


def build_folds(cfg: Config, folds: tuple[str, ...] = ("tune", "test")) -> Config:
    """Run embed-load, cf-load and candidates for `folds` on a config whose split is built."""
    from recopt.cf import run_cf_load
    from recopt.embeddings import run_embed_load
    from recopt.pools import run_candidates

    for fold in folds:
        run_embed_load(cfg, fold)
        run_cf_load(cfg, fold)
        run_candidates(cfg, fold)
    return cfg


@pytest.fixture(scope="module")
def tiny_built(tiny: Config) -> Config:
    """The tiny config with every stage up to candidates built for both folds."""
    return build_folds(tiny)


def needs_ml_small() -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip(f"real MovieLens sample not found at {ML_SMALL}")
    return ML_SMALL


def tool_env() -> dict[str, str]:
    """Environment whose `python` and `dvc` are this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def run_cmd(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dest: Path) -> Path:
    """The repo's tracked and untracked-but-not-ignored files, as a fresh git repo with one commit."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def chromium_dom(page: Path | str, budget_ms: int = 15000) -> str:
    """The DOM headless Chromium builds for a local file (with the network cut off: a dead proxy) or a URL,
    its background network services off (skips the test when Chromium is not installed:
    `apt-get install -y chromium`)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run",
                               *(["--proxy-server=127.0.0.1:9"] if isinstance(page, Path) else []),
                               f"--user-data-dir={profile}", "--window-size=1400,900",
                               f"--virtual-time-budget={budget_ms}", "--dump-dom",
                               page.resolve().as_uri() if isinstance(page, Path) else page],
                              capture_output=True, text=True, timeout=120)
    return proc.stdout
