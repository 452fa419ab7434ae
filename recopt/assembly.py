"""Id-keyed vectors on the catalog and user indexes, and the hybrid inputs.

Two indexes are shared by every artifact: the catalog index is the row order of
``paths.ingest/movies.parquet`` (sorted movieIds) and the user index the row
order of ``paths.split/users.parquet`` (sorted userIds). The helpers here read
id files, validate id-keyed vectors and place them on an index (used by
embed-load and cf-load for precomputed inputs); :func:`load_hybrid_inputs`
loads the embed-load and cf-load artifacts and refuses them unless both are
aligned to the current indexes -- a stale or shuffled id file is named with
the fix (`dvc repro`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt.artifacts import Stored
from recopt.layout import dvc_name
from recopt.schemas import Problem, check

Ids = NDArray[np.int64]
_N_EXAMPLES = 5
_EMBED_ARRAYS = {"item_ids": "i", "embeddings": "f", "mmr": "f", "has_content": "b"}
_CF_ARRAYS = {"user_ids": "i", "item_ids": "i", "user_factors": "f", "item_factors": "f",
              "user_has_cf": "b", "user_folded": "b", "item_has_cf": "b"}


def format_examples(values: NDArray[Any]) -> str:
    """The first few values, comma-separated ("..." when there are more)."""
    shown = ", ".join(str(v) for v in values[:_N_EXAMPLES])
    return shown + (", ..." if len(values) > _N_EXAMPLES else "")


def read_ids(path: Path) -> tuple[Ids | None, list[Problem]]:
    """Ids from .npy (1-D integers) or text (one per line; a non-numeric first line is a header)."""
    file = str(path)
    if not path.is_file():
        return None, [Problem(file, None, "does not exist", "fix the path in the config")]
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            return None, [Problem(file, None, f"is not a readable .npy array ({err})", "save it with numpy.save")]
        ids = ids.reshape(-1) if ids.ndim == 2 and ids.shape[1] == 1 else ids
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            return None, [Problem(file, None, f"holds a {ids.dtype} array of shape {ids.shape}, not 1-D integer ids",
                                  "save one integer id per vector row")]
        return ids.astype(np.int64), []
    lines = pl.Series(path.read_text().splitlines(), dtype=pl.String).str.strip_chars()
    lines = lines.filter(lines != "")
    ids = lines.cast(pl.Int64, strict=False)
    if len(ids) and ids[0] is None and lines[0][:1].isalpha():
        lines, ids = lines[1:], ids[1:]  # a header line
    bad = ids.is_null()
    if bad.any():
        return None, [Problem(file, None, f"{bad.sum()} line(s) are not integer ids, e.g. "
                              f"{format_examples(lines.filter(bad).to_numpy())}", "write one integer id per line")]
    return ids.to_numpy(), []


def vector_problems(vectors: NDArray[Any], ids: Ids, file: str, id_file: str,
                    allow_zero: bool = False) -> list[Problem]:
    """Row/id count mismatch, NaN/Inf rows, zero rows (unless allowed), duplicate ids."""
    if len(ids) != len(vectors):
        return [Problem(file, None, f"has {len(vectors)} rows but {id_file} has {len(ids)} ids",
                        "write one id per vector row, in the same order")]
    problems = []
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        problems.append(Problem(file, None, f"{bad.sum()} vector(s) contain NaN or Inf, e.g. id "
                                f"{format_examples(ids[bad])}", "recompute or drop those rows"))
    zero = ~bad & ~np.any(vectors != 0, axis=1)
    if zero.any() and not allow_zero:
        problems.append(Problem(file, None, f"{zero.sum()} zero vector(s) cannot be normalised, e.g. id "
                                f"{format_examples(ids[zero])}", "drop them: items without a vector are masked"))
    ordered = np.sort(ids)
    dup = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if len(dup):
        problems.append(Problem(id_file, None, f"{len(dup)} id(s) appear more than once, e.g. "
                                f"{format_examples(dup)}", "keep one vector per id"))
    return problems


def align_rows(vectors: NDArray[Any], ids: Ids,
               index: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.bool_], int]:
    """Vectors placed on the rows of the sorted `index` (zero rows where absent),
    the mask of filled rows, and how many ids are not in `index` (ignored)."""
    pos = np.searchsorted(index, ids)
    found = pos < len(index)
    found[found] = index[pos[found]] == ids[found]
    out = np.zeros((len(index), vectors.shape[1]), dtype=np.float32)
    out[pos[found]] = vectors[found]
    mask = np.zeros(len(index), dtype=bool)
    mask[pos[found]] = True
    return out, mask, int((~found).sum())


@dataclass(frozen=True)
class HybridInputs:
    """Everything the scorer needs, aligned: rows follow item_ids (catalog) or user_ids.

    embeddings / mmr: float32 (n_items × d) / (n_items × d_mmr), unit rows where
    has_content, zero rows elsewhere. user_factors / item_factors: float32
    (n × f), zero rows where the user has no factor; user_has_cf marks users with a
    factor from the ALS fit, user_folded those with a folded-in one (recopt.cf).
    `files` maps each array to the file it came from.
    """

    item_ids: NDArray[np.int32]
    user_ids: NDArray[np.int32]
    embeddings: NDArray[np.float32]
    mmr: NDArray[np.float32]
    has_content: NDArray[np.bool_]
    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]
    user_has_cf: NDArray[np.bool_]
    user_folded: NDArray[np.bool_]
    item_has_cf: NDArray[np.bool_]
    files: dict[str, str] = field(default_factory=dict)


def _load_arrays(art: Stored, kinds: dict[str, str], problems: list[Problem]) -> dict[str, NDArray[Any]]:
    arrays = {}
    for name, kind in kinds.items():
        arr = art.npy(name)
        if arr.dtype.kind != kind or (kind == "f" and arr.dtype != np.float32):
            problems.append(Problem(str(art.path(name)), None, f"has dtype {arr.dtype}",
                                    f"run `dvc repro {dvc_name(art.stage, art.fold)}`"))
        arrays[name] = arr
    return arrays


def _alignment_problem(path: Path, ids: NDArray[Any], index: NDArray[Any], index_file: Path,
                       stage: str) -> list[Problem]:
    if ids.shape == index.shape and np.array_equal(ids, index):
        return []
    what = f"is not aligned to {index_file}: {len(ids)} ids, {len(index)} expected"
    n = min(len(ids), len(index))
    diff = np.flatnonzero(ids[:n] != index[:n])
    if len(diff):
        what += f"; first difference at row {diff[0]} ({ids[diff[0]]} vs {index[diff[0]]})"
    return [Problem(str(path), None, what + " -- the file is stale or was reordered",
                    f"re-run the stage: `dvc repro {stage}` (or `dvc repro` for the whole pipeline)")]


def _row_problems(art: Stored, arrays: dict[str, NDArray[Any]], rows: dict[str, int]) -> list[Problem]:
    problems = []
    for name, n in rows.items():
        arr = arrays.get(name)
        want_2d = arr is not None and arr.dtype.kind == "f"
        if arr is not None and (len(arr) != n or arr.ndim != (2 if want_2d else 1)):
            problems.append(Problem(str(art.path(name)), None,
                                    f"has shape {arr.shape}, expected {n} {'rows' if want_2d else 'entries'}",
                                    f"run `dvc repro {dvc_name(art.stage, art.fold)}`"))
    return problems


def load_hybrid_inputs(ingest: Stored, split: Stored, embed: Stored, cf: Stored) -> HybridInputs:
    """The embed-load and cf-load arrays of one fold, checked to share the current indexes.

    Raises DataError listing every mis-typed, mis-shaped or misaligned file.
    """
    movies_file, users_file = ingest.path("movies"), split.path("users")
    catalog = ingest.parquet("movies", columns=["movieId"])["movieId"].to_numpy()
    users = split.parquet("users", columns=["userId"])["userId"].to_numpy()
    problems: list[Problem] = []
    emb = _load_arrays(embed, _EMBED_ARRAYS, problems)
    factors = _load_arrays(cf, _CF_ARRAYS, problems)
    n_items, n_users = len(catalog), len(users)
    for art, arrays, ids_name, index, index_file in (
            (embed, emb, "item_ids", catalog, movies_file),
            (cf, factors, "item_ids", catalog, movies_file),
            (cf, factors, "user_ids", users, users_file)):
        problems += _alignment_problem(art.path(ids_name), arrays[ids_name], index, index_file,
                                       dvc_name(art.stage, art.fold))
    problems += _row_problems(embed, emb, {"embeddings": n_items, "mmr": n_items, "has_content": n_items})
    problems += _row_problems(cf, factors, {"user_factors": n_users, "user_has_cf": n_users, "user_folded": n_users,
                                            "item_factors": n_items, "item_has_cf": n_items})
    uf, vf = factors["user_factors"], factors["item_factors"]
    if uf.ndim == vf.ndim == 2 and uf.shape[1] != vf.shape[1]:
        problems.append(Problem(str(cf.root), None, f"user factors have {uf.shape[1]} columns, item factors "
                                f"{vf.shape[1]}", f"run `dvc repro {dvc_name(cf.stage, cf.fold)}`"))
    check(problems)
    # artifact labels, not absolute paths: an artifact's bytes must not depend on where the repo lives
    files = {f"embed_load.{n}": f"{embed.label}/{embed.path(n).name}" for n in _EMBED_ARRAYS}
    files |= {f"cf_load.{n}": f"{cf.label}/{cf.path(n).name}" for n in _CF_ARRAYS}
    files |= {"catalog": f"{ingest.label}/{movies_file.name}", "users": f"{split.label}/{users_file.name}"}
    return HybridInputs(item_ids=catalog.astype(np.int32), user_ids=users.astype(np.int32),
                        embeddings=emb["embeddings"], mmr=emb["mmr"], has_content=emb["has_content"],
                        user_factors=factors["user_factors"], item_factors=factors["item_factors"],
                        user_has_cf=factors["user_has_cf"], user_folded=factors["user_folded"],
                        item_has_cf=factors["item_has_cf"], files=files)


def assembly_manifest(inputs: HybridInputs) -> dict[str, Any]:
    """Paths, shapes, dtypes and coverage counts of `inputs` (JSON-ready)."""
    arrays = {name: getattr(inputs, name) for name in (
        "item_ids", "user_ids", "embeddings", "mmr", "has_content",
        "user_factors", "item_factors", "user_has_cf", "user_folded", "item_has_cf")}
    content, collab = inputs.has_content, inputs.item_has_cf
    return {
        "files": dict(inputs.files),
        "arrays": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()},
        "counts": {
            "n_items": len(inputs.item_ids),
            "items_content_and_cf": int((content & collab).sum()),
            "items_content_only": int((content & ~collab).sum()),
            "items_cf_only": int((~content & collab).sum()),
            "items_neither": int((~content & ~collab).sum()),
            "n_users": len(inputs.user_ids),
            "users_with_cf": int(inputs.user_has_cf.sum()),
            "users_folded_in": int(inputs.user_folded.sum()),
            "users_without_cf": int((~inputs.user_has_cf).sum()),
        },
    }
