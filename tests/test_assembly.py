"""Tests for recopt.assembly: id files, vector checks, alignment of embed-load and cf-load artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recopt.assembly import (HybridInputs, align_rows, assembly_manifest, load_hybrid_inputs, read_ids,
                             vector_problems)
from recopt.cf import run_cf_load
from recopt.config import Config
from recopt.embeddings import run_embed_load
from recopt.ingest import ingest
from recopt.io import read_json, write_json
from recopt.schemas import DataError
from recopt.split import run_split
from tests.conftest import needs_ml_small, tmp_config

def make_cfg(root: Path, *overrides: str) -> Config:
    return tmp_config(root, "data.preset=tiny", *overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> split -> embed-load -> cf-load on the tiny preset; returns the root folder."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = make_cfg(root)
    ingest(cfg)
    run_split(cfg)
    run_embed_load(cfg)
    run_cf_load(cfg)
    return root


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Config:
    """A private copy of the built pipeline, free to be damaged."""
    for stage in ("ingest", "split", "embed_load", "cf_load"):
        shutil.copytree(built / stage, tmp_path / stage)
    return make_cfg(tmp_path)


# --- id files and vectors -------------------------------------------------------------------------

def test_read_ids_from_npy_and_text(tmp_path: Path):
    np.save(tmp_path / "a.npy", np.array([[3], [1], [2]], dtype=np.int32))
    (tmp_path / "b.txt").write_text("movieId\n 3\n1\n\n2\n")
    for name in ("a.npy", "b.txt"):
        ids, problems = read_ids(tmp_path / name)
        assert problems == [] and ids.tolist() == [3, 1, 2] and ids.dtype == np.int64


def test_read_ids_problems(tmp_path: Path):
    (tmp_path / "bad.txt").write_text("1\n2.5\nabc\n")
    np.save(tmp_path / "f.npy", np.array([1.0, 2.0]))
    assert "2 line(s) are not integer ids, e.g. 2.5, abc" in str(read_ids(tmp_path / "bad.txt")[1][0])
    assert "not 1-D integer ids" in str(read_ids(tmp_path / "f.npy")[1][0])
    assert "does not exist" in str(read_ids(tmp_path / "nope.npy")[1][0])
    assert "does not exist" in str(read_ids(tmp_path)[1][0])          # a folder is not an id file


def test_vector_problems_and_align_rows():
    vectors = np.array([[1.0, 0.0], [0.0, 0.0], [np.nan, 1.0], [2.0, 2.0]])
    ids = np.array([30, 10, 10, 99])
    problems = vector_problems(vectors, ids, "v.npy", "ids.npy")
    assert [p.file for p in problems] == ["v.npy", "v.npy", "ids.npy"]
    assert vector_problems(vectors, ids, "v.npy", "ids.npy", allow_zero=True)[0].what.startswith("1 vector(s)")
    assert "has 4 rows but ids.npy has 3 ids" in str(vector_problems(vectors, ids[:3], "v.npy", "ids.npy")[0])
    out, mask, unknown = align_rows(vectors[[0, 3]], np.array([30, 99]), np.array([10, 20, 30]))
    assert mask.tolist() == [False, False, True] and unknown == 1 and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0], [0, 0], [1, 0]])


# --- loading the hybrid inputs --------------------------------------------------------------------

def test_load_hybrid_inputs_and_manifest(built: Path):
    cfg = make_cfg(built)
    inputs = load_hybrid_inputs(cfg)
    assert isinstance(inputs, HybridInputs)
    catalog = pl.read_parquet(built / "ingest" / "movies.parquet")["movieId"].to_numpy()
    users = pl.read_parquet(built / "split" / "users.parquet")
    np.testing.assert_array_equal(inputs.item_ids, catalog)
    np.testing.assert_array_equal(inputs.user_ids, users["userId"].to_numpy())
    n_items, n_users = len(catalog), users.height
    assert inputs.embeddings.shape[0] == inputs.mmr.shape[0] == inputs.item_factors.shape[0] == n_items
    assert inputs.user_factors.shape == (n_users, cfg.cf_load.factors)
    assert not inputs.user_has_cf[(users["slice"] == "cold").to_numpy()].any()
    with pytest.raises(AttributeError):
        inputs.embeddings = None  # type: ignore[misc]   # frozen
    manifest = assembly_manifest(inputs)
    write_json(built / "assembly.json", manifest)                     # JSON-ready
    c = read_json(built / "assembly.json")["counts"]
    assert c["items_content_and_cf"] + c["items_content_only"] + c["items_cf_only"] + c["items_neither"] == n_items
    assert c["items_content_and_cf"] + c["items_content_only"] == inputs.has_content.sum()
    assert c["items_content_and_cf"] + c["items_cf_only"] == inputs.item_has_cf.sum()
    assert c["users_with_cf"] + c["users_without_cf"] == n_users and c["users_without_cf"] > 0
    assert manifest["arrays"]["embeddings"] == {"shape": list(inputs.embeddings.shape), "dtype": "float32"}
    assert manifest["files"]["embed_load.embeddings"].endswith("embed_load/embeddings.npy")


def test_a_shuffled_item_id_file_is_caught(copy: Config):
    path = Path(copy.paths.embed_load) / "item_ids.npy"
    ids = np.load(path)
    np.save(path, np.random.default_rng(0).permutation(ids))
    with pytest.raises(DataError, match=r"embed_load/item_ids.npy: is not aligned to .*movies.parquet: "
                                        r"\d+ ids, \d+ expected; first difference at row \d+ .*"
                                        r"fix: re-run the stage: `dvc repro embed-load`"):
        load_hybrid_inputs(copy)


def test_a_stale_cf_load_after_a_new_split_is_caught(copy: Config):
    users = Path(copy.paths.split) / "users.parquet"
    pl.read_parquet(users).head(-3).write_parquet(users)          # the split changed, cf-load did not
    with pytest.raises(DataError, match=r"cf_load/user_ids.npy: is not aligned to .*users.parquet: "
                                        r"(\d+) ids, \d+ expected .*`dvc repro cf-load`") as err:
        load_hybrid_inputs(copy)
    assert "user_factors.npy: has shape" in str(err.value)       # every problem at once


def test_missing_and_malformed_artifacts_are_all_reported(copy: Config):
    (Path(copy.paths.embed_load) / "mmr.npy").unlink()
    emb = Path(copy.paths.embed_load) / "embeddings.npy"
    np.save(emb, np.load(emb).astype(np.float64))
    factors = Path(copy.paths.cf_load) / "item_factors.npy"
    np.save(factors, np.load(factors)[:, :5])
    with pytest.raises(DataError) as err:
        load_hybrid_inputs(copy)
    message = str(err.value)
    assert "mmr.npy: is missing — fix: run `dvc repro embed-load`" in message
    assert "embeddings.npy: has dtype float64" in message
    assert "user factors have 20 columns, item factors 5 — fix: run `dvc repro cf-load`" in message


def test_truncated_mask_is_caught(copy: Config):
    mask = Path(copy.paths.cf_load) / "item_has_cf.npy"
    np.save(mask, np.load(mask)[:-1])
    with pytest.raises(DataError, match=r"item_has_cf.npy: has shape \(\d+,\), expected \d+ entries"):
        load_hybrid_inputs(copy)


# --- real data ------------------------------------------------------------------------------------

def test_ml_latest_small_end_to_end(tmp_path: Path):
    cfg = tmp_config(tmp_path, "data=movielens", f"data.path={needs_ml_small()}")
    ingest(cfg)
    run_split(cfg)
    embed = run_embed_load(cfg)
    cf = run_cf_load(cfg)
    inputs = load_hybrid_inputs(cfg)
    c = assembly_manifest(inputs)["counts"]
    assert c["n_items"] == embed["counts"]["n_items"] == cf["counts"]["n_items"] == len(inputs.item_ids)
    assert c["n_users"] == cf["counts"]["n_users"] == 610
    assert c["items_content_only"] > 0 and c["items_content_and_cf"] > 0   # long tail has content only
    assert 0 < cf["catalog_coverage"] < 1 and embed["counts"]["tags_used"] < embed["counts"]["tags_total"]
    # CF knows the classics: The Empire Strikes Back is among A New Hope's nearest factor neighbours
    v = inputs.item_factors / np.maximum(np.linalg.norm(inputs.item_factors, axis=1, keepdims=True), 1e-9)
    new_hope, empire = np.searchsorted(inputs.item_ids, [260, 1196])
    assert empire in np.argsort(-(v @ v[new_hope]))[:10]
