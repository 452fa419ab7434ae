"""Collaborative-filtering factors on the user and catalog indexes (the cf-load stage).

Methods (``cf_load.method``):

* ``als``: implicit's AlternatingLeastSquares on the train split only. A train
  rating r becomes the confidence ``c = 1 + confidence_scale * r / 5`` of a
  positive preference (implicit treats unobserved cells as preference 0 with
  confidence 1), so a 5-star rating weighs ``1 + confidence_scale``.
  Excluded from training: cold-start users (slice "cold" in users.parquet), items
  with fewer than ``min_item_ratings`` train ratings from the remaining users
  (cold items, left without a factor: zero row, item_has_cf False), and users left
  with no rating after that. Same seed, same factors: the random state comes from
  ``stage_rng(seed, "cf_load")`` and BLAS runs on one thread during the fit
  (implicit's own threads solve users independently).

  **Fold-in.** A user excluded from the fit who has train ratings on items with a
  factor (every simulated cold user keeps ``split.cold_user_train_n`` of them) gets
  a factor by one regularised least-squares solve against the fixed item factors,
  with the fit's confidence weighting -- the ALS user step, never a refit:
  ``x_u = (Y'Y + Y'(C_u - I)Y + regularization * I)^-1 Y'C_u p_u`` (implicit's
  ``recalculate_user``). ``user_has_cf`` marks users with a factor from the fit,
  ``user_folded`` those with a folded-in one; a user with neither has a zero row.
* ``precomputed``: user and item factors from .npy files with their id lists,
  validated (shapes, NaN/Inf, duplicate ids) and aligned to the indexes; ids
  outside an index are counted and ignored, index rows without a factor masked.
  Nothing is folded in (the confidence weighting of a fit done elsewhere is unknown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from recopt.artifacts import open_artifact, output
from recopt.assembly import align_rows, read_ids, vector_problems
from recopt.config import CFConfig, Config
from recopt.keys import positions
from recopt.rng import stage_rng
from recopt.runlog import log, timed
from recopt.schemas import Problem, check

Floats = NDArray[np.float32]
Mask = NDArray[np.bool_]
CONFIDENCE = "confidence = 1 + confidence_scale * rating / 5"


def index_rows(ids: NDArray[Any], index: NDArray[Any], file: str, column: str, index_file: str,
               fix: str) -> tuple[NDArray[np.int64], list[Problem]]:
    """Row of each id in the sorted `index`; a Problem when some are absent."""
    pos = positions(index, ids)  # one lookup gives both the rows and the membership
    found = pos >= 0
    if found.all():
        return pos, []
    missing = np.unique(ids[~found])
    return pos, [Problem(file, column, f"{len(missing)} id(s) are not in {index_file}, e.g. "
                         f"{', '.join(map(str, missing[:5]))}", fix)]


def training_matrix(user_rows: NDArray[np.int64], item_rows: NDArray[np.int64], ratings: NDArray[Any],
                    cold_user: Mask, n_items: int, cf: CFConfig) -> tuple[sp.csr_matrix, Mask, Mask, dict[str, int]]:
    """The confidence matrix ALS trains on, compacted to the users and items that get a factor.

    Inputs are one entry per train rating (user index row, catalog row, rating).
    Returns (matrix of shape (users with factor, items with factor), user mask
    over the user index, item mask over the catalog, counts). Rows and columns
    follow index order.
    """
    keep = ~cold_user[user_rows]
    item_n = np.bincount(item_rows[keep], minlength=n_items)
    item_ok = item_n >= cf.min_item_ratings
    keep &= item_ok[item_rows]
    user_ok = np.bincount(user_rows[keep], minlength=len(cold_user)) > 0
    item_ok &= np.bincount(item_rows[keep], minlength=n_items) > 0
    matrix = confidence_matrix(user_rows[keep], item_rows[keep], ratings[keep], user_ok, item_ok, cf)
    counts = {"train_ratings": len(user_rows), "train_ratings_used": int(keep.sum()),
              "cold_users_excluded": int(cold_user.sum()),
              "users_without_usable_rating": int((~cold_user & ~user_ok).sum()),
              "cold_items_excluded": int(((item_n > 0) & (item_n < cf.min_item_ratings)).sum()),
              "items_without_train_rating": int((item_n == 0).sum())}
    return matrix, user_ok, item_ok, counts


def confidence_matrix(user_rows: NDArray[np.int64], item_rows: NDArray[np.int64], ratings: NDArray[Any],
                      user_ok: Mask, item_ok: Mask, cf: CFConfig) -> sp.csr_matrix:
    """Confidence ``1 + confidence_scale * rating / 5`` of each rating, as a matrix compacted to the users
    of `user_ok` and the items of `item_ok` (rows and columns in index order; every rating's user and item
    must be in them)."""
    u_new = np.cumsum(user_ok) - 1
    i_new = np.cumsum(item_ok) - 1
    confidence = (1.0 + cf.confidence_scale * ratings.astype(np.float32) / 5.0).astype(np.float32)
    matrix = sp.csr_matrix((confidence, (u_new[user_rows], i_new[item_rows])),
                           shape=(int(user_ok.sum()), int(item_ok.sum())), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


def fold_in(item_factors: Floats, confidence: sp.csr_matrix, regularization: float) -> Floats:
    """ALS fold-in: one factor per row of `confidence` (users x the items of `item_factors`, the fit's
    confidence values), each the exact regularised least-squares solve of the ALS user step against the
    fixed item factors (implicit's ``recalculate_user``, a Cholesky solve per user). Deterministic: each
    user's solve is independent of the others."""
    from implicit.cpu.als import AlternatingLeastSquares

    n = confidence.shape[0]
    if n == 0:
        return np.zeros((0, item_factors.shape[1]), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=item_factors.shape[1], regularization=regularization, alpha=1.0,
                                        dtype=np.float32)
        model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        out = model.recalculate_user(np.arange(n), confidence.tocsr())
    return np.asarray(out, dtype=np.float32).reshape(n, item_factors.shape[1])


def fit_als(matrix: sp.csr_matrix, factors: int, regularization: float, iterations: int,
            random_state: int, show_progress: bool = True) -> tuple[Floats, Floats]:
    """(user factors, item factors) of implicit's CPU ALS on a users × items confidence matrix.

    Deterministic for a given random_state: BLAS is limited to one thread
    during the fit, as implicit recommends.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                        iterations=iterations, random_state=random_state, dtype=np.float32)
        model.fit(matrix, show_progress=show_progress)
    return np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)


def als_factors(train: pl.DataFrame, users: pl.DataFrame, item_ids: NDArray[Any], cf: CFConfig,
                random_state: int, *, split_dir: Path,
                show_progress: bool = True) -> tuple[Floats, Floats, Mask, Mask, Mask, dict[str, int]]:
    """ALS factors on the user index (rows of `users`) and catalog (`item_ids`), users excluded from the
    fit folded in.

    Args:
        train: userId, movieId, rating; every id must be in the indexes (DataError otherwise).
        users: the split's users table (userId, slice), the user index.
        item_ids: the catalog index.
    Returns:
        (user factors, item factors, user_has_cf (fit), user_folded, item_has_cf, counts); rows without
        a factor are zero.
    """
    user_ids = users["userId"].to_numpy()
    train_file, users_file = str(split_dir / "train.parquet"), str(split_dir / "users.parquet")
    u, p1 = index_rows(train["userId"].to_numpy(), user_ids, train_file, "userId", users_file,
                       "the split is stale or was edited: run `dvc repro split`")
    i, p2 = index_rows(train["movieId"].to_numpy(), item_ids, train_file, "movieId", "movies.parquet",
                       "the catalog and the split are out of step: run `dvc repro`")
    check(p1 + p2)
    cold = (users["slice"] == "cold").to_numpy()
    ratings = train["rating"].to_numpy()
    matrix, user_ok, item_ok, counts = training_matrix(u, i, ratings, cold, len(item_ids), cf)
    user_f = np.zeros((len(user_ids), cf.factors), dtype=np.float32)
    item_f = np.zeros((len(item_ids), cf.factors), dtype=np.float32)
    folded = np.zeros(len(user_ids), dtype=bool)
    if matrix.nnz:
        log.info("cf-load: ALS on %d users × %d items, %d ratings", *matrix.shape, matrix.nnz)
        fitted_u, fitted_i = fit_als(matrix, cf.factors, cf.regularization, cf.iterations, random_state,
                                     show_progress)
        user_f[user_ok], item_f[item_ok] = fitted_u, fitted_i
        usable = ~user_ok[u] & item_ok[i]  # ratings of users outside the fit on items with a factor
        folded = np.bincount(u[usable], minlength=len(user_ids)) > 0
        conf = confidence_matrix(u[usable], i[usable], ratings[usable], folded, item_ok, cf)
        user_f[folded] = fold_in(fitted_i, conf, cf.regularization)
        log.info("cf-load: folded in %d users excluded from the fit", int(folded.sum()))
    else:
        log.warning("cf-load: no train rating is usable for ALS; no user or item gets a factor")
        user_ok[:], item_ok[:] = False, False
    return user_f, item_f, user_ok, folded, item_ok, counts


def precomputed_factors(cf: CFConfig, user_ids: NDArray[Any],
                        item_ids: NDArray[Any]) -> tuple[Floats, Floats, Mask, Mask, dict[str, int]]:
    """The user's factors aligned to the user index and the catalog; all problems in one DataError."""
    problems: list[Problem] = []
    loaded: dict[str, tuple[NDArray[Any], NDArray[np.int64]]] = {}
    for side in ("user", "item"):
        path, ids_path = Path(getattr(cf, f"{side}_factors") or ""), Path(getattr(cf, f"{side}_ids") or "")
        ids, id_problems = read_ids(ids_path)
        problems += id_problems
        if not path.is_file():
            problems.append(Problem(str(path), None, "does not exist", f"fix cf_load.{side}_factors"))
            continue
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            problems.append(Problem(str(path), None, f"is not a readable .npy array ({err})",
                                    "save it with numpy.save"))
            continue
        if values.ndim != 2 or values.dtype.kind not in "fiu":
            problems.append(Problem(str(path), None, f"holds a {values.dtype} array of shape {values.shape}, "
                                    "expected 2-D numbers (rows × factors)", "save a float array (n, factors)"))
        elif ids is not None:
            problems += vector_problems(values, ids, str(path), str(ids_path), allow_zero=True)
            loaded[side] = (values, ids)
    if len(loaded) == 2 and loaded["user"][0].shape[1] != loaded["item"][0].shape[1]:
        problems.append(Problem(str(cf.item_factors), None, f"has {loaded['item'][0].shape[1]} factors but "
                                f"{cf.user_factors} has {loaded['user'][0].shape[1]}",
                                "give users and items factors of the same dimension"))
    check(problems)
    user_f, user_ok, user_unknown = align_rows(*loaded["user"], user_ids)
    item_f, item_ok, item_unknown = align_rows(*loaded["item"], item_ids)
    for side, ok, ids_path, index in (("user", user_ok, cf.user_ids, "users.parquet"),
                                      ("item", item_ok, cf.item_ids, "movies.parquet")):
        if not ok.any():
            problems.append(Problem(str(ids_path), None, f"none of its ids is in {index}",
                                    f"list the {side} ids of {index} (not row numbers)"))
    check(problems)
    return user_f, item_f, user_ok, item_ok, {"user_ids_not_in_index": user_unknown,
                                              "item_ids_not_in_catalog": item_unknown}


def run_cf_load(cfg: Config, fold: str) -> dict[str, Any]:
    """Run the cf-load stage for `fold`: that fold's train (+ the catalog) -> factors."""
    cf = cfg.cf_load
    reader = f"cf_load@{fold}"
    ingest = open_artifact(cfg.paths, "ingest", reader=reader, config=cfg)
    split = open_artifact(cfg.paths, "split", fold, reader=reader, config=cfg)
    with output(cfg, "cf_load", fold) as out:
        out.uses(ingest, split)
        t = out.timings
        with timed("read", t):
            item_ids = ingest.parquet("movies", columns=["movieId"])["movieId"].to_numpy().astype(np.int32)
            users = split.parquet("users", columns=["userId", "slice"])
            user_ids = users["userId"].to_numpy().astype(np.int32)
        params: dict[str, Any] = {"method": cf.method}
        if cf.method == "als":
            random_state = int(stage_rng(cfg.seed, "cf_load").integers(2**31 - 1))
            with timed("read_train", t):
                train = split.parquet("train", columns=["userId", "movieId", "rating"])
            with timed("als", t):
                user_f, item_f, user_ok, folded, item_ok, counts = als_factors(
                    train, users, item_ids, cf, random_state, split_dir=split.root)
            params |= {"factors": cf.factors, "regularization": cf.regularization, "iterations": cf.iterations,
                       "confidence_scale": cf.confidence_scale, "confidence": CONFIDENCE,
                       "min_item_ratings": cf.min_item_ratings, "random_state": random_state,
                       "library": "implicit.cpu.als.AlternatingLeastSquares"}
        else:
            with timed("precomputed", t):
                user_f, item_f, user_ok, item_ok, counts = precomputed_factors(cf, user_ids, item_ids)
            folded = np.zeros(len(user_ids), dtype=bool)
            params |= {"factors": user_f.shape[1], "user_factors": cf.user_factors, "user_ids": cf.user_ids,
                       "item_factors": cf.item_factors, "item_ids": cf.item_ids}
        with timed("write", t):
            for name, arr in (("user_factors", user_f), ("item_factors", item_f), ("user_has_cf", user_ok),
                              ("user_folded", folded), ("item_has_cf", item_ok), ("user_ids", user_ids),
                              ("item_ids", item_ids)):
                out.npy(name, arr)
        out.summary = {
            **params,
            "shapes": {"user_factors": list(user_f.shape), "item_factors": list(item_f.shape)},
            "dtype": str(user_f.dtype),
            "counts": {"n_users": len(user_ids), "users_with_factor": int(user_ok.sum()),
                       "users_folded_in": int(folded.sum()),
                       "n_items": len(item_ids), "items_with_factor": int(item_ok.sum()), **counts},
            "catalog_coverage": round(float(item_ok.mean()) if len(item_ok) else 0.0, 6),
        }
    return out.summary
