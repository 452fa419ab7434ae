"""Split invariants (disjoint, lossless, chronological, deterministic; cold and heavy slices) and the
two folds: the tune fold is built from the test fold's train alone and never sees a test rating."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt import ingest as ingest_module
from recopt.artifacts import ArtifactError, open_artifact, sha256_file
from recopt.cf import run_cf_load
from recopt.config import Config, ConfigError, SplitConfig
from recopt.embeddings import run_embed_load
from recopt.ingest import ingest
from recopt.rng import stage_rng
from recopt.split import relevant_items, run_split, split_ratings
from tests.conftest import tmp_config

BASE = SplitConfig(strategy="temporal_user", test_frac=0.2, validation_frac=0.2, leave_last_n=2,
                   cold_user_frac=0.0, cold_user_train_n=5, heavy_frac=0.1)
STRATEGIES = ["temporal_user", "temporal_global", "leave_last_n"]
KEY = ["userId", "movieId"]


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
    return df.sort(KEY)


def _check_invariants(ratings: pl.DataFrame, train: pl.DataFrame, test: pl.DataFrame) -> None:
    assert train.join(test, on=KEY, how="inner").height == 0  # disjoint
    assert _key(pl.concat([train, test])).equals(_key(ratings))  # lossless, same rows
    last_train = train.group_by("userId").agg(pl.col("timestamp").max().alias("t_train"))
    first_test = test.group_by("userId").agg(pl.col("timestamp").min().alias("t_test"))
    both = last_train.join(first_test, on="userId")
    assert (both["t_train"] <= both["t_test"]).all()  # chronology per user


def _simulated_cold(users: pl.DataFrame) -> set[int]:
    """Users drawn as cold (a user left with no train rating is cold without being drawn)."""
    return set(users.filter((pl.col("slice") == "cold") & (pl.col("n_train") > 0))["userId"].to_list())


# --- split_ratings --------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(STRATEGIES), cold=st.sampled_from([0.0, 0.2]))
def test_split_invariants_hold(seed: int, strategy: str, cold: float) -> None:
    ratings = _ratings(np.random.default_rng(seed), 30, 25)
    cfg = dataclasses.replace(BASE, strategy=strategy, cold_user_frac=cold)
    train, test, users = split_ratings(ratings, cfg, 4.0, stage_rng(seed, "split"))
    _check_invariants(ratings, train, test)
    assert users.columns == ["userId", "n_train", "n_heldout", "n_relevant", "slice"]
    assert users.height == ratings["userId"].n_unique()
    assert (users["n_train"] + users["n_heldout"]).sum() == ratings.height
    relevant = relevant_items(test, 4.0).group_by("userId").len()
    n_relevant = users.join(relevant, on="userId", how="left")["len"].fill_null(0)
    assert (users["n_relevant"] == n_relevant).all()
    again = split_ratings(ratings, cfg, 4.0, stage_rng(seed, "split"))
    assert again[0].equals(train) and again[1].equals(test) and again[2].equals(users)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(STRATEGIES), frac=st.sampled_from([0.1, 0.3, 0.5]))
def test_a_split_of_the_train_split_is_lossless_and_draws_other_cold_users(seed: int, strategy: str,
                                                                           frac: float) -> None:
    """What run_split does for the tune fold, on arbitrary data."""
    ratings = _ratings(np.random.default_rng(seed), 40, 30)
    cfg = dataclasses.replace(BASE, strategy=strategy, cold_user_frac=0.2, cold_user_train_n=3)
    train, _, users = split_ratings(ratings, cfg, 4.0, stage_rng(seed, "split"))
    cold = users.filter(pl.col("slice") == "cold")["userId"].to_numpy()
    tune_train, validation, tune_users = split_ratings(train, cfg, 4.0, stage_rng(seed, "split/tune"),
                                                       holdout_frac=frac, not_cold=cold)
    _check_invariants(train, tune_train, validation)
    assert set(tune_users["userId"].to_list()) == set(train["userId"].to_list())
    assert not _simulated_cold(tune_users) & set(cold.tolist())


def test_holdout_frac_replaces_test_frac() -> None:
    ratings = pl.DataFrame({"userId": [1] * 10 + [2] * 4, "movieId": list(range(1, 11)) + list(range(1, 5)),
                            "rating": [4.0] * 14, "timestamp": list(range(10)) + list(range(4))},
                           schema={"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32,
                                   "timestamp": pl.Int64})
    by_cfg = split_ratings(ratings, BASE, 4.0, stage_rng(0, "split"))[2]
    by_arg = split_ratings(ratings, BASE, 4.0, stage_rng(0, "split"), holdout_frac=0.5)[2]
    assert by_cfg["n_heldout"].to_list() == [2, 1]             # floor(10 * 0.2), at least 1
    assert by_arg["n_heldout"].to_list() == [5, 2]             # floor(n * 0.5)


def test_not_cold_users_are_never_drawn_cold() -> None:
    ratings = _ratings(np.random.default_rng(4), 100, 40).filter(pl.len().over("userId") > 8)
    cfg = dataclasses.replace(BASE, cold_user_frac=0.5)
    users = ratings["userId"].unique().sort().to_numpy()
    excluded = users[: len(users) * 3 // 4]
    _, _, out = split_ratings(ratings, cfg, 4.0, stage_rng(0, "split"), not_cold=excluded)
    cold = out.filter(pl.col("slice") == "cold")["userId"].to_numpy()
    assert not np.isin(cold, excluded).any()
    # half the users were wanted cold, but only the quarter not excluded could be drawn: all of them are
    assert sorted(cold.tolist()) == sorted(set(users.tolist()) - set(excluded.tolist()))


def test_temporal_user_takes_the_last_fifth_with_deterministic_ties() -> None:
    ratings = pl.DataFrame({"userId": [1] * 10, "movieId": list(range(10, 0, -1)),
                            "rating": [4.0] * 10, "timestamp": [5] * 10},
                           schema={"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32,
                                   "timestamp": pl.Int64})
    train, test, users = split_ratings(ratings, BASE, 4.0, stage_rng(0, "split"))
    assert sorted(test["movieId"].to_list()) == [9, 10]  # equal times: ties broken by movieId
    assert users.row(0, named=True) == {"userId": 1, "n_train": 8, "n_heldout": 2, "n_relevant": 2,
                                        "slice": "warm"}


def test_leave_last_n_keeps_one_train_rating() -> None:
    ratings = _ratings(np.random.default_rng(1), 20, 6)
    cfg = dataclasses.replace(BASE, strategy="leave_last_n", leave_last_n=3)
    train, test, users = split_ratings(ratings, cfg, 4.0, stage_rng(0, "split"))
    n = ratings.group_by("userId").len().sort("userId")["len"].to_numpy()
    assert (users["n_heldout"].to_numpy() == np.minimum(3, n - 1)).all()


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


def test_relevant_items_keeps_ratings_at_or_above_the_threshold() -> None:
    heldout = pl.DataFrame({"userId": [1, 1, 2, 2], "movieId": [1, 2, 3, 4], "rating": [3.5, 4.0, 5.0, 1.0]})
    assert relevant_items(heldout, 4.0)["movieId"].to_list() == [2, 3]
    assert relevant_items(heldout, 5.5).height == 0


# --- the split stage: two folds -------------------------------------------------------------------

def fold_frames(cfg: Config, fold: str) -> dict[str, pl.DataFrame]:
    art = open_artifact(cfg.paths, "split", fold, reader="test")
    return {name: art.parquet(name) for name in ("train", "heldout", "users")}


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file of an artifact folder (manifest included) by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tune_fold_is_built_from_the_test_folds_train_alone(tiny: Config, tmp_path: Path, strategy: str):
    cfg = tmp_config(tmp_path, "data.preset=tiny", f"paths.ingest={tiny.paths.ingest}",
                     f"split.strategy={strategy}", "split.cold_user_frac=0.3")
    summaries = run_split(cfg)
    test, tune = fold_frames(cfg, "test"), fold_frames(cfg, "tune")
    ratings = open_artifact(cfg.paths, "ingest", reader="test").parquet("ratings")
    _check_invariants(ratings, test["train"], test["heldout"])
    # tune-train ∪ validation is exactly the test fold's train (every column), and the two are disjoint
    _check_invariants(test["train"], tune["train"], tune["heldout"])
    for part in ("train", "heldout"):
        assert tune[part].join(test["heldout"], on=KEY, how="inner").height == 0
    assert tune["users"]["userId"].to_list() == test["train"]["userId"].unique().sort().to_list()
    test_cold = set(test["users"].filter(pl.col("slice") == "cold")["userId"].to_list())
    assert _simulated_cold(tune["users"]) and not _simulated_cold(tune["users"]) & test_cold
    # the tune fold records the test fold's train as its only input
    tune_inputs = open_artifact(cfg.paths, "split", "tune", reader="test").manifest["inputs"]
    assert tune_inputs == {"split@test/train.parquet": sha256_file(Path(cfg.paths.split) / "test" / "train.parquet")}
    for fold, frames in (("test", test), ("tune", tune)):
        counts = summaries[fold]["counts"]
        assert (counts["n_train"], counts["n_heldout"]) == (frames["train"].height, frames["heldout"].height)
        assert counts["users_with_relevant_heldout"] == relevant_items(frames["heldout"], 4.0)["userId"].n_unique()


def test_the_folds_hold_out_validation_frac_and_test_frac(tiny: Config, tmp_path: Path):
    cfg = tmp_config(tmp_path, "data.preset=tiny", f"paths.ingest={tiny.paths.ingest}", "split.test_frac=0.1",
                     "split.validation_frac=0.4", "split.cold_user_frac=0.0")
    run_split(cfg)
    for fold, frac in (("test", 0.1), ("tune", 0.4)):
        users = fold_frames(cfg, fold)["users"]
        n = users["n_train"] + users["n_heldout"]
        expected = np.where(n >= 2, np.maximum(np.floor(n.to_numpy() * frac), 1), 0)
        np.testing.assert_array_equal(users["n_heldout"].to_numpy(), expected)


def test_a_test_rating_changes_nothing_in_the_tune_fold(tiny: Config, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    """Perturbation: mirror every test rating (r -> 5.5 - r); no tune-fold artifact may change a byte."""
    test_keys = fold_frames(tiny, "test")["heldout"].select(KEY).with_columns(_held=pl.lit(True))
    real_load = ingest_module.load_source

    def perturbed(cfg: Config):
        tables, info = real_load(cfg)
        r = tables["ratings"].join(test_keys, on=KEY, how="left")
        mirrored = pl.when(pl.col("_held").is_not_null()).then(5.5 - pl.col("rating")).otherwise(pl.col("rating"))
        tables["ratings"] = r.with_columns(rating=mirrored.cast(r.schema["rating"])).drop("_held")
        return tables, info

    roots = {}
    for name in ("a", "b"):
        if name == "b":
            monkeypatch.setattr(ingest_module, "load_source", perturbed)
        cfg = tmp_config(tmp_path / name, "data.preset=tiny")
        ingest(cfg)
        run_split(cfg)
        run_embed_load(cfg, "tune")
        run_cf_load(cfg, "tune")
        roots[name] = tmp_path / name
    a, b = roots["a"], roots["b"]
    # the perturbation reached the test split, and only it
    assert folder_bytes(a / "ingest")["ratings.parquet"] != folder_bytes(b / "ingest")["ratings.parquet"]
    ta, tb = (pl.read_parquet(r / "split" / "test" / "test.parquet") for r in (a, b))
    assert ta.select(KEY).equals(tb.select(KEY)) and (ta["rating"] != tb["rating"]).all()
    assert folder_bytes(a / "split" / "test")["train.parquet"] == folder_bytes(b / "split" / "test")["train.parquet"]
    for stage in ("split", "embed_load", "cf_load"):
        files_a, files_b = folder_bytes(a / stage / "tune"), folder_bytes(b / stage / "tune")
        assert "manifest.json" in files_a and files_a.keys() == files_b.keys()
        changed = [f for f in files_a if files_a[f] != files_b[f]]
        assert changed == [], f"{stage}@tune changed with a test rating: {changed}"


@pytest.mark.parametrize("fold, heldout", [("test", "test"), ("tune", "validation")])
def test_a_fold_without_a_relevant_heldout_rating_names_relevance_threshold(
        tiny: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fold: str, heldout: str):
    """Ratings >= 4 only where they cannot help `fold`: the stage stops and names the key."""
    keep = fold_frames(tiny, "test")["heldout"].select(KEY).with_columns(_keep=pl.lit(True))
    real_load = ingest_module.load_source

    def capped(cfg: Config):
        tables, info = real_load(cfg)
        r = tables["ratings"].join(keep, on=KEY, how="left")
        # test fold: every rating capped; tune fold: only the test ratings may stay >= 4
        spare = pl.col("_keep").is_not_null() if fold == "tune" else pl.lit(False)
        rating = pl.when(spare).then(pl.col("rating")).otherwise(pl.min_horizontal(pl.col("rating"), pl.lit(3.5)))
        tables["ratings"] = r.with_columns(rating=rating.cast(r.schema["rating"])).drop("_keep")
        return tables, info

    monkeypatch.setattr(ingest_module, "load_source", capped)
    cfg = tmp_config(tmp_path, "data.preset=tiny")
    ingest(cfg)
    with pytest.raises(ConfigError, match=rf"^relevance_threshold: no {heldout} rating is >= 4\.0 "
                                          r"\(its ratings range [\d.]+ \.\. 3\.5\).*lower relevance_threshold"):
        run_split(cfg)
    for f in ("test", "tune"):  # stopped before writing either fold
        with pytest.raises(ArtifactError, match=rf"split@{f} .* does not exist"):
            open_artifact(cfg.paths, "split", f, reader="test")


def test_same_config_rewrites_identical_folds_another_split_makes_old_tune_fold_stale(tiny: Config, tmp_path: Path):
    cfg = tmp_config(tmp_path, "data.preset=tiny", f"paths.ingest={tiny.paths.ingest}")
    run_split(cfg)
    split = Path(cfg.paths.split)
    first = {f: folder_bytes(split / f) for f in ("test", "tune")}
    run_split(cfg)
    assert {f: folder_bytes(split / f) for f in ("test", "tune")} == first
    shutil.copytree(split / "tune", tmp_path / "old_tune")
    run_split(tmp_config(tmp_path, "data.preset=tiny", f"paths.ingest={tiny.paths.ingest}", "split.test_frac=0.3"))
    assert folder_bytes(split / "test")["train.parquet"] != first["test"]["train.parquet"]
    shutil.rmtree(split / "tune")
    shutil.copytree(tmp_path / "old_tune", split / "tune")     # a tune fold left from the old split
    with pytest.raises(ArtifactError, match=r"split@tune was built from a different split@test train\.parquet "
                                            r".*\(stale\) — re-run `dvc repro split`"):
        open_artifact(cfg.paths, "split", "tune", reader="embed_load@tune")
