"""Screenshots of the MLflow UI as a user sees it, from a built pipeline's store (headless Chromium).

    apt-get install -y chromium                    # Debian's package
    python benchmarks/mlflow_ui.py [--repo .] [--out data/ui-screenshots]

Starts `mlflow ui` on a free local port over <repo>/mlruns/mlflow.db and saves:
  1-experiment-default.png   the experiment as the UI opens it (no view applied)
  2-runs-saved-view.png      the training-runs page in recopt's saved view (the link `dvc repro` prints)
  3-child-run.png            the alpha* run of the test fold: dataset, parent, tags, metrics
  4-child-artifacts.png      its artifacts (slice table, per-user metrics)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1600,1000", "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shot(url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--screenshot={out}", url],
                       capture_output=True, timeout=120, check=True)
    print(f"{out}  <-  {url}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("data/ui-screenshots"))
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{args.repo.resolve()}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recopt")
    if exp is None:
        sys.exit(f"{uri}: no experiment 'recopt' — run `dvc repro` first")
    star = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string="tags.`recopt.chosen` = 'alpha* (validation)' and tags.`recopt.fold` = 'test'")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        e = exp.experiment_id
        shot(f"{base}/#/experiments/{e}", args.out / "1-experiment-default.png")
        shot(f"{base}/#/experiments/{e}/runs?workflowType=machine_learning&viewStateShareKey=recopt",
             args.out / "2-runs-saved-view.png")
        if star:
            run = star[0].info.run_id
            shot(f"{base}/#/experiments/{e}/runs/{run}?workflowType=machine_learning", args.out / "3-child-run.png")
            shot(f"{base}/#/experiments/{e}/runs/{run}/artifacts?workflowType=machine_learning",
                 args.out / "4-child-artifacts.png")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
