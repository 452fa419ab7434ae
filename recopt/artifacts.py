"""Every stage's artifact as a whole: manifests, the staged atomic write, verification on read.

Each stage writes one *artifact* per fold (``ingest`` has no fold): a folder
``paths.<stage>[/<fold>]`` holding the files named in recopt.layout and a
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

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt.errors import ArtifactError
from recopt.hashstate import HashState, sha256_file
from recopt.layout import (MANIFEST, artifact_dir, dump_json, dvc_name, file_name, label, part_name,
                           run_facts_path, write_text_atomic)
from recopt.outputs import check_replaceable, leftover_pid, staging_name
from recopt.runlog import log, peak_rss_mb
from recopt.write_failure import explain_write_failure

FORMAT = 2
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

def param_values(config: Any, keys: Any) -> dict[str, Any]:
    """The config's values of `keys` (sections are flattened to their leaves: `candidates.c_max`)."""
    tree = config.to_dict()
    flat: dict[str, Any] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}", v)
        else:
            flat[key] = json.loads(dump_json(value))

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

    def part(self, name: str, key: int | str) -> Path:
        """Path of part `key` of parted file `name` (a pool batch, a run's lists); counted as read."""
        rel = part_name(self.stage, name, key)
        self.read.add(rel)
        return self.root / rel

    def sha256(self, rel: str) -> str:
        return self.manifest["files"][rel]["sha256"]


_STATES: dict[str, HashState] = {}


def hash_state(paths: Any) -> HashState:
    """The content hashes remembered under paths.runs (recopt.hashstate), one table per process."""
    key = str(Path(paths.runs).resolve())
    if key not in _STATES:
        _STATES[key] = HashState(Path(paths.runs))
    return _STATES[key]


def open_artifact(paths: Any, stage: str, fold: str | None = None, *, reader: str, config: Any = None,
                  ignore: tuple[str, ...] = ()) -> Stored:
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
    state = hash_state(paths)  # an unchanged file is verified by its identity, a changed one hashed anew
    started = time.perf_counter()
    for rel, entry in sorted(files.items()):
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if st.st_size != entry["bytes"]:
            problems.append(f"{rel} has {st.st_size} bytes, the manifest says {entry['bytes']}")
        elif state.digest(p, st) != entry["sha256"]:
            problems.append(f"{rel} was changed after the stage wrote it (content hash differs)")
    if time.perf_counter() - started > 2:
        log.info("%s: verified %s (%d files, %.2f GB) in %.1f s", reader, name, len(files),
                 sum(e["bytes"] for e in files.values()) / 2**30, time.perf_counter() - started)
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
    recorded = {k: v for k, v in manifest.get("params", {}).items() if k not in ignore}
    differ = _params_problems(recorded, config) if config is not None else []
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
        self.known: dict[str, str] = {}  # sha256 of staged files linked from a verified artifact (not re-read)
        self.facts_path = run_facts_path(cfg.paths, label(stage, fold))
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
        """Staging path of declared file `name`."""
        return self._staged(file_name(self.stage, name, self.fold))

    def part(self, name: str, key: int | str) -> Path:
        """Staging path of part `key` of parted file `name` (recopt.layout.PARTS)."""
        return self._staged(part_name(self.stage, name, key))

    def _staged(self, rel: str) -> Path:
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
                rel = str(p.relative_to(self.staging))
                files[rel] = {"bytes": p.stat().st_size, "sha256": self.known.get(rel) or sha256_file(p)}
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
        write_text_atomic(self.facts_path, dump_json(facts), "paths.runs")
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
        state = hash_state(self.cfg.paths)  # the next reader verifies these by their identity alone
        for rel, entry in files.items():
            state.remember(self.root / rel, entry["sha256"])
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


def add_run_facts(out: Output, **facts: float) -> None:
    """Add facts measured after the commit (e.g. MLflow logging) to the stage's run facts; its wall time
    then covers them."""
    doc = json.loads(out.facts_path.read_text()) if out.facts_path.is_file() else {}
    doc |= facts | {"wall_s": round(time.perf_counter() - out.started, 3)}
    write_text_atomic(out.facts_path, dump_json(doc), "paths.runs")


def output(cfg: Any, stage: str, fold: str | None = None) -> Output:
    """Start writing the artifact of `stage` (at `fold`); use as a context manager."""
    return Output(cfg, stage, fold)
