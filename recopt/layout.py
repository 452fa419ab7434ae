"""Where every file recopt writes lives, and the one atomic write.

Every name of a file recopt writes is built here: each stage's artifact files
(:data:`LAYOUT`), the pool parts, the DVC metrics files, evaluate's checkpoints,
a sweep job's result, the scratch files MLflow uploads, and the run facts. Other
modules ask for paths; none joins a file name of its own.

:func:`write_atomic` is the one way to write a single file atomically (a
per-process temporary name next to it, then ``os.replace``): a reader sees the
old file or the new one, never a part. A whole artifact is written atomically by
recopt.artifacts (a staging folder swapped into place).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recopt.config import HELDOUT
from recopt.errors import ArtifactError
from recopt.write_failure import explain_write_failure

MANIFEST = "manifest.json"

# logical name -> file name, per stage; "{heldout}" is the fold's held-out split
LAYOUT: dict[str, dict[str, str]] = {
    "ingest": {"ratings": "ratings.parquet", "movies": "movies.parquet", "tags": "tags.parquet",
               "providers": "providers.parquet", "user_providers": "user_providers.parquet",
               "superseded_ratings": "superseded_ratings.parquet"},
    "split": {"train": "train.parquet", "heldout": "{heldout}.parquet", "users": "users.parquet"},
    "embed_load": {"embeddings": "embeddings.npy", "mmr": "mmr.npy", "has_content": "has_content.npy",
                   "item_ids": "item_ids.npy"},
    "cf_load": {"user_factors": "user_factors.npy", "item_factors": "item_factors.npy",
                "user_has_cf": "user_has_cf.npy", "user_folded": "user_folded.npy",
                "item_has_cf": "item_has_cf.npy", "user_ids": "user_ids.npy", "item_ids": "item_ids.npy"},
    "candidates": {"users": "users.parquet", "items": "items.parquet", "assembly": "assembly.json"},
    "evaluate": {"runs": "runs.csv", "slices": "slices.csv", "per_user": "per_user.parquet",
                 "selection": "selection.json", "gates": "gates.json",
                 "report": "report.md", "plot": "alpha_curve.png", "tuning_results": "tuning_results.csv",
                 "intervals": "intervals.csv"},
}
# files of an artifact that come in parts, named by a key: a pool part per user batch, a lists part per run
PARTS: dict[str, dict[str, str]] = {
    "candidates": {"pools": "pools/part-{key:05d}.parquet"},
    "evaluate": {"lists": "lists/{key}.parquet"},
}
FOLDED = {"split", "embed_load", "cf_load", "candidates", "evaluate"}
# small git-tracked files DVC compares across experiments (`dvc exp show`, `dvc plots diff`), per fold
METRICS = {"metrics": "{fold}.json", "curve": "{fold}_alpha_curve.csv"}
# what a Hydra sweep job leaves for the sweep's comparison, in its own folder
JOB_FILES = {"result": "result.json", "arrays": "result.npz"}
# what each MLflow child run uploads besides its metrics
RUN_FILES = {"slices": "slices.csv"}


def dvc_name(stage: str, fold: str | None = None) -> str:
    """The DVC stage that builds an artifact: `embed-load@tune`, `ingest`, `split`."""
    name = stage.replace("_", "-")
    return f"{name}@{fold}" if fold and stage != "split" else name


def label(stage: str, fold: str | None) -> str:
    return f"{stage}@{fold}" if fold else stage


def artifact_dir(paths: Any, stage: str, fold: str | None = None) -> Path:
    """Folder of a stage's artifact: paths.<stage>, plus /<fold> for folded stages."""
    if (stage in FOLDED) != (fold is not None):
        raise ValueError(f"{stage}: fold {'required' if stage in FOLDED else 'not allowed'}")
    if fold is not None and fold not in HELDOUT:
        raise ValueError(f"fold must be one of {tuple(HELDOUT)}, got {fold!r}")
    root = Path(getattr(paths, stage))
    return root / fold if fold else root


def file_name(stage: str, name: str, fold: str | None = None) -> str:
    """The file name of logical file `name` of `stage` (KeyError for an undeclared name)."""
    return LAYOUT[stage][name].format(heldout=HELDOUT.get(fold or "", ""))


def part_name(stage: str, name: str, key: int | str) -> str:
    """The file of part `key` of `stage`'s parted file `name`, relative to the artifact (:data:`PARTS`)."""
    return PARTS[stage][name].format(key=key)


def metrics_path(paths: Any, name: str, fold: str) -> Path:
    """Where fold `fold`'s DVC metrics or plots file lives (under paths.metrics, tracked by git)."""
    return Path(paths.metrics) / METRICS[name].format(fold=fold)


def run_facts_path(paths: Any, name: str) -> Path:
    """Run facts (wall time, peak memory) of stage label `name`, outside every artifact."""
    return Path(paths.runs) / f"{name}.json"


def plots_template_path(paths: Any) -> Path:
    """The offline `dvc plots` HTML template (recopt.plots), outside every artifact."""
    return Path(paths.runs) / "plots" / "offline_template.html"


def safe_name(text: str) -> str:
    """`text` as one file-name component: letters, digits and `=.-_` kept, anything else `_`."""
    return "".join(ch if ch.isalnum() or ch in "=.-_" else "_" for ch in text)


def checkpoint_dir(paths: Any, fold: str, part: str, key: str) -> Path:
    """The checkpoint folder of one part (`part`: its name) under the content key `key`."""
    return Path(paths.checkpoints) / f"{fold}-{safe_name(part)}-{key}"


def checkpoint_file(folder: Path, batch: int) -> Path:
    """One part's checkpoint of user batch `batch`."""
    return folder / f"batch-{batch:05d}.npz"


def job_dir(paths: Any, sweep_dir: Path | None, job_num: int | None) -> Path:
    """A Hydra job's folder: its sweep's numbered sub-folder, or (a single run) one under paths.runs."""
    if sweep_dir is not None and job_num is not None:
        return sweep_dir / str(job_num)
    return Path(paths.runs) / "jobs" / uuid.uuid4().hex


def job_file(folder: Path, name: str) -> Path:
    """A sweep job's file `name` (:data:`JOB_FILES`)."""
    return folder / JOB_FILES[name]


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The folders of a sweep's jobs that wrote their result, in job order."""
    return sorted((p.parent for p in sweep_dir.glob(f"*/{JOB_FILES['result']}")),
                  key=lambda p: (len(p.name), p.name))


def sweep_file(sweep_dir: Path, name: str) -> Path:
    """A sweep's comparison (`comparison.csv`, `comparison.md`, `alpha_curve.png`)."""
    return sweep_dir / name


def mlflow_scratch(paths: Any, family: str, run_label: str, name: str) -> Path:
    """The file `name` (:data:`RUN_FILES`) a child run of MLflow family `family` uploads."""
    return Path(paths.runs) / "mlflow" / safe_name(family) / safe_name(run_label) / RUN_FILES[name]


def write_atomic(path: Path, write: Callable[[Path], Any], key: str | None = None) -> None:
    """Write one file atomically: `write(tmp)` fills a per-process temporary name next to `path`,
    which then replaces `path` (a reader sees the old file or the new one, never a part).

    A write that fails for want of space or a file-size limit, from any library, is one ArtifactError
    naming what ran out, the path and the fix (`key`: the config key naming the file's folder); the
    temporary file is removed and the previous file, if any, is untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        why = explain_write_failure(err, path, key, written=(tmp, path))
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if why is None:
            raise
        raise ArtifactError(f"{why}; the previous {path.name}, if any, is untouched") from err


def write_text_atomic(path: Path, text: str, key: str | None = None) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), key)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_jsonable) + "\n"


def save_arrays(path: Path, arrays: dict[str, np.ndarray], key: str | None = None) -> None:
    """A set of named arrays as one .npz file, atomically (`key`: the config key naming its folder)."""
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays), key)
