"""MLflow: one run per alpha / baseline, grouped by a sweep tag. The only module that imports mlflow."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from recopt.config import Config
from recopt.metrics import mlflow_key

SWEEP_TAG = "recopt.sweep"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _experiment(cfg: Config) -> str:
    import mlflow

    uri = cfg.paths.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = cfg.evaluate.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(cfg.paths.mlflow_artifacts).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=location.as_uri())


def log_run(cfg: Config, run_name: str, summary: dict[str, float], *, sweep_id: str, data_fingerprint: str,
            extra_params: dict[str, Any] | None = None, artifacts: list[Path] | None = None,
            slice_metrics: dict[str, float] | None = None) -> str:
    """Create one finished MLflow run; returns its run id."""
    import mlflow

    exp_id = _experiment(cfg)
    params = {k: v for k, v in _flatten(cfg.to_dict()).items() if not k.startswith("data.presets.")}
    params.update({k: str(v) for k, v in (extra_params or {}).items()})
    tags = {SWEEP_TAG: sweep_id, "recopt.git_commit": git_commit(), "recopt.data_fingerprint": data_fingerprint,
            "recopt.run": run_name}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
        items = sorted(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))
        values = {mlflow_key(k): float(v) for k, v in summary.items()}
        values.update({mlflow_key(k): float(v) for k, v in (slice_metrics or {}).items()})
        mlflow.log_metrics(values)
        for path in artifacts or []:
            if Path(path).exists():
                mlflow.log_artifact(str(path))
        return run.info.run_id
