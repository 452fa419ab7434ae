"""MLflow: one parent run per evaluation (a DVC fold or a Hydra sweep) with a child run per
alpha, baseline and reference. The only module that imports mlflow.

* The store is SQLite under ``paths.mlflow_uri``. It is created, migrated and written
  under one file lock, so concurrent sweeps neither race on the schema nor on writes.
* The experiment carries ``mlflow.experimentKind=custom_model_development``, so the UI
  opens on its training runs.
* Runs are logged whole, after the work, with their real start and end times; each run
  is tagged with this host and process id, and a RUNNING run whose process is gone
  (killed while logging) is marked FAILED the next time anything logs.
* Each run records its input dataset (name, source, digest) with ``log_inputs``.
* A saved runs-table view (MLflow >= 3.15 stores them as experiment tags) shows the key
  metrics, alpha, fold and how each row was chosen;
  :func:`ui_url` is the link that opens it on the training-runs page.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recopt.config import Config
from recopt.errors import RecoptError
from recopt.metrics import mlflow_key

SWEEP_TAG = "recopt.sweep"
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
VIEW_TAG = "mlflow.sharedViewState.recopt"  # the UI's saved-view tag prefix + this view's id
VIEW_METRICS = ("recall_at_10", "map_at_10", "ndcg_at_10", "coverage_at_10", "novelty_at_10", "pool_recall")
VIEW_PARAMS = ("alpha", "fold")
VIEW_TAGS = ("recopt.chosen",)


@dataclass
class RunRecord:
    """Everything one MLflow run holds, logged in one step."""

    name: str
    start_ms: int
    end_ms: int
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str
    digest: str


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def config_params(cfg: Config) -> dict[str, str]:
    """The flattened config, without the presets table and without the top-level alpha
    (each run logs its own alpha)."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith("data.presets.") and k != "alpha"}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _store_lock(cfg: Config) -> Any:
    from filelock import FileLock

    uri = cfg.paths.mlflow_uri
    where = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path(cfg.paths.runs)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecoptError(f"paths.mlflow_uri={uri}: cannot create {where}: {err.strerror or err}") from None
    return FileLock(str(where / ".recopt-mlflow.lock"), timeout=600)


def _experiment(client: Any, cfg: Config) -> str:
    name = cfg.evaluate.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = Path(cfg.paths.mlflow_artifacts).resolve()
        location.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(name, artifact_location=location.as_uri(), tags={KIND_TAG: KIND})
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(KIND_TAG) != KIND:
            client.set_experiment_tag(exp_id, KIND_TAG, KIND)
    return exp_id


def _fail_stale(client: Any, exp_id: str) -> None:
    """Mark FAILED the RUNNING runs of this host whose process no longer exists."""
    import psutil

    host = socket.gethostname()
    for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("recopt.pid")
        if tags.get("recopt.host") == host and pid and pid.isdigit() and not psutil.pid_exists(int(pid)):
            client.set_terminated(run.info.run_id, status="FAILED")


def _log_one(client: Any, exp_id: str, rec: RunRecord, dataset: DatasetInfo | None, tags: dict[str, str]) -> str:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    run = client.create_run(exp_id, start_time=rec.start_ms, run_name=rec.name, tags={**tags, **rec.tags})
    run_id = run.info.run_id
    try:
        params = sorted((k, str(v)[:6000]) for k, v in rec.params.items())
        metrics = [Metric(mlflow_key(k), float(v), rec.end_ms, 0) for k, v in sorted(rec.metrics.items())
                   if v is not None and v == v]
        for i in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=[Param(k, v) for k, v in params[i:i + 100]])
        if dataset is not None:
            ds = Dataset(name=dataset.name, digest=dataset.digest[:36], source_type="local", source=dataset.source)
            client.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", "evaluation")])])
        for path in rec.artifacts:
            if Path(path).exists():
                client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, status="FAILED", end_time=rec.end_ms)
        raise
    client.set_terminated(run_id, status="FINISHED", end_time=rec.end_ms)
    return run_id


def _save_view(client: Any, exp_id: str) -> None:
    """The saved view: the dataset, key metric, param and tag columns (the UI does not share which
    parents are expanded)."""
    cols = ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in VIEW_METRICS),
            *(f"params.`{p}`" for p in VIEW_PARAMS), *(f"tags.`{t}`" for t in VIEW_TAGS)]
    state = json.dumps({"selectedColumns": cols}, separators=(",", ":"))
    envelope = {"name": "recopt: key metrics", "createdAt": int(time.time() * 1000),
                "state": "deflate;" + base64.b64encode(zlib.compress(state.encode())).decode("ascii")}
    client.set_experiment_tag(exp_id, VIEW_TAG, json.dumps(envelope, separators=(",", ":")))


def ui_url(cfg: Config, host: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows the runs of the experiment in the saved view."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=cfg.paths.mlflow_uri).get_experiment_by_name(cfg.evaluate.experiment)
    exp_id = exp.experiment_id if exp is not None else "0"
    return f"{host}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=recopt"


def log_family(cfg: Config, parent: RunRecord, children: list[RunRecord], dataset: DatasetInfo | None) -> str:
    """Log a parent run and its children (nested); returns the parent's run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    common = {"recopt.git_commit": git_commit(), "recopt.host": socket.gethostname(), "recopt.pid": str(os.getpid())}
    with _store_lock(cfg):
        mlflow.set_tracking_uri(cfg.paths.mlflow_uri)
        client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
        exp_id = _experiment(client, cfg)
        _fail_stale(client, exp_id)
        parent_id = _log_one(client, exp_id, parent, dataset, common)
        for child in children:
            _log_one(client, exp_id, child, dataset, {**common, "mlflow.parentRunId": parent_id})
        _save_view(client, exp_id)
    return parent_id
