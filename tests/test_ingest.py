"""Synthetic generator and the ingest stage (synthetic and MovieLens sources): typed parquet in one
verified artifact, run facts outside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recopt.artifacts import ArtifactError, open_artifact, output, sha256_file
from recopt.layout import LAYOUT, MANIFEST
from recopt.config import Preset
from recopt.ingest import ingest, write_tables
from recopt.rng import stage_rng
from recopt.schemas import DataError
from recopt.synthetic import generate
from tests.conftest import needs_ml_small, tmp_config

TINY = Preset(n_users=300, n_items=600, n_ratings=20_000, n_topics=8)
RUN_FACTS = ("wall_s", "peak_rss_mb", "steps_s", "finished")


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


def test_ingest_synthetic_writes_typed_parquet_in_a_verified_artifact(tmp_path: Path) -> None:
    cfg = tmp_config(tmp_path, "data.preset=tiny")
    summary = ingest(cfg)
    art = open_artifact(cfg.paths, "ingest", reader="test")
    ratings = art.parquet("ratings")
    assert ratings.schema == {"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64}
    assert ratings.sort(["userId", "timestamp", "movieId"]).equals(ratings)
    movies = art.parquet("movies")
    assert movies["movieId"].is_sorted() and movies.schema["genres"] == pl.List(pl.String)
    assert summary == art.summary and summary["source"] == "synthetic:tiny"
    assert summary["counts"]["n_ratings"] == ratings.height and summary["counts"]["n_movies"] == movies.height
    assert "fingerprint" not in summary            # the manifest digest is the identity
    # the manifest lists exactly the files in the folder, with their real sizes and hashes
    root = Path(cfg.paths.ingest)
    on_disk = {p.name for p in root.iterdir()} - {MANIFEST}
    no_superseded = {f for n, f in LAYOUT["ingest"].items() if n != "superseded_ratings"}
    assert on_disk == no_superseded == set(art.manifest["files"])
    for name, entry in art.manifest["files"].items():
        assert entry == {"bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)}
    assert art.manifest["inputs"] == {}            # a source, not an artifact, is read
    # same seed, same bytes; another seed, another artifact
    digest = sha256_file(root / MANIFEST)
    assert ingest(cfg) == summary and sha256_file(root / MANIFEST) == digest
    ingest(tmp_config(tmp_path, "data.preset=tiny", "seed=1"))
    assert sha256_file(root / MANIFEST) != digest


def test_run_facts_go_to_paths_runs_never_into_the_artifact(tmp_path: Path) -> None:
    cfg = tmp_config(tmp_path, "data.preset=tiny")
    ingest(cfg)
    facts = json.loads((Path(cfg.paths.runs) / "ingest.json").read_text())
    assert facts["stage"] == "ingest" and facts["peak_rss_mb"] > 0 and facts["wall_s"] >= 0
    assert set(facts["steps_s"]) == {"load", "validate_write"}
    root = Path(cfg.paths.ingest)
    manifest_text = (root / MANIFEST).read_text()
    assert not [k for k in RUN_FACTS if f'"{k}"' in manifest_text]
    assert sorted(p.name for p in root.glob("*.json")) == [MANIFEST]
    first = {p.name: p.read_bytes() for p in root.iterdir()}
    (Path(cfg.paths.runs) / "ingest.json").unlink()
    ingest(cfg)                                     # a second run: new run facts, the same artifact bytes
    assert {p.name: p.read_bytes() for p in root.iterdir()} == first
    assert json.loads((Path(cfg.paths.runs) / "ingest.json").read_text())["stage"] == "ingest"


def test_ingest_movielens_folder(tmp_path: Path) -> None:
    ml = needs_ml_small()
    cfg = tmp_config(tmp_path, "data=movielens", f"data.path={ml}")
    summary = ingest(cfg)
    assert summary["counts"]["n_ratings"] == 100_836
    assert summary["counts"]["n_movies"] == 9_742
    assert summary["counts"]["duplicate_ratings"] == 0
    assert summary["source"] == f"movielens:{ml}"
    art = open_artifact(cfg.paths, "ingest", reader="test")
    assert not art.has("superseded_ratings")       # nothing superseded, nothing written
    movies = art.parquet("movies")
    assert movies.filter(pl.col("movieId") == 1)["year"][0] == 1995


def test_ingest_reports_missing_folder_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_config(tmp_path, "data=movielens", f"data.path={tmp_path}/nowhere")
    with pytest.raises(DataError, match=r"nowhere: is not a folder — fix: point to a MovieLens folder "
                                        r"containing ratings\.csv"):
        ingest(cfg)
    with pytest.raises(ArtifactError, match=r"ingest .* does not exist — re-run `dvc repro ingest`"):
        open_artifact(cfg.paths, "ingest", reader="split")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ingest")] == []   # no staging left


def test_write_tables_rejects_bad_frames_naming_table_and_column_and_keeps_the_old_artifact(tmp_path: Path):
    cfg = tmp_config(tmp_path, "data.preset=tiny")
    ingest(cfg)
    root = Path(cfg.paths.ingest)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    data = generate(TINY, stage_rng(0, "ingest"))
    data["ratings"] = data["ratings"].with_columns(pl.lit(9.0).cast(pl.Float32).alias("rating"))
    data["movies"] = data["movies"].rename({"movieId": "movie_id"})
    with pytest.raises(DataError, match=r"ratings \(.*ingest/ratings\.parquet\): column 'rating'") as err:
        with output(cfg, "ingest") as out:
            write_tables(data, out)
    text = str(err.value)
    assert "movies (" in text and "movieId" in text
    # nothing half-written: the previous artifact is untouched and no staging folder is left behind
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".ingest")] == []
    open_artifact(cfg.paths, "ingest", reader="test")
