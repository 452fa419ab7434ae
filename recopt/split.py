"""Train/test split, the tune fold built from train alone, simulated cold-start users, slices.

Two folds, each a (train, held-out, users) triple written as its own artifact:

* ``test``: the ratings split into train and test by ``split.strategy`` with ``test_frac``.
* ``tune``: the same procedure applied to the test fold's train alone, with
  ``validation_frac``: tune-train and validation. Its simulated cold users are a
  seeded set disjoint from the test fold's. Nothing of the test split reaches it,
  so every choice made on it (alpha, beta, baselines, reference settings) is
  free of test information.

Strategies (all deterministic: ties in time are broken by movieId):
* ``temporal_user``: each user's last ``test_frac`` of ratings by time go to
  test (floor(n * test_frac), at least 1 when the user has >= 2 ratings).
* ``temporal_global``: one time cutoff for everyone, the (1 - test_frac)
  quantile of all timestamps; ratings strictly after it are test.
* ``leave_last_n``: each user's last ``leave_last_n`` ratings are test (at
  most n - 1, so every user keeps one train rating).

Then a seeded ``cold_user_frac`` of the users with more than
``cold_user_train_n`` ratings keep only their first ``cold_user_train_n``
ratings in train; the rest of their ratings go to the held-out split. Slices:
``cold`` (those users, and any user left with no train rating), ``heavy`` (top
``heavy_frac`` of the others by train count), ``warm`` (the rest). Train and
held-out are disjoint and together are exactly the input ratings.

A fold with nothing held out (every user has a single rating, or no rating is after the
temporal_global cutoff) stops the stage with the counts; one whose held-out split has no
rating >= ``relevance_threshold`` cannot evaluate anyone: the stage stops there and names the
key. A fold whose train keeps less than ``SMALL_TRAIN_SHARE`` of its ratings (e.g. a huge
``leave_last_n``) is valid but implausible: its share is counted in the manifest and a
warning is printed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt.artifacts import open_artifact, output
from recopt.config import HELDOUT, Config, ConfigError, SplitConfig
from recopt.rng import stage_rng
from recopt.runlog import log, timed
from recopt.schemas import DataError, Problem

SMALL_TRAIN_SHARE = 0.5


def split_ratings(ratings: pl.DataFrame, cfg: SplitConfig, relevance_threshold: float,
                  rng: np.random.Generator, *, holdout_frac: float | None = None,
                  not_cold: NDArray[np.int64] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split canonical ratings into (train, held-out, users).

    `holdout_frac` replaces ``cfg.test_frac`` (the tune fold passes validation_frac);
    users in `not_cold` are never drawn as simulated cold users. users has one row
    per user of `ratings`: userId, n_train, n_heldout, n_relevant (held-out ratings
    >= relevance_threshold), slice. Empty ratings give empty frames.
    """
    frac = cfg.test_frac if holdout_frac is None else holdout_frac
    df = ratings.sort(["userId", "timestamp", "movieId"]).with_columns(
        pos=pl.int_range(pl.len()).over("userId").cast(pl.Int32),
        n=pl.len().over("userId").cast(pl.Int32),
    )
    if cfg.strategy == "temporal_user":
        n_test = pl.when(pl.col("n") >= 2).then(
            pl.max_horizontal((pl.col("n") * frac).floor().cast(pl.Int32), pl.lit(1))).otherwise(0)
        is_test = pl.col("pos") >= pl.col("n") - n_test
    elif cfg.strategy == "leave_last_n":
        n_test = pl.min_horizontal(pl.lit(cfg.leave_last_n), pl.col("n") - 1)
        is_test = pl.col("pos") >= pl.col("n") - n_test
    elif cfg.strategy == "temporal_global":
        cutoff = df["timestamp"].quantile(1.0 - frac, interpolation="lower") if df.height else 0
        is_test = pl.col("timestamp") > cutoff
    else:
        raise ValueError(f"split.strategy: unknown strategy {cfg.strategy!r}")

    user_n = df.group_by("userId").agg(pl.first("n")).sort("userId")
    eligible = user_n.filter(pl.col("n") > cfg.cold_user_train_n)["userId"].to_numpy()
    if not_cold is not None:
        eligible = eligible[~np.isin(eligible, not_cold)]
    n_cold = int(round(cfg.cold_user_frac * len(user_n)))
    cold = np.sort(rng.choice(eligible, size=min(n_cold, len(eligible)), replace=False))
    is_cold = pl.col("userId").is_in(pl.Series(cold, dtype=pl.Int32).implode())
    df = df.with_columns(
        is_test=pl.when(is_cold).then(pl.col("pos") >= cfg.cold_user_train_n).otherwise(is_test)
    )
    cols = ratings.columns
    train = df.filter(~pl.col("is_test")).select(cols)
    test = df.filter(pl.col("is_test")).select(cols)

    users = df.group_by("userId").agg(
        n_train=(~pl.col("is_test")).sum().cast(pl.Int32),
        n_heldout=pl.col("is_test").sum().cast(pl.Int32),
        n_relevant=(pl.col("is_test") & (pl.col("rating") >= relevance_threshold)).sum().cast(pl.Int32),
    ).sort("userId")
    users = users.with_columns(cold=is_cold | (pl.col("n_train") == 0))
    n_heavy = int(round(cfg.heavy_frac * users.filter(~pl.col("cold")).height))
    heavy_ids = (users.filter(~pl.col("cold")).sort(["n_train", "userId"], descending=[True, False])
                 .head(n_heavy)["userId"])
    users = users.with_columns(
        slice=pl.when(pl.col("cold")).then(pl.lit("cold"))
        .when(pl.col("userId").is_in(heavy_ids.implode())).then(pl.lit("heavy"))
        .otherwise(pl.lit("warm"))
    ).drop("cold")
    return train, test, users


def relevant_items(heldout: pl.DataFrame, relevance_threshold: float) -> pl.DataFrame:
    """Held-out interactions rated >= relevance_threshold: every user's relevant items."""
    return heldout.filter(pl.col("rating") >= relevance_threshold)


def _holdout_key(cfg: SplitConfig, fold: str) -> str:
    """The key that sets how much of a fold is held out."""
    if cfg.strategy == "leave_last_n":
        return "split.leave_last_n"
    return "split.test_frac" if fold == "test" else "split.validation_frac"


def _check_heldout(held: pl.DataFrame, users: pl.DataFrame, fold: str, cfg: SplitConfig, source: str) -> None:
    """Refuse a fold with nothing held out, saying why with the counts."""
    if held.height:
        return
    rated = "rating" if fold == "test" else "train rating (of the test fold)"
    n_users, n_multi, n_ratings = users.height, int((users["n_train"] >= 2).sum()), int(users["n_train"].sum())
    if n_multi == 0:
        fix = ("use data in which users have rated at least two movies" if fold == "test" else
               f"hold out less for test ({_holdout_key(cfg, 'test')}) so that users keep >= 2 train ratings, "
               "or use data with more ratings per user")
        raise DataError([Problem(f"split ({source})", None, (
            f"no user has a rating to hold out for {HELDOUT[fold]}: each of the {n_users:,} users has a single "
            f"{rated}, and a user needs >= 2 (one to train on, one to hold out)"), fix)])
    raise DataError([Problem(f"split ({source})", None, (
        f"the {HELDOUT[fold]} fold is empty: split.strategy={cfg.strategy} holds out none of the {n_ratings:,} "
        f"{rated}s ({n_multi:,} of {n_users:,} users have >= 2)"),
        f"use split.strategy=temporal_user, or raise {_holdout_key(cfg, fold)} (temporal_global holds out the "
        "ratings after one time cutoff: many equal timestamps leave none after it)")])


def _train_share(train: pl.DataFrame, held: pl.DataFrame, fold: str, cfg: SplitConfig) -> tuple[float, list[str]]:
    """The share of a fold's ratings left in train, and a warning when it is below SMALL_TRAIN_SHARE."""
    total = train.height + held.height
    share = train.height / total if total else 1.0
    if share >= SMALL_TRAIN_SHARE:
        return share, []
    key = _holdout_key(cfg, fold)
    return share, [f"split@{fold}: train keeps only {share:.1%} of the {total:,} ratings ({held.height:,} held out "
                   f"for {HELDOUT[fold]}, split.strategy={cfg.strategy}): models are fit on a small part of the "
                   f"data; lower {key} (or split.cold_user_frac) if that is not intended"]


def _check_relevance(heldout: pl.DataFrame, fold: str, threshold: float) -> None:
    if heldout.height and (heldout["rating"] >= threshold).any():
        return
    seen = (f"its ratings range {heldout['rating'].min()} .. {heldout['rating'].max()}" if heldout.height
            else "it is empty")
    raise ConfigError(f"relevance_threshold: no {HELDOUT[fold]} rating is >= {threshold} ({seen}), so no user "
                      "has a relevant item and nothing can be evaluated — lower relevance_threshold (e.g. "
                      "relevance_threshold=3.0) or check the rating scale of the data")


def run_split(cfg: Config) -> dict[str, Any]:
    """Run the split stage: paths.ingest -> the test fold, then the tune fold from its train."""
    ingest = open_artifact(cfg.paths, "ingest", reader="split", config=cfg)
    timings: dict[str, float] = {}
    with timed("read", timings):
        ratings = ingest.parquet("ratings")
    rng = stage_rng(cfg.seed, "split")
    with timed("split_test", timings):
        train, test, users = split_ratings(ratings, cfg.split, cfg.relevance_threshold, rng)
    cold_in_test = users.filter(pl.col("slice") == "cold")["userId"].to_numpy()
    with timed("split_tune", timings):
        tune_train, validation, tune_users = split_ratings(
            train, cfg.split, cfg.relevance_threshold, stage_rng(cfg.seed, "split/tune"),
            holdout_frac=cfg.split.validation_frac, not_cold=cold_in_test)
    folds = {"test": (train, test, users), "tune": (tune_train, validation, tune_users)}
    source = ingest.summary.get("source") or str(ingest.root)
    for fold, (_, held, us) in folds.items():
        _check_heldout(held, us, fold, cfg.split, source)
        _check_relevance(held, fold, cfg.relevance_threshold)
    summaries = {}
    for fold, (tr, held, us) in folds.items():
        with output(cfg, "split", fold) as out:
            if fold == "test":
                out.uses(ingest)
            else:  # built from the test fold's train alone: no test rating is an input
                out.uses_file(open_artifact(cfg.paths, "split", "test", reader="split@tune", config=cfg), "train")
            out.timings = timings
            for name, df in (("train", tr), ("heldout", held), ("users", us)):
                out.parquet(name, df)
            share, warnings = _train_share(tr, held, fold, cfg.split)
            for warning in warnings:
                log.warning("%s", warning)
            out.summary = {
                "source": ingest.summary.get("source"), "strategy": cfg.split.strategy, "heldout": HELDOUT[fold],
                "counts": {"n_train": tr.height, "n_heldout": held.height, "n_users": us.height,
                           "train_share": round(share, 4),
                           "users_with_relevant_heldout": int((us["n_relevant"] > 0).sum()),
                           "slices": dict(us.group_by("slice").len().sort("slice").iter_rows())},
                "warnings": warnings,
            }
        summaries[fold] = out.summary
    return summaries
