"""Screenshots of the MLflow UI as a user sees it, from a built pipeline's store (headless Chromium).

    apt-get install -y chromium                    # Debian's package
    python benchmarks/mlflow_ui.py [--repo .] [--out data/ui-screenshots]
    python benchmarks/mlflow_ui.py --demo --out /tmp/ui   # a small family in a temporary store

Starts `mlflow ui` on a free local port over <repo>/mlruns/mlflow.db (or, with --demo, over a
temporary store holding one parent with three children) and saves:
  1-experiment-default.png   the experiment as the UI opens it (no view applied)
  2-runs-saved-view.png      the training-runs page in recopt's saved view (the link `dvc repro` prints)
  3-child-run.png            the alpha* run of the test fold (--demo: a child): dataset, parent, tags, metrics
  4-child-artifacts.png      its artifacts (slice table)
  5-run-as-linked.png        the same run from the link the runs table builds (no workflowType)

MLflow 3.17/3.18's UI picks an experiment's page from the link's `workflowType` or else from the
browser's remembered GenAI / Model training switch (GenAI in a fresh browser), never from the store:
1 and 5 show the GenAI view here (each shot uses a fresh browser profile), 2-4 the training view.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1600,1000", "--virtual-time-budget=20000"]


def shot(url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--screenshot={out}", url],
                       capture_output=True, timeout=120, check=True)
    print(f"{out}  <-  {url}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("data/ui-screenshots"))
    parser.add_argument("--demo", action="store_true", help="a small family in a temporary store")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    demo = tempfile.TemporaryDirectory() if args.demo else None
    uri = f"sqlite:///{demo.name if demo else args.repo.resolve()}/mlruns/mlflow.db"
    if demo:
        log_demo(Path(demo.name))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recopt")
    if exp is None:
        sys.exit(f"{uri}: no experiment 'recopt' — run `dvc repro` first")
    star = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string="tags.`recopt.chosen` = 'alpha* (validation)' and tags.`recopt.fold` = 'test'"
                              if not demo else "tags.`recopt.run` = 'alpha=0.5'")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recopt import tracking

    try:
        with tracking.ui_server(uri) as base:
            args.out.mkdir(parents=True, exist_ok=True)
            e = exp.experiment_id
            shot(f"{base}/#/experiments/{e}", args.out / "1-experiment-default.png")
            shot(f"{base}/#/experiments/{e}/runs?workflowType=machine_learning&viewStateShareKey=recopt",
                 args.out / "2-runs-saved-view.png")
            if star:
                run = star[0].info.run_id
                shot(f"{base}/#/experiments/{e}/runs/{run}?workflowType=machine_learning",
                     args.out / "3-child-run.png")
                shot(f"{base}/#/experiments/{e}/runs/{run}/artifacts?workflowType=machine_learning",
                     args.out / "4-child-artifacts.png")
                shot(f"{base}/#/experiments/{e}/runs/{run}", args.out / "5-run-as-linked.png")
    finally:
        if demo:
            demo.cleanup()


def log_demo(root: Path) -> None:
    """One parent and three alpha children, with a dataset and two files each, through recopt's logging."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recopt import tracking
    from recopt.config import load_config
    from stages._entry import compose

    cfg = load_config(compose([f"paths.mlflow_uri=sqlite:///{root}/mlruns/mlflow.db",
                               f"paths.mlflow_artifacts={root}/mlruns/artifacts", f"paths.runs={root}/runs"]))
    (root / "files").mkdir()
    files = [root / "files" / "slices.csv", root / "files" / "per_user.parquet"]
    files[0].write_text("slice,users,recall@10\nall,100,0.25\n")
    files[1].write_bytes(b"demo")
    now = int(time.time() * 1000)
    kids = [tracking.RunRecord(f"demo · α={a} · validation", now - 30_000 + 9_000 * i, now - 25_000 + 9_000 * i,
                               params={**tracking.config_params(cfg), "alpha": a, "fold": "tune"},
                               metrics={"recall@10": 0.2 + a / 10, "map@10": 0.1 + a / 20, "ndcg@10": 0.15 + a / 15},
                               tags={"recopt.run": f"alpha={a}", "recopt.fold": "tune", "recopt.chosen": ""},
                               artifacts=files) for i, a in enumerate((0.25, 0.5, 0.75))]
    parent = tracking.RunRecord("demo · dvc · validation", now - 31_000, now, params={"alpha": 0.75, "fold": "tune"},
                                metrics=dict(kids[-1].metrics), tags={"recopt.fold": "tune"}, artifacts=files)
    tracking.log_family(cfg, parent, kids, tracking.DatasetInfo("demo", "data/split", "0123456789abcdef" * 2))


if __name__ == "__main__":
    main()
