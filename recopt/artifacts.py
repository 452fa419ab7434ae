"""The one home of every stage's artifacts: file names, atomic writes, manifests, verification.

Each stage writes one *artifact* per fold (``ingest`` has no fold): a folder
``paths.<stage>[/<fold>]`` holding the files named in :data:`LAYOUT` and a
``manifest.json`` written last, listing every file with its size and sha256,
the sha256 of every input file it was built from (``inputs``: exactly the files
it read, so the tune fold, built from train alone, records no test file), the
config values it was built with (``params``: its own stage's keys of
:data:`PARAMS` and, transitively, those of everything upstream) and a
deterministic ``summary`` of counts. Writes go to a staging folder next to the
target, which replaces the target only once the manifest is written, so a
stage killed part-way leaves the previous artifact or none -- never a mix.

Readers call :func:`open_artifact`, which refuses, with one error naming the
stage to re-run, an artifact that is missing, has no manifest (interrupted),
holds a file that is missing, resized, changed or unlisted, or was built from
an upstream artifact that has since been rebuilt differently -- or, given the
reader's config, was built with other values of the keys it depends on (a
Hydra run overriding `candidates.c_max` would otherwise report pools built with
another value under its own label).

Run facts (wall time, peak memory, step timings) never enter an artifact: they
go to ``paths.runs/<stage>[@fold].json``, so identical data hashes identically
and DVC skips what did not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt.errors import ArtifactError
from recopt.outputs import MANIFEST, artifact_dir, check_replaceable, label, leftover_pid, staging_name
from recopt.runlog import log, peak_rss_mb
from recopt.write_failure import explain_write_failure

FORMAT = 2
HELDOUT = {"tune": "validation", "test": "test"}  # what each fold scores on
POOL_PATTERN = "pools/part-{batch:05d}.parquet"

# logical name -> file name, per stage; "{heldout}" is the fold's held-out split
LAYOUT: dict[str, dict[str, str]] = {
    "ingest": {"ratings": "ratings.parquet", "movies": "movies.parquet", "tags": "tags.parquet",
               "providers": "providers.parquet", "user_providers": "user_providers.parquet",
               "superseded_ratings": "superseded_ratings.parquet"},
    "split": {"train": "train.parquet", "heldout": "{heldout}.parquet", "users": "users.parquet"},
    "embed_load": {"embeddings": "embeddings.npy", "mmr": "mmr.npy", "has_content": "has_content.npy",
                   "item_ids": "item_ids.npy"},
    "cf_load": {"user_factors": "user_factors.npy", "item_factors": "item_factors.npy",
                "user_has_cf": "user_has_cf.npy", "item_has_cf": "item_has_cf.npy",
                "user_ids": "user_ids.npy", "item_ids": "item_ids.npy"},
    "candidates": {"users": "users.parquet", "items": "items.parquet", "assembly": "assembly.json"},
    "evaluate": {"runs": "runs.csv", "slices": "slices.csv", "per_user": "per_user.parquet",
                 "lists": "lists.parquet", "selection": "selection.json", "gates": "gates.json",
                 "report": "report.md", "plot": "alpha_curve.png", "tuning_results": "tuning_results.csv",
                 "intervals": "intervals.csv"},
}
# The config keys each stage's output depends on: dvc.yaml's params of the stage minus paths and
# engine, which never change a result (tests/test_dvc_deps.py checks that the two agree).
PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("seed", "data"),
    "split": ("seed", "relevance_threshold", "split"),
    "embed_load": ("seed", "embed_load"),
    "cf_load": ("seed", "cf_load"),
    "candidates": ("seed", "relevance_threshold", "candidates"),
    "evaluate": ("seed", "alpha", "relevance_threshold", "rerank", "evaluate"),
}
# small git-tracked files DVC compares across experiments (`dvc exp show`, `dvc plots diff`), per fold
METRICS = {"metrics": "{fold}.json", "curve": "{fold}_alpha_curve.csv"}


def dvc_name(stage: str, fold: str | None = None) -> str:
    """The DVC stage that builds an artifact: `embed-load@tune`, `ingest`, `split`."""
    name = stage.replace("_", "-")
    return f"{name}@{fold}" if fold and stage != "split" else name


def file_name(stage: str, name: str, fold: str | None = None) -> str:
    """The file name of logical file `name` of `stage` (KeyError for an undeclared name)."""
    return LAYOUT[stage][name].format(heldout=HELDOUT.get(fold or "", ""))


def metrics_path(cfg: Any, name: str, fold: str) -> Path:
    """Where fold `fold`'s DVC metrics or plots file lives (under paths.metrics, tracked by git)."""
    return Path(cfg.paths.metrics) / METRICS[name].format(fold=fold)


def sha256_file(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def manifest_digest(root: Path) -> str | None:
    """sha256 of an artifact's manifest bytes (None when it has none): the artifact's identity."""
    path = Path(root) / MANIFEST
    return sha256_file(path) if path.is_file() else None


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


def write_text_atomic(path: Path, text: str, key: str | None = None) -> None:
    """Write a file outside the artifacts (run facts, metrics, sweep job results) atomically.

    Raises ArtifactError (the previous file whole) when the write fails; `key` is the config key
    that names the file's folder, for the fix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = explain_write_failure(err, path, key, written=(tmp, path))
        if why is None:
            raise
        raise ArtifactError(f"{why}; the previous {path.name}, if any, is untouched") from err


def param_values(config: Any, keys: Any) -> dict[str, Any]:
    """The config's values of `keys` (sections are flattened to their leaves: `candidates.c_max`)."""
    tree = config.to_dict()
    flat: dict[str, Any] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}", v)
        else:
            flat[key] = json.loads(json.dumps(value, default=_jsonable))

    for key in keys:
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        visit(key, node)
    return flat


def _params_problems(recorded: dict[str, Any], config: Any) -> list[str]:
    current = param_values(config, {k.split(".")[0] for k in recorded})
    return [f"{k}={json.dumps(v)} (the config now has {json.dumps(current.get(k))})"
            for k, v in sorted(recorded.items()) if current.get(k) != v]


def _fix(stage: str, fold: str | None) -> str:
    return f"re-run `dvc repro {dvc_name(stage, fold)}` (or `python -m stages.{stage}" + (
        f" --fold {fold}`)" if fold else "`)")


@dataclass
class Stored:
    """A verified input artifact: its files, manifest and summary."""

    stage: str
    fold: str | None
    root: Path
    manifest: dict[str, Any]
    digest: str
    read: set[str] = field(default_factory=set)   # files read so far (recorded as inputs)

    @property
    def label(self) -> str:
        return label(self.stage, self.fold)

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary", {})

    def path(self, name: str) -> Path:
        """Path of file `name`; the file counts as read (it becomes an input of what is written next)."""
        rel = file_name(self.stage, name, self.fold)
        self.read.add(rel)
        return self.root / rel

    def has(self, name: str) -> bool:
        return file_name(self.stage, name, self.fold) in self.manifest["files"]

    def parquet(self, name: str, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(self.path(name), columns=columns)

    def npy(self, name: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.path(name), mmap_mode="r" if mmap else None, allow_pickle=False)

    def json(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())

    def read_all(self) -> None:
        """Count every file as read: for a reader whose reads depend on its own checkpoints, so the
        inputs it records (and so its manifest's bytes) do not."""
        self.read.update(self.manifest["files"])

    def pool(self, batch: int) -> Path:
        rel = POOL_PATTERN.format(batch=batch)
        self.read.add(rel)
        return self.root / rel

    def sha256(self, rel: str) -> str:
        return self.manifest["files"][rel]["sha256"]


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _hash_cached(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def open_artifact(paths: Any, stage: str, fold: str | None = None, *, reader: str, config: Any = None) -> Stored:
    """Verify and open the artifact of `stage` (at `fold`) for the stage `reader`.

    Raises ArtifactError naming the stage to re-run when the artifact is missing,
    incomplete, changed, stale against its own inputs, or -- when the reader's
    `config` is given -- built with other values of the keys it depends on.
    """
    root = artifact_dir(paths, stage, fold)
    name = label(stage, fold)
    fix = _fix(stage, fold)
    if not root.is_dir():
        raise ArtifactError(f"{reader}: its input {name} ({root}) does not exist — {fix}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{reader}: its input {name} ({root}) is incomplete: no {MANIFEST} "
                            f"(the stage was interrupted or is still running) — {fix}")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        ok = manifest.get("stage") == stage and manifest.get("fold") == fold and manifest.get("format") == FORMAT
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{reader}: {mpath} is not a valid manifest — {fix}") from None
    if not ok:
        raise ArtifactError(f"{reader}: {mpath} describes {manifest.get('stage')}@{manifest.get('fold')} "
                            f"(format {manifest.get('format')}), not {name} — {fix}")
    problems = []
    for rel, entry in sorted(files.items()):
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if st.st_size != entry["bytes"]:
            problems.append(f"{rel} has {st.st_size} bytes, the manifest says {entry['bytes']}")
        elif _hash_cached(p, st) != entry["sha256"]:
            problems.append(f"{rel} was changed after the stage wrote it (content hash differs)")
    listed = set(files) | {MANIFEST}
    extra = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                   and str(p.relative_to(root)) not in listed)
    if extra:
        problems.append(f"unlisted file(s) {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} "
                        "(left by another run?)")
    if problems:
        raise ArtifactError(f"{reader}: its input {name} ({root}) does not match its manifest: "
                            + "; ".join(problems[:8]) + f" — {fix}")
    for key, digest in sorted(manifest.get("inputs", {}).items()):
        up, _, rel = key.partition("/")
        up_stage, _, up_fold = up.partition("@")
        up_root = artifact_dir(paths, up_stage, up_fold or None)
        try:
            current = json.loads((up_root / MANIFEST).read_text())["files"].get(rel, {}).get("sha256")
        except (OSError, ValueError, KeyError):
            current = None  # the upstream artifact is gone: nothing to compare with
        if current is not None and current != digest:
            raise ArtifactError(f"{reader}: its input {name} was built from a different {up} {rel} than the one "
                                f"now in {up_root} (stale) — {fix}")
    differ = _params_problems(manifest.get("params", {}), config) if config is not None else []
    if differ:
        raise ArtifactError(
            f"{reader}: its input {name} was built with {'; '.join(differ[:5])}"
            f"{f' and {len(differ) - 5} more' if len(differ) > 5 else ''} — {fix} with this config; a Hydra "
            "run composes conf/ with its overrides, so pass the values the pipeline was built with (or build "
            "it with these: `dvc exp run -S key=value`)")
    return Stored(stage, fold, root, manifest, sha256_file(mpath))


def _sweep_leftovers(root: Path) -> None:
    """Remove the staging / old folders of `root` left by runs that were killed (their process is gone);
    nothing else, whatever its name."""
    import psutil

    for p in root.parent.iterdir():
        pid = leftover_pid(p, root.name)
        if pid is not None and not psutil.pid_exists(pid):
            shutil.rmtree(p, ignore_errors=True)


class Output:
    """A stage's artifact being written: files go to a staging folder until :meth:`commit`.

    Before any work it refuses an output folder the stage may not replace (`recopt.outputs`); a write
    that fails inside it (disk full, file-size limit, permissions; from any library) ends in one
    ArtifactError, with the staging folder removed and the previous artifact whole."""

    def __init__(self, cfg: Any, stage: str, fold: str | None) -> None:
        self.stage, self.fold, self.cfg = stage, fold, cfg
        self.params = param_values(cfg, PARAMS[stage])
        self.root = artifact_dir(cfg.paths, stage, fold)
        check_replaceable(cfg, stage, fold)
        self.staging = self.root.parent / staging_name(self.root.name, "staging")
        self.inputs: dict[str, str] = {}
        self.sources: list[Stored] = []
        self.summary: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.runs_dir = Path(cfg.paths.runs)
        self.started = time.perf_counter()
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            _sweep_leftovers(self.root)
            self.staging.mkdir()
        except OSError as err:
            self._fail(err, (self.staging,))
            raise

    @property
    def label(self) -> str:
        return label(self.stage, self.fold)

    def uses(self, *inputs: Stored) -> None:
        """Build from these artifacts: every file read from them (up to the commit) is recorded
        as an input with its sha256."""
        self.sources.extend(inputs)

    def uses_file(self, source: Stored, name: str) -> None:
        """Record one file of `source` as an input without reading it here."""
        source.path(name)
        self.uses(source)

    def path(self, name: str) -> Path:
        """Staging path of declared file `name` (or of a pool part: `pools/part-NNNNN.parquet`)."""
        rel = name if name.startswith("pools/") else file_name(self.stage, name, self.fold)
        p = self.staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def parquet(self, name: str, df: pl.DataFrame) -> None:
        df.write_parquet(self.path(name), compression="zstd", statistics=True)

    def npy(self, name: str, arr: np.ndarray) -> None:
        np.save(self.path(name), arr, allow_pickle=False)

    def json(self, name: str, data: Any) -> None:
        self.path(name).write_text(dump_json(data), encoding="utf-8")

    def text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8")

    def commit(self) -> dict[str, Any]:
        """Hash every file, write the manifest last and the run facts, then swap the staging folder into
        place (after checking again that what is there is still this stage's to replace)."""
        files = {}
        for p in sorted(self.staging.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(self.staging))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        params: dict[str, Any] = {}
        for src in self.sources:
            params.update(src.manifest.get("params", {}))
            for rel in src.read:
                self.inputs[f"{src.label}/{rel}"] = src.sha256(rel)
        params.update(self.params)
        manifest = {"stage": self.stage, "fold": self.fold, "format": FORMAT, "files": files,
                    "inputs": dict(sorted(self.inputs.items())), "params": dict(sorted(params.items())),
                    "summary": self.summary}
        (self.staging / MANIFEST).write_text(dump_json(manifest), encoding="utf-8")
        facts = {"stage": self.label, "wall_s": round(time.perf_counter() - self.started, 3),
                 "steps_s": self.timings, "peak_rss_mb": round(peak_rss_mb(), 1),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_text_atomic(self.runs_dir / f"{self.label}.json", dump_json(facts), "paths.runs")
        check_replaceable(self.cfg, self.stage, self.fold)
        old = self.root.parent / staging_name(self.root.name, "old")
        if self.root.exists():
            os.replace(self.root, old)
        try:
            os.replace(self.staging, self.root)
        except OSError:
            if old.exists():
                os.replace(old, self.root)
            raise
        shutil.rmtree(old, ignore_errors=True)
        log.info("%s: wrote %s (%d files) in %.1f s, peak RSS %.0f MiB", self.label, self.root, len(files),
                 facts["wall_s"], facts["peak_rss_mb"])
        return manifest

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _fail(self, err: BaseException, written: tuple[Path, ...]) -> None:
        """Remove the staging folder; a failed write becomes the one clean ArtifactError (else return)."""
        why = explain_write_failure(err, self.root, f"paths.{self.stage}", written)  # before space is freed
        self.abandon()
        if why is not None:
            raise ArtifactError(f"{self.label}: {why}; the previous artifact, if any, is untouched") from err

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._fail(exc, (self.staging,))
            return
        try:
            self.commit()
        except Exception as err:
            self._fail(err, (self.staging, self.root))
            raise


def output(cfg: Any, stage: str, fold: str | None = None) -> Output:
    """Start writing the artifact of `stage` (at `fold`); use as a context manager."""
    return Output(cfg, stage, fold)
