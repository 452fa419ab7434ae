"""Where recopt may write, checked before any work.

Every place recopt writes is named by a key: a stage's artifact folder
(``paths.<stage>[/<fold>]``), which the stage *replaces* whole, and the shared folders it
adds its own files to (``paths.runs``; evaluate's ``paths.checkpoints``, ``paths.metrics``,
``paths.mlflow_artifacts`` and the folder of a ``sqlite:///`` ``paths.mlflow_uri``;
``paths.downloads`` when ingest downloads; Hydra's ``hydra.run.dir`` / ``hydra.sweep.dir``).
:func:`check_outputs` refuses, in one error naming each path, its key and the fix:

* an artifact folder that is not (a) absent, (b) an empty folder or (c) a folder whose
  manifest.json names that stage and fold and lists every file in it -- so a user's folder,
  a file or a symbolic link in its place is never replaced. (d) A stage's own leftover
  staging / old folders (:func:`staging_name`) of a dead process are the only other things it
  removes (:func:`leftover_pid`);
* a shared folder that is an existing file;
* any output equal to, inside or containing an input (``data.path``, ``paths.downloads``,
  precomputed vectors or factors, the repository's own files: conf/, recopt/, params.yaml ...)
  or another stage's artifact folder (two shared folders may overlap: each adds its own files);
* given ``repo`` (a `dvc repro` run: the folder of params.yaml), any output outside it, which
  DVC would refuse only after the stage had written it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recopt.config import FOLDS, ConfigError
from recopt.layout import FOLDED, MANIFEST, artifact_dir, label

STAGES = ("ingest", "split", "embed_load", "cf_load", "candidates", "evaluate")
# the shared folders each stage adds files to, besides paths.runs (run facts)
SHARED = {"evaluate": ("checkpoints", "metrics", "mlflow_artifacts")}
# inputs named by config keys, protected whenever they are set
INPUT_KEYS = ("embed_load.vectors", "embed_load.ids", "cf_load.user_factors", "cf_load.user_ids",
              "cf_load.item_factors", "cf_load.item_ids")
# the repository's own files: no output may be, hold or sit inside one
SOURCES = ("conf", "recopt", "stages", "tests", "benchmarks", ".git", ".dvc", "dvc.yaml", "dvc.lock",
           "params.yaml", "pyproject.toml")
CODE_ROOT = Path(__file__).resolve().parents[1]
_LEFTOVER = r"\.{name}\.(staging|old)-(\d+)-[0-9a-f]{{8}}"


@dataclass(frozen=True)
class Place:
    """A path recopt reads or writes, as the user named it (`key`), and what recopt does there."""

    key: str                 # paths.ingest, data.path, hydra.run.dir; for a source: "the repository's"
    path: Path
    kind: str                # "artifact" (replaced whole) | "shared" (recopt adds its files) | "input" | "source"
    stage: str | None = None  # an artifact's stage and fold
    fold: str | None = None

    @property
    def where(self) -> Path:
        return Path(self.path).resolve()

    def __str__(self) -> str:
        shown = f"{self.key} {self.path}" if self.kind == "source" else f"{self.key}={self.path}"
        return shown + (f" ({self.where})" if str(self.where) != str(self.path) else "")


def staging_name(name: str, kind: str) -> str:
    """The name of this process's `kind` ("staging" or "old") folder next to the folder `name`."""
    return f".{name}.{kind}-{os.getpid()}-{os.urandom(4).hex()}"


def leftover_pid(path: Path, name: str) -> int | None:
    """The process id in the name of a staging / old folder of the folder `name`; None for anything
    else (a file, a link, any other name), which recopt never removes."""
    found = re.fullmatch(_LEFTOVER.format(name=re.escape(name)), path.name)
    if found is None or path.is_symlink() or not path.is_dir():
        return None
    return int(found.group(2))


def _artifacts(cfg: Any, stage: str, fold: str | None = None) -> list[Place]:
    """The artifact folders of `stage` (at `fold`; every fold when None)."""
    folds = [None] if stage not in FOLDED else [fold] if fold else list(FOLDS)
    return [Place(f"paths.{stage}", artifact_dir(cfg.paths, stage, f), "artifact", stage, f) for f in folds]


def _shared(cfg: Any, stage: str) -> list[Place]:
    p = cfg.paths
    found = [Place(f"paths.{k}", Path(getattr(p, k)), "shared") for k in ("runs", *SHARED.get(stage, ()))]
    if stage == "evaluate" and p.mlflow_uri.startswith("sqlite:///"):
        found.append(Place("paths.mlflow_uri", Path(p.mlflow_uri.removeprefix("sqlite:///")).parent, "shared"))
    if stage == "ingest" and cfg.data.source == "download":
        found.append(Place("paths.downloads", Path(p.downloads), "shared"))
    return found


def _inputs(cfg: Any, repo: Path | None) -> list[Place]:
    found = [Place("paths.downloads", Path(cfg.paths.downloads), "input")]
    if cfg.data.source == "movielens" and cfg.data.path:
        found.append(Place("data.path", Path(cfg.data.path), "input"))
    for key in INPUT_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            found.append(Place(key, Path(value), "input"))
    roots = {CODE_ROOT, *([repo] if repo else [])}
    return found + [Place("the repository's", root / name, "source") for root in sorted(roots) for name in SOURCES]


def _relation(a: Path, b: Path) -> str | None:
    if a == b:
        return "is the same path as"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def _owner_problem(place: Place) -> str | None:
    """Rules (a)-(c) on an artifact folder: None when the stage may replace it."""
    root, name = place.path, label(place.stage or "", place.fold)
    fix = f"set {place.key} to a new or empty folder"
    if root.is_symlink():
        return (f"{place} is a symbolic link: replacing it would break the link — fix: {fix}, or to the "
                "folder it points to")
    blocked = next((p for p in root.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return f"{place}: {blocked} is an existing file, not a folder — fix: {fix}, or move the file away"
    if not root.exists():
        return None
    if not root.is_dir():
        return f"{place} is an existing file, not a folder recopt wrote — fix: {fix}, or move the file away"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        listed, owner = set(manifest["files"]), (manifest.get("stage"), manifest.get("fold"))
    except (OSError, ValueError, KeyError, TypeError):
        return (f"{place} is a folder recopt did not write (it holds {shown} and no {name} {MANIFEST}); a "
                f"stage replaces only an empty folder or its own artifact — fix: {fix}, or move those files away")
    if owner != (place.stage, place.fold):
        return (f"{place} holds the artifact of {label(*owner) if owner[0] else 'something else'}, not of "
                f"{name} — fix: {fix}")
    foreign = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                     if (p.is_file() or p.is_symlink()) and str(p.relative_to(root)) not in listed | {MANIFEST})
    if foreign:
        return (f"{place} holds files its {name} manifest does not list, which recopt did not write: "
                f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} — fix: move them away")
    return None


def _problems(cfg: Any, outputs: list[Place], repo: Path | None) -> list[str]:
    """Every rule of the module docstring broken by one of `outputs`."""
    every = [*_inputs(cfg, repo), *(a for s in STAGES for a in _artifacts(cfg, s)),
             *(s for st in STAGES for s in _shared(cfg, st))]
    problems, seen = [], set()
    for out in outputs:
        where = out.where
        if out.kind == "artifact":
            problems.append(_owner_problem(out))
        elif where.exists() and not where.is_dir():
            problems.append(f"{out} is an existing file: recopt writes a folder there — fix: set {out.key} to a "
                            "folder, or move the file away")
        if repo is not None and where != repo and repo not in where.parents:
            problems.append(f"{out} is outside the repository {repo} (the folder of the params file): DVC refuses "
                            f"an output outside it only after the stage has written it — fix: set {out.key} to a "
                            "folder inside the repository")
        for other in every:
            pair = frozenset({(out.key, str(out.path)), (other.key, str(other.path))})
            how = _relation(where, other.where)
            if how is None or len(pair) == 1 or pair in seen or (out.kind == other.kind == "shared"):
                continue
            seen.add(pair)
            problems.append(f"{out} {how} {other} — fix: set {out.key} to a folder of its own, apart from every "
                            "input and every other output")
    return [p for p in problems if p]


def check_outputs(cfg: Any, stage: str, fold: str | None = None, *, repo: Path | None = None,
                  extra: tuple[Place, ...] = ()) -> None:
    """Refuse, before any work, every output of `stage` that recopt may not write (module docstring).

    Args:
        cfg: the run's :class:`recopt.config.Config`.
        stage: the stage about to run.
        fold: the fold it runs (None: every fold of a folded stage).
        repo: the repository of a `dvc repro` run (every output must be inside it); None otherwise.
        extra: more folders the run writes (Hydra's run or sweep folder), as shared places.

    Raises:
        ConfigError: listing every refused output with its key and the fix.
    """
    outputs = [*_artifacts(cfg, stage, fold), *_shared(cfg, stage), *extra]
    problems = _problems(cfg, outputs, repo.resolve() if repo else None)
    if problems:
        raise ConfigError(f"{stage}: refuses to write where it is configured to (nothing was read or written):\n  "
                          + "\n  ".join(problems))


def check_replaceable(cfg: Any, stage: str, fold: str | None) -> None:
    """Refuse to replace the artifact folder of `stage` at `fold` unless rules (a)-(c) allow it, or when it
    overlaps an input or another output; the check an :class:`recopt.artifacts.Output` makes before any work
    and again just before its swap."""
    problems = _problems(cfg, _artifacts(cfg, stage, fold), None)
    if problems:
        raise ConfigError(f"{label(stage, fold)}: refuses to replace its output folder:\n  " + "\n  ".join(problems))
