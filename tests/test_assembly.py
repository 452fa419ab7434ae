"""Tests for recopt.assembly (id files, vector checks, alignment of the embed-load and cf-load artifacts)
and for how their artifacts are refused when missing, interrupted, changed, unlisted or stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recopt.artifacts import ArtifactError, Stored, open_artifact, output
from recopt.layout import LAYOUT, MANIFEST, dump_json
from recopt.assembly import (HybridInputs, align_rows, assembly_manifest, load_hybrid_inputs, read_ids,
                             vector_problems)
from recopt.cf import run_cf_load
from recopt.config import Config
from recopt.embeddings import run_embed_load
from recopt.ingest import ingest
from recopt.schemas import DataError
from recopt.split import run_split
from tests.conftest import needs_ml_small, tmp_config

STAGES = ("ingest", "split", "embed_load", "cf_load")


def make_cfg(root: Path, *overrides: str) -> Config:
    return tmp_config(root, "data.preset=tiny", *overrides)


@pytest.fixture(scope="module")
def built(tiny: Config) -> Config:
    """ingest -> split -> embed-load -> cf-load on the tiny preset, both folds."""
    for fold in ("tune", "test"):
        run_embed_load(tiny, fold)
        run_cf_load(tiny, fold)
    return tiny


@pytest.fixture
def copy(built: Config, tmp_path: Path) -> Config:
    """A private copy of the built pipeline, free to be damaged."""
    for stage in STAGES:
        shutil.copytree(getattr(built.paths, stage), tmp_path / stage)
    return make_cfg(tmp_path)


def open_inputs(cfg: Config, fold: str = "test") -> tuple[Stored, Stored, Stored, Stored]:
    """The four verified artifacts load_hybrid_inputs takes, as the candidates stage opens them."""
    reader = f"candidates@{fold}"
    return (open_artifact(cfg.paths, "ingest", reader=reader), open_artifact(cfg.paths, "split", fold, reader=reader),
            open_artifact(cfg.paths, "embed_load", fold, reader=reader),
            open_artifact(cfg.paths, "cf_load", fold, reader=reader))


def rewrite(cfg: Config, stage: str, fold: str, **arrays: np.ndarray) -> None:
    """Rewrite an npy artifact through the artifact layer (a valid manifest) with some arrays replaced:
    what a stage with a bug would leave behind."""
    old = open_artifact(cfg.paths, stage, fold, reader="test")
    kept = {name: old.npy(name) for name in LAYOUT[stage]}
    with output(cfg, stage, fold) as out:
        for name, arr in (kept | arrays).items():
            out.npy(name, arr)
        out.summary = old.summary


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

@pytest.mark.parametrize("fold", ["tune", "test"])
def test_load_hybrid_inputs_and_manifest(built: Config, fold: str):
    ingest_art, split, embed, cf = open_inputs(built, fold)
    inputs = load_hybrid_inputs(ingest_art, split, embed, cf)
    assert isinstance(inputs, HybridInputs)
    catalog = ingest_art.parquet("movies")["movieId"].to_numpy()
    users = split.parquet("users")
    np.testing.assert_array_equal(inputs.item_ids, catalog)
    np.testing.assert_array_equal(inputs.user_ids, users["userId"].to_numpy())
    n_items, n_users = len(catalog), users.height
    assert inputs.embeddings.shape[0] == inputs.mmr.shape[0] == inputs.item_factors.shape[0] == n_items
    assert inputs.user_factors.shape == (n_users, built.cf_load.factors)
    # the fold's own arrays: its cold users have no factor
    np.testing.assert_array_equal(inputs.user_factors, cf.npy("user_factors"))
    assert not inputs.user_has_cf[(users["slice"] == "cold").to_numpy()].any()
    with pytest.raises(AttributeError):
        inputs.embeddings = None  # type: ignore[misc]   # frozen
    manifest = assembly_manifest(inputs)
    c = json.loads(dump_json(manifest))["counts"]                     # JSON-ready
    assert c["items_content_and_cf"] + c["items_content_only"] + c["items_cf_only"] + c["items_neither"] == n_items
    assert c["items_content_and_cf"] + c["items_content_only"] == inputs.has_content.sum()
    assert c["items_content_and_cf"] + c["items_cf_only"] == inputs.item_has_cf.sum()
    assert c["users_with_cf"] + c["users_without_cf"] == n_users and c["users_without_cf"] > 0
    assert manifest["arrays"]["embeddings"] == {"shape": list(inputs.embeddings.shape), "dtype": "float32"}
    # artifact labels, never absolute paths (an artifact's bytes must not depend on where it lives)
    assert manifest["files"]["embed_load.embeddings"] == f"embed_load@{fold}/embeddings.npy"
    assert manifest["files"]["users"] == f"split@{fold}/users.parquet"


def test_a_shuffled_item_id_file_is_caught(copy: Config):
    ids = open_artifact(copy.paths, "embed_load", "test", reader="test").npy("item_ids")
    rewrite(copy, "embed_load", "test", item_ids=np.random.default_rng(0).permutation(ids))
    with pytest.raises(DataError, match=r"embed_load/test/item_ids.npy: is not aligned to .*movies.parquet: "
                                        r"\d+ ids, \d+ expected; first difference at row \d+ .*"
                                        r"fix: re-run the stage: `dvc repro embed-load@test`"):
        load_hybrid_inputs(*open_inputs(copy))


def test_a_cf_load_on_other_users_is_caught_with_every_problem(copy: Config):
    cf = open_artifact(copy.paths, "cf_load", "test", reader="test")
    rewrite(copy, "cf_load", "test", **{n: cf.npy(n)[:-3] for n in ("user_ids", "user_factors", "user_has_cf")})
    with pytest.raises(DataError, match=r"cf_load/test/user_ids.npy: is not aligned to .*test/users.parquet: "
                                        r"(\d+) ids, \d+ expected .*`dvc repro cf-load@test`") as err:
        load_hybrid_inputs(*open_inputs(copy))
    assert "user_factors.npy: has shape" in str(err.value)       # every problem at once
    assert len(err.value.problems) == 3


def test_malformed_arrays_are_all_reported(copy: Config):
    embed = open_artifact(copy.paths, "embed_load", "test", reader="test")
    rewrite(copy, "embed_load", "test", embeddings=embed.npy("embeddings").astype(np.float64))
    cf = open_artifact(copy.paths, "cf_load", "test", reader="test")
    rewrite(copy, "cf_load", "test", item_factors=cf.npy("item_factors")[:, :5])
    with pytest.raises(DataError, match=r"embeddings.npy: has dtype float64 — fix: run `dvc repro embed-load@test`"
                       ) as err:
        load_hybrid_inputs(*open_inputs(copy))
    assert "user factors have 20 columns, item factors 5 — fix: run `dvc repro cf-load@test`" in str(err.value)


def test_truncated_mask_is_caught(copy: Config):
    cf = open_artifact(copy.paths, "cf_load", "test", reader="test")
    rewrite(copy, "cf_load", "test", item_has_cf=cf.npy("item_has_cf")[:-1])
    with pytest.raises(DataError, match=r"item_has_cf.npy: has shape \(\d+,\), expected \d+ entries"):
        load_hybrid_inputs(*open_inputs(copy))


# --- refused artifacts ----------------------------------------------------------------------------

FIX_EMBED = r" — re-run `dvc repro embed-load@test` \(or `python -m stages.embed_load --fold test`\)"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, match", [
    ("no_folder", r"its input embed_load@test \(.*embed_load/test\) does not exist"),
    ("no_manifest", r"embed_load@test .* is incomplete: no manifest.json \(the stage was interrupted"),
    ("changed_byte", r"does not match its manifest: embeddings.npy was changed after the stage wrote it"),
    ("truncated", r"does not match its manifest: mmr.npy has \d+ bytes, the manifest says \d+"),
    ("deleted_file", r"does not match its manifest: mmr.npy is missing"),
    ("unlisted_file", r"does not match its manifest: unlisted file\(s\) stray.npy \(left by another run\?\)"),
    ("other_fold", r"manifest.json describes embed_load@tune \(format \d+\), not embed_load@test"),
    ("bad_json", r"manifest.json is not a valid manifest"),
])
def test_open_artifact_refuses_a_damaged_artifact_naming_the_stage_to_rerun(copy: Config, damage: str, match: str):
    root = Path(copy.paths.embed_load) / "test"
    if damage == "no_folder":
        shutil.rmtree(root)
    elif damage == "no_manifest":
        (root / MANIFEST).unlink()
    elif damage == "changed_byte":
        flip_a_byte(root / "embeddings.npy")                  # same size: only the hash can tell
    elif damage == "truncated":
        (root / "mmr.npy").write_bytes((root / "mmr.npy").read_bytes()[:-8])
    elif damage == "deleted_file":
        (root / "mmr.npy").unlink()
    elif damage == "unlisted_file":
        np.save(root / "stray.npy", np.zeros(3))
    elif damage == "other_fold":
        shutil.rmtree(root)
        shutil.copytree(Path(copy.paths.embed_load) / "tune", root)
    elif damage == "bad_json":
        (root / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"^candidates@test: .*" + match + r".*" + FIX_EMBED):
        open_inputs(copy)
    open_artifact(copy.paths, "embed_load", "tune", reader="test")   # the other fold is untouched


def test_a_new_split_makes_every_fold_downstream_stale(copy: Config):
    run_split(copy)                                            # same seed: the same bytes, nothing stale
    for fold in ("tune", "test"):
        load_hybrid_inputs(*open_inputs(copy, fold))
    new = make_cfg(Path(copy.paths.ingest).parent, "split.test_frac=0.3")
    run_split(new)
    with pytest.raises(ArtifactError, match=r"^embed_load@test: its input split@test was built with "
                                            r"split\.test_frac=0\.3 \(the config now has 0\.2\) — re-run `dvc repro "
                                            r"split`"):
        open_artifact(copy.paths, "split", "test", reader="embed_load@test", config=copy)
    for stage in ("embed_load", "cf_load"):
        for fold in ("tune", "test"):
            name = stage.replace("_", "-")
            with pytest.raises(ArtifactError, match=rf"^candidates@{fold}: its input {stage}@{fold} was built from "
                                                    rf"a different split@{fold} \w+\.parquet than the one now in "
                                                    rf".*split/{fold} \(stale\) — re-run `dvc repro {name}@{fold}`"):
                open_artifact(copy.paths, stage, fold, reader=f"candidates@{fold}")
    # rebuilding the stale stages clears the error
    for fold in ("tune", "test"):
        run_embed_load(new, fold)
        run_cf_load(new, fold)
        load_hybrid_inputs(*open_inputs(new, fold))


# --- real data ------------------------------------------------------------------------------------

def test_ml_latest_small_end_to_end(tmp_path: Path):
    cfg = tmp_config(tmp_path, "data=movielens", f"data.path={needs_ml_small()}")
    ingest(cfg)
    run_split(cfg)
    embed = run_embed_load(cfg, "test")
    cf = run_cf_load(cfg, "test")
    inputs = load_hybrid_inputs(*open_inputs(cfg))
    c: dict[str, Any] = assembly_manifest(inputs)["counts"]
    assert c["n_items"] == embed["counts"]["n_items"] == cf["counts"]["n_items"] == len(inputs.item_ids)
    assert c["n_users"] == cf["counts"]["n_users"] == 610
    assert c["items_content_only"] > 0 and c["items_content_and_cf"] > 0   # long tail has content only
    assert 0 < cf["catalog_coverage"] < 1 and embed["counts"]["tags_used"] < embed["counts"]["tags_total"]
    # CF knows the classics: The Empire Strikes Back is among A New Hope's nearest factor neighbours
    v = inputs.item_factors / np.maximum(np.linalg.norm(inputs.item_factors, axis=1, keepdims=True), 1e-9)
    new_hope, empire = np.searchsorted(inputs.item_ids, [260, 1196])
    assert empire in np.argsort(-(v @ v[new_hope]))[:10]
