"""Synthetic generator and the ingest stage (synthetic and MovieLens sources)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recopt.config import Preset
from recopt.ingest import ingest, write_tables
from recopt.rng import stage_rng
from recopt.schemas import DataError
from recopt.synthetic import generate
from tests.conftest import needs_ml_small, tmp_config

TINY = Preset(n_users=300, n_items=600, n_ratings=20_000, n_topics=8)


def test_generator_is_deterministic_and_movielens_shaped() -> None:
    a = generate(TINY, stage_rng(7, "ingest"))
    b = generate(TINY, stage_rng(7, "ingest"))
    for name in a:
        assert a[name].equals(b[name]), name
    r = a["ratings"]
    per_user = r.group_by("userId").len()["len"]
    assert per_user.min() >= 20
    assert per_user.max() > 3 * per_user.median()  # heavy-tailed activity
    assert r.select(pl.struct("userId", "movieId").is_unique().all()).item()
    assert set(np.unique(r["rating"].to_numpy() * 2)) <= set(range(1, 11))  # half stars in [0.5, 5]
    pop = r.group_by("movieId").len()["len"].to_numpy()
    assert np.median(pop) < pop.mean()  # most movies have few ratings
    assert abs(r.height - TINY.n_ratings) / TINY.n_ratings < 0.2
    m = a["movies"]
    assert m["title"].str.contains(r"\(\d{4}\)$").all() and (m["genres"].list.len() >= 1).all()
    assert a["tags"].height > 0
    assert not generate(TINY, stage_rng(8, "ingest"))["ratings"].equals(r)


def test_taste_drives_both_ratings_and_content() -> None:
    """Users rate movies of the same primary genre higher: the content signal is real."""
    data = generate(Preset(n_users=400, n_items=500, n_ratings=30_000, n_topics=4), stage_rng(1, "ingest"))
    r = data["ratings"].join(data["movies"].select("movieId", pl.col("genres").list.first().alias("g")),
                             on="movieId")
    fav = (r.group_by("userId", "g").agg(pl.len().alias("n"), pl.col("rating").mean().alias("mean"))
           .sort(["userId", "n"], descending=[False, True]))
    top = fav.group_by("userId", maintain_order=True).first()["mean"].mean()
    assert top > r["rating"].mean() + 0.1


def test_ingest_synthetic_writes_typed_parquet_and_manifest(tmp_path) -> None:
    cfg = tmp_config(tmp_path, "data.preset=tiny")
    manifest = ingest(cfg)
    out = tmp_path / "ingest"
    ratings = pl.read_parquet(out / "ratings.parquet")
    assert ratings.schema == {"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64}
    movies = pl.read_parquet(out / "movies.parquet")
    assert movies["movieId"].is_sorted() and movies.schema["genres"] == pl.List(pl.String)
    assert manifest["counts"]["n_ratings"] == ratings.height
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]
    assert manifest["peak_rss_mb"] > 0 and manifest["source"] == "synthetic:tiny"
    again = ingest(cfg)
    assert again["fingerprint"] == manifest["fingerprint"]  # same seed, same bytes


def test_ingest_movielens_folder(tmp_path) -> None:
    ml = needs_ml_small()
    manifest = ingest(tmp_config(tmp_path, "data=movielens", f"data.path={ml}"))
    assert manifest["counts"]["n_ratings"] == 100_836
    assert manifest["counts"]["n_movies"] == 9_742
    assert manifest["counts"]["duplicate_ratings"] == 0
    movies = pl.read_parquet(tmp_path / "ingest" / "movies.parquet")
    assert movies.filter(pl.col("movieId") == 1)["year"][0] == 1995


def test_ingest_reports_missing_folder(tmp_path) -> None:
    with pytest.raises(DataError, match="ratings"):
        ingest(tmp_config(tmp_path, "data=movielens", f"data.path={tmp_path}/nowhere"))


def test_write_tables_rejects_bad_frames_naming_table_and_column(tmp_path) -> None:
    data = generate(TINY, stage_rng(0, "ingest"))
    data["ratings"] = data["ratings"].with_columns(pl.lit(9.0).cast(pl.Float32).alias("rating"))
    data["movies"] = data["movies"].rename({"movieId": "movie_id"})
    with pytest.raises(DataError) as err:
        write_tables(data, tmp_path)
    text = str(err.value)
    assert "ratings" in text and "'rating'" in text and "movies" in text and "movieId" in text
    assert not (tmp_path / "ratings.parquet").exists()  # nothing half-written
