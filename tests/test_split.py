"""Split invariants: disjoint, lossless, chronological, deterministic; cold and heavy slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.config import SplitConfig
from recopt.rng import stage_rng
from recopt.split import split_ratings

BASE = SplitConfig(strategy="temporal_user", test_frac=0.2, leave_last_n=2, cold_user_frac=0.0,
                   cold_user_train_n=5, heavy_frac=0.1)


def _ratings(rng: np.random.Generator, n_users: int, max_per_user: int) -> pl.DataFrame:
    counts = rng.integers(1, max_per_user + 1, n_users)
    users = np.repeat(np.arange(1, n_users + 1), counts)
    return pl.DataFrame({
        "userId": users.astype(np.int32),
        "movieId": np.concatenate([rng.choice(1000, c, replace=False) + 1 for c in counts]).astype(np.int32),
        "rating": (rng.integers(1, 11, len(users)) / 2).astype(np.float32),
        "timestamp": rng.integers(0, 50, len(users)).astype(np.int64),  # many ties on purpose
    })


def _key(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(["userId", "movieId"])


def _check_invariants(ratings: pl.DataFrame, train: pl.DataFrame, test: pl.DataFrame) -> None:
    assert train.join(test, on=["userId", "movieId"], how="inner").height == 0  # disjoint
    assert _key(pl.concat([train, test])).equals(_key(ratings))  # lossless, same rows
    last_train = train.group_by("userId").agg(pl.col("timestamp").max().alias("t_train"))
    first_test = test.group_by("userId").agg(pl.col("timestamp").min().alias("t_test"))
    both = last_train.join(first_test, on="userId")
    assert (both["t_train"] <= both["t_test"]).all()  # chronology per user


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(["temporal_user", "temporal_global", "leave_last_n"]),
       cold=st.sampled_from([0.0, 0.2]))
def test_split_invariants_hold(seed: int, strategy: str, cold: float) -> None:
    ratings = _ratings(np.random.default_rng(seed), 30, 25)
    cfg = dataclasses.replace(BASE, strategy=strategy, cold_user_frac=cold)
    train, test, users = split_ratings(ratings, cfg, 4.0, stage_rng(seed, "split"))
    _check_invariants(ratings, train, test)
    assert users.height == ratings["userId"].n_unique()
    assert (users["n_train"] + users["n_test"]).sum() == ratings.height
    again = split_ratings(ratings, cfg, 4.0, stage_rng(seed, "split"))
    assert again[0].equals(train) and again[1].equals(test) and again[2].equals(users)


def test_temporal_user_takes_the_last_fifth_with_deterministic_ties() -> None:
    ratings = pl.DataFrame({"userId": [1] * 10, "movieId": list(range(10, 0, -1)),
                            "rating": [4.0] * 10, "timestamp": [5] * 10},
                           schema={"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32,
                                   "timestamp": pl.Int64})
    train, test, users = split_ratings(ratings, BASE, 4.0, stage_rng(0, "split"))
    assert sorted(test["movieId"].to_list()) == [9, 10]  # equal times: ties broken by movieId
    assert users.row(0, named=True) == {"userId": 1, "n_train": 8, "n_test": 2, "n_relevant": 2, "slice": "warm"}


def test_leave_last_n_keeps_one_train_rating() -> None:
    ratings = _ratings(np.random.default_rng(1), 20, 6)
    cfg = dataclasses.replace(BASE, strategy="leave_last_n", leave_last_n=3)
    train, test, users = split_ratings(ratings, cfg, 4.0, stage_rng(0, "split"))
    n = ratings.group_by("userId").len().sort("userId")["len"].to_numpy()
    assert (users["n_test"].to_numpy() == np.minimum(3, n - 1)).all()


def test_cold_users_keep_only_their_first_ratings() -> None:
    ratings = _ratings(np.random.default_rng(2), 200, 40).filter(pl.len().over("userId") > 8)
    cfg = dataclasses.replace(BASE, cold_user_frac=0.1, cold_user_train_n=5)
    train, test, users = split_ratings(ratings, cfg, 4.0, stage_rng(3, "split"))
    cold = users.filter(pl.col("slice") == "cold")
    assert cold.height == round(0.1 * users.height)
    assert (cold["n_train"] == 5).all()
    _check_invariants(ratings, train, test)
    warm_heavy = users.filter(pl.col("slice") != "cold")
    heavy = users.filter(pl.col("slice") == "heavy")
    assert heavy.height == round(0.1 * warm_heavy.height)
    assert heavy["n_train"].min() >= users.filter(pl.col("slice") == "warm")["n_train"].max()


def test_a_different_seed_picks_other_cold_users() -> None:
    ratings = _ratings(np.random.default_rng(2), 200, 40).filter(pl.len().over("userId") > 8)
    cfg = dataclasses.replace(BASE, cold_user_frac=0.2)
    a = split_ratings(ratings, cfg, 4.0, stage_rng(1, "split"))[2].filter(pl.col("slice") == "cold")
    b = split_ratings(ratings, cfg, 4.0, stage_rng(2, "split"))[2].filter(pl.col("slice") == "cold")
    assert set(a["userId"]) != set(b["userId"])


def test_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match="split.strategy: unknown strategy 'shuffle'"):
        split_ratings(_ratings(np.random.default_rng(0), 3, 5), dataclasses.replace(BASE, strategy="shuffle"),
                      4.0, stage_rng(0, "split"))
