"""Train/test split with simulated cold-start users and per-user slices.

Strategies (all deterministic: ties in time are broken by movieId):
* ``temporal_user``: each user's last ``test_frac`` of ratings by time go to
  test (floor(n * test_frac), at least 1 when the user has >= 2 ratings).
* ``temporal_global``: one time cutoff for everyone, the (1 - test_frac)
  quantile of all timestamps; ratings strictly after it are test.
* ``leave_last_n``: each user's last ``leave_last_n`` ratings are test (at
  most n - 1, so every user keeps one train rating).

Then a seeded ``cold_user_frac`` of the users with more than
``cold_user_train_n`` ratings keep only their first ``cold_user_train_n``
ratings in train; the rest of their ratings go to test. Slices: ``cold`` (those
users, and any user left with no train rating), ``heavy`` (top ``heavy_frac``
of the others by train count), ``warm`` (the rest). Train and test are
disjoint and together are exactly the input ratings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt.config import Config, SplitConfig
from recopt.io import run_stats, timed, write_json, write_parquet
from recopt.rng import stage_rng

SLICES = ("cold", "warm", "heavy")


def split_ratings(ratings: pl.DataFrame, cfg: SplitConfig, relevance_threshold: float,
                  rng: np.random.Generator) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split canonical ratings into (train, test, users).

    users has one row per user of `ratings`: userId, n_train, n_test,
    n_relevant (test ratings >= relevance_threshold), slice. Empty ratings give
    empty frames.
    """
    df = ratings.sort(["userId", "timestamp", "movieId"]).with_columns(
        pos=pl.int_range(pl.len()).over("userId").cast(pl.Int32),
        n=pl.len().over("userId").cast(pl.Int32),
    )
    if cfg.strategy == "temporal_user":
        n_test = pl.when(pl.col("n") >= 2).then(
            pl.max_horizontal((pl.col("n") * cfg.test_frac).floor().cast(pl.Int32), pl.lit(1))).otherwise(0)
        is_test = pl.col("pos") >= pl.col("n") - n_test
    elif cfg.strategy == "leave_last_n":
        n_test = pl.min_horizontal(pl.lit(cfg.leave_last_n), pl.col("n") - 1)
        is_test = pl.col("pos") >= pl.col("n") - n_test
    elif cfg.strategy == "temporal_global":
        cutoff = df["timestamp"].quantile(1.0 - cfg.test_frac, interpolation="lower") if df.height else 0
        is_test = pl.col("timestamp") > cutoff
    else:
        raise ValueError(f"split.strategy: unknown strategy {cfg.strategy!r}")

    user_n = df.group_by("userId").agg(pl.first("n")).sort("userId")
    eligible = user_n.filter(pl.col("n") > cfg.cold_user_train_n)["userId"].to_numpy()
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
        n_test=pl.col("is_test").sum().cast(pl.Int32),
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


def read_relevant(split_dir: Path, relevance_threshold: float) -> pl.DataFrame:
    """Test interactions rated >= relevance_threshold: every user's relevant items."""
    return pl.read_parquet(Path(split_dir) / "test.parquet").filter(pl.col("rating") >= relevance_threshold)


def run_split(cfg: Config) -> dict[str, Any]:
    """Run the split stage on paths.ingest, write paths.split; returns its manifest."""
    started, timings = time.perf_counter(), {}
    out = Path(cfg.paths.split)
    with timed("read", timings):
        ratings = pl.read_parquet(Path(cfg.paths.ingest) / "ratings.parquet")
    with timed("split", timings):
        train, test, users = split_ratings(ratings, cfg.split, cfg.relevance_threshold,
                                           stage_rng(cfg.seed, "split"))
    with timed("write", timings):
        for name, df in (("train", train), ("test", test), ("users", users)):
            write_parquet(df, out / f"{name}.parquet")
    slices = dict(users.group_by("slice").len().sort("slice").iter_rows())
    manifest = {
        "strategy": cfg.split.strategy,
        "counts": {"n_train": train.height, "n_test": test.height, "n_users": users.height,
                   "users_with_relevant_test": int((users["n_relevant"] > 0).sum()),
                   "slices": slices},
        **run_stats(timings, started),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
