"""Tests for recopt.cf: the training matrix, the checkerboard known answer, masks per fold, determinism,
precomputed factors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recopt.artifacts import ArtifactError, Stored, open_artifact
from recopt.cf import CONFIDENCE, als_factors, confidence_matrix, fit_als, fold_in, run_cf_load, training_matrix
from recopt.config import CFConfig, Config
from recopt.schemas import DataError
from tests.conftest import tmp_config


def make_cfg(root: Path, *overrides: str, inputs: Path | None = None) -> Config:
    """A tiny-preset config writing under `root`, reading ingest/split from `inputs` if given."""
    read = [f"paths.ingest={inputs / 'ingest'}", f"paths.split={inputs / 'split'}"] if inputs else []
    return tmp_config(root, "data.preset=tiny", *read, *overrides)


def tiny_inputs(cfg: Config) -> Path:
    return Path(cfg.paths.ingest).parent


def factors(cfg: Config, fold: str = "test") -> Stored:
    """The verified cf-load artifact of `fold`."""
    return open_artifact(cfg.paths, "cf_load", fold, reader="test")


def fold_split(cfg: Config, fold: str = "test") -> Stored:
    return open_artifact(cfg.paths, "split", fold, reader="test")


def catalog_ids(cfg: Config) -> np.ndarray:
    return open_artifact(cfg.paths, "ingest", reader="test").parquet("movies")["movieId"].to_numpy()


def cf_config(**changes: object) -> CFConfig:
    base = CFConfig(method="als", factors=20, regularization=0.05, iterations=15, confidence_scale=5.0,
                    min_item_ratings=1, user_factors=None, user_ids=None, item_factors=None, item_ids=None)
    return dataclasses.replace(base, **changes)


# --- the training matrix --------------------------------------------------------------------------

def test_training_matrix_confidence_and_exclusions():
    # users 0..3 (user 1 cold), items 0..4
    user_rows = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    item_rows = np.array([0, 1, 2, 0, 2, 3, 0, 2, 3])
    ratings = np.array([5.0, 2.5, 4.0, 5.0, 5.0, 5.0, 1.0, 3.0, 4.5], dtype=np.float32)
    cold = np.array([False, True, False, False])
    matrix, user_ok, item_ok, counts = training_matrix(user_rows, item_rows, ratings, cold, 5,
                                                       cf_config(min_item_ratings=2))
    # item 3 has 2 ratings but one is the cold user's -> cold item; item 1 has 1; item 4 none
    assert item_ok.tolist() == [True, False, True, False, False]
    # user 3 rated only item 3 -> left without a rating
    assert user_ok.tolist() == [True, False, True, False]
    assert matrix.shape == (2, 2) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix.toarray(), [[1 + 5 * 5 / 5, 1 + 5 * 4 / 5], [1 + 5 * 1 / 5, 1 + 5 * 3 / 5]])
    assert counts == {"train_ratings": 9, "train_ratings_used": 4, "cold_users_excluded": 1,
                      "users_without_usable_rating": 1, "cold_items_excluded": 2, "items_without_train_rating": 1}
    assert CONFIDENCE == "confidence = 1 + confidence_scale * rating / 5"


def checkerboard(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Even users like even items, odd users odd items; user u's own item u is withheld
    (implicit's tests/recommender_base_test.py get_checker_board)."""
    u, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    liked = (u % 2 == i % 2) & (u != i)
    train = pl.DataFrame({"userId": (u[liked] + 1).astype(np.int32), "movieId": (i[liked] + 1).astype(np.int32),
                          "rating": np.full(liked.sum(), 5.0, dtype=np.float32)})
    users = pl.DataFrame({"userId": np.arange(1, n + 1, dtype=np.int32), "slice": ["warm"] * n})
    return train, users


@pytest.mark.parametrize("seed", [7, 23, 42])
def test_checkerboard_withheld_item_ranks_first(tmp_path: Path, seed: int):
    # The matrix has rank 2: two factors (as in implicit's own ALS test) cannot memorise the hole
    n = 50
    train, users = checkerboard(n)
    user_f, item_f, user_ok, folded, item_ok, _ = als_factors(train, users, np.arange(1, n + 1),
                                                              cf_config(factors=2), seed, split_dir=tmp_path,
                                                              show_progress=False)
    assert user_ok.all() and item_ok.all() and not folded.any()
    scores = user_f @ item_f.T
    seen = np.zeros((n, n), dtype=bool)
    seen[train["userId"].to_numpy() - 1, train["movieId"].to_numpy() - 1] = True
    scores[seen] = -np.inf
    np.testing.assert_array_equal(scores.argmax(axis=1), np.arange(n))


def test_fit_als_is_deterministic_for_a_random_state():
    train, _ = checkerboard(30)
    matrix = sp.csr_matrix((train["rating"].to_numpy(), (train["userId"].to_numpy() - 1,
                                                         train["movieId"].to_numpy() - 1)), shape=(30, 30))
    a = fit_als(matrix, 8, 0.05, 5, random_state=3, show_progress=False)
    b = fit_als(matrix, 8, 0.05, 5, random_state=3, show_progress=False)
    c = fit_als(matrix, 8, 0.05, 5, random_state=4, show_progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_fit_als_runs_blas_on_one_thread(monkeypatch: pytest.MonkeyPatch):
    import implicit.utils

    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    train, _ = checkerboard(10)
    matrix = sp.csr_matrix((train["rating"].to_numpy(), (train["userId"].to_numpy() - 1,
                                                         train["movieId"].to_numpy() - 1)), shape=(10, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # implicit warns when BLAS is multi-threaded
        fit_als(matrix, 2, 0.05, 2, random_state=0, show_progress=False)


def test_train_ids_outside_the_indexes_are_an_error(tmp_path: Path):
    train, users = checkerboard(6)
    with pytest.raises(DataError, match=r"train.parquet: column 'userId': 1 id\(s\) are not in .*users.parquet, "
                                        r"e.g. 6 — fix: .*`dvc repro split`") as err:
        als_factors(train, users.head(5), np.arange(1, 6), cf_config(), 0, split_dir=tmp_path)
    assert "column 'movieId'" in str(err.value) and "`dvc repro`" in str(err.value)


def _least_squares(item_f: np.ndarray, conf: np.ndarray, reg: float) -> np.ndarray:
    """The ALS user step by brute force: min_x sum_i c_i (p_i - x.y_i)^2 + reg |x|^2 over EVERY item
    (unrated: confidence 1, preference 0), as one weighted least-squares problem."""
    c = np.where(conf > 0, conf, 1.0)
    p = (conf > 0).astype(float)
    a = np.vstack([np.sqrt(c)[:, None] * item_f, np.sqrt(reg) * np.eye(item_f.shape[1])])
    b = np.concatenate([np.sqrt(c) * p, np.zeros(item_f.shape[1])])
    return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("reg", [0.05, 2.0])
def test_fold_in_is_the_regularised_least_squares_solve_against_fixed_item_factors(reg: float):
    rng = np.random.default_rng(11)
    item_f = rng.normal(size=(40, 6)).astype(np.float32)
    ratings = rng.choice([1.0, 2.5, 4.0, 5.0], size=(5, 40)) * (rng.random((5, 40)) < 0.15)
    ratings[4] = 0.0
    ratings[4, 7] = 3.0                                  # a user with a single rating
    user_rows, item_rows = np.nonzero(ratings)
    cf = cf_config(regularization=reg, confidence_scale=5.0)
    conf = confidence_matrix(user_rows, item_rows, ratings[user_rows, item_rows], np.ones(5, bool), np.ones(40, bool), cf)
    got = fold_in(item_f, conf, reg)
    for u in range(5):
        want = _least_squares(item_f.astype(np.float64), conf[u].toarray()[0], reg)
        np.testing.assert_allclose(got[u], want, rtol=1e-4, atol=1e-5)
    assert fold_in(item_f, conf[:0], reg).shape == (0, 6)


def test_a_cold_users_folded_in_factor_ranks_its_own_taste_first(tmp_path: Path):
    """On the checkerboard, every tenth user is in the cold slice (excluded from the fit, folded in): the folded-in
    factor ranks every item of the user's own half of the board above every item of the other half."""
    n = 40
    train, users = checkerboard(n)
    users = users.with_columns(slice=pl.Series(["cold" if u % 10 == 0 else "warm" for u in range(1, n + 1)]))
    user_f, item_f, user_ok, folded, _, _ = als_factors(train, users, np.arange(1, n + 1), cf_config(factors=2),
                                                        0, split_dir=tmp_path, show_progress=False)
    cold = (users["slice"] == "cold").to_numpy()
    np.testing.assert_array_equal(folded, cold)
    np.testing.assert_array_equal(user_ok, ~cold)
    liked = np.zeros((n, n), bool)
    liked[train["userId"].to_numpy() - 1, train["movieId"].to_numpy() - 1] = True
    scores = user_f @ item_f.T
    for u in np.flatnonzero(cold):
        assert scores[u][liked[u]].min() > scores[u][~liked[u] & ((np.arange(n) + u) % 2 == 1)].max()


# --- the stage on the tiny preset -----------------------------------------------------------------

@pytest.mark.parametrize("fold", ["tune", "test"])
def test_run_cf_load_masks_the_folds_cold_users_and_cold_items(tiny: Config, fold: str):
    summary = run_cf_load(tiny, fold)
    art = factors(tiny, fold)
    arrays = {n: art.npy(n) for n in ("user_factors", "item_factors", "user_has_cf", "user_folded", "item_has_cf",
                                      "user_ids", "item_ids")}
    split = fold_split(tiny, fold)
    users = split.parquet("users")
    catalog = catalog_ids(tiny)
    np.testing.assert_array_equal(arrays["user_ids"], users["userId"].to_numpy())
    np.testing.assert_array_equal(arrays["item_ids"], catalog)
    assert arrays["user_ids"].dtype == arrays["item_ids"].dtype == np.int32
    uf, vf, u_ok, i_ok = (arrays[n] for n in ("user_factors", "item_factors", "user_has_cf", "item_has_cf"))
    assert uf.shape == (users.height, 20) and vf.shape == (len(catalog), 20) and uf.dtype == np.float32
    cold = (users["slice"] == "cold").to_numpy()        # this fold's cold users, not the other fold's
    assert cold.any() and not u_ok[cold].any() and u_ok[~cold].all()
    # a cold user is folded in iff it has a train rating on an item with a factor; nobody else is
    train = split.parquet("train")
    rows = np.searchsorted(users["userId"].to_numpy(), train["userId"].to_numpy())
    on_factor = np.bincount(rows[i_ok[np.searchsorted(catalog, train["movieId"].to_numpy())]],
                            minlength=users.height) > 0
    folded = arrays["user_folded"]
    np.testing.assert_array_equal(folded, cold & on_factor)
    assert folded.any() and np.abs(uf[folded]).sum(axis=1).min() > 0
    assert not uf[~u_ok & ~folded].any() and not vf[~i_ok].any() and np.abs(vf[i_ok]).sum(axis=1).min() > 0
    # an item has a factor iff it has >= min_item_ratings ratings in this fold's train from non-cold users
    warm_ids = users.filter(pl.col("slice") != "cold")["userId"].implode()
    n_ratings = train.filter(pl.col("userId").is_in(warm_ids)).group_by("movieId").len()
    expected = np.isin(catalog, n_ratings.filter(pl.col("len") >= tiny.cf_load.min_item_ratings)["movieId"])
    np.testing.assert_array_equal(i_ok, expected)
    c = summary["counts"]
    assert summary == art.summary
    assert (c["users_with_factor"], c["items_with_factor"], c["users_folded_in"]) == (u_ok.sum(), i_ok.sum(),
                                                                                       folded.sum())
    assert c["train_ratings"] == train.height
    assert summary["catalog_coverage"] == pytest.approx(i_ok.mean(), abs=1e-6)
    assert summary["confidence"] == CONFIDENCE and summary["factors"] == 20 and "random_state" in summary
    # trained on this fold's train: the held-out split is not an input; run facts live in paths.runs
    assert not [k for k in art.manifest["inputs"] if "test.parquet" in k or "validation.parquet" in k]
    assert not {"wall_s", "peak_rss_mb"} & summary.keys()
    facts = json.loads((Path(tiny.paths.runs) / f"cf_load@{fold}.json").read_text())
    assert facts["stage"] == f"cf_load@{fold}" and "als" in facts["steps_s"]


def test_the_folds_mask_different_cold_users(tiny: Config):
    masks = {}
    for fold in ("tune", "test"):
        run_cf_load(tiny, fold)
        users = fold_split(tiny, fold).parquet("users")
        masks[fold] = set(users.filter(~pl.Series(factors(tiny, fold).npy("user_has_cf")))["userId"].to_list())
    test_cold = set(fold_split(tiny, "test").parquet("users").filter(pl.col("slice") == "cold")["userId"].to_list())
    assert masks["test"] == test_cold and masks["tune"] and not masks["tune"] & masks["test"]


def test_same_seed_same_factors_other_seed_other_factors(tiny: Config, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from recopt import cf as cf_module

    real = cf_module.stage_rng
    runs = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        # the inputs were built with seed 42 (a stage refuses inputs built with another seed), so the
        # other seed reaches cf-load's generator alone
        monkeypatch.setattr(cf_module, "stage_rng", lambda _seed, stage, seed=seed: real(seed, stage))
        cfg = make_cfg(tmp_path / name, inputs=tiny_inputs(tiny))
        run_cf_load(cfg, "test")
        runs[name] = factors(cfg).npy("item_factors")
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


# --- precomputed factors --------------------------------------------------------------------------

def write_factors(root: Path, user_ids: np.ndarray, item_ids: np.ndarray, f: int = 4,
                  item_f: int | None = None) -> list[str]:
    rng = np.random.default_rng(0)
    np.save(root / "U.npy", rng.normal(size=(len(user_ids), f)))
    np.save(root / "V.npy", rng.normal(size=(len(item_ids), item_f or f)))
    np.save(root / "uid.npy", user_ids)
    (root / "iid.txt").write_text("\n".join(map(str, item_ids)))
    return ["cf_load.method=precomputed", f"cf_load.user_factors={root / 'U.npy'}",
            f"cf_load.user_ids={root / 'uid.npy'}", f"cf_load.item_factors={root / 'V.npy'}",
            f"cf_load.item_ids={root / 'iid.txt'}"]


def test_precomputed_factors_are_aligned_masked_and_counted(tiny: Config, tmp_path: Path):
    users = fold_split(tiny).parquet("users")["userId"].to_numpy()
    catalog = catalog_ids(tiny)
    user_ids = np.concatenate([users[::-1][:50], [10**8]])                     # shuffled, one unknown
    item_ids = np.concatenate([np.random.default_rng(1).permutation(catalog)[:200], [10**8, 10**8 + 1]])
    cfg = make_cfg(tmp_path, *write_factors(tmp_path, user_ids, item_ids), inputs=tiny_inputs(tiny))
    manifest = run_cf_load(cfg, "test")
    uf, u_ok, vf, i_ok = (factors(cfg).npy(n) for n in ("user_factors", "user_has_cf", "item_factors", "item_has_cf"))
    assert u_ok.sum() == 50 and i_ok.sum() == 200 and not uf[~u_ok].any() and not vf[~i_ok].any()
    np.testing.assert_allclose(vf[np.searchsorted(catalog, item_ids[0])], np.load(tmp_path / "V.npy")[0], rtol=1e-6)
    np.testing.assert_allclose(uf[np.searchsorted(users, user_ids[3])], np.load(tmp_path / "U.npy")[3], rtol=1e-6)
    assert manifest["counts"]["user_ids_not_in_index"] == 1
    assert manifest["counts"]["item_ids_not_in_catalog"] == 2
    assert manifest["method"] == "precomputed" and manifest["factors"] == 4


def test_precomputed_factors_report_every_problem(tiny: Config, tmp_path: Path):
    overrides = write_factors(tmp_path, np.array([1, 2, 2]), np.array([1, 2, 3]), f=4, item_f=5)
    V = np.load(tmp_path / "V.npy")
    V[1, 0] = np.nan
    np.save(tmp_path / "V.npy", V)
    with pytest.raises(DataError, match=r"uid\.npy: 1 id\(s\) appear more than once") as err:
        run_cf_load(make_cfg(tmp_path, *overrides, inputs=tiny_inputs(tiny)), "test")
    message = str(err.value)
    assert "uid.npy: 1 id(s) appear more than once, e.g. 2" in message
    assert "V.npy: 1 vector(s) contain NaN or Inf, e.g. id 2" in message
    assert "V.npy: has 5 factors but" in message and "U.npy has 4" in message


@pytest.mark.parametrize("case, match", [
    ("rows", r"U.npy: has 3 rows but .*uid.npy has 2 ids"),
    ("missing", r"V.npy: does not exist — fix: fix cf_load.item_factors"),
    ("one_dim", r"U.npy: holds a float64 array of shape \(3,\)"),
    ("float_ids", r"uid.npy: holds a float64 array .* not 1-D integer ids"),
    ("unknown", r"uid.npy: none of its ids is in users.parquet"),
])
def test_precomputed_factor_errors(tiny: Config, tmp_path: Path, case: str, match: str):
    overrides = write_factors(tmp_path, np.array([1, 2, 3]), np.array([1, 2, 3]))
    if case == "rows":
        np.save(tmp_path / "uid.npy", np.array([1, 2]))
    elif case == "missing":
        (tmp_path / "V.npy").unlink()
    elif case == "one_dim":
        np.save(tmp_path / "U.npy", np.ones(3))
    elif case == "float_ids":
        np.save(tmp_path / "uid.npy", np.array([1.0, 2.0, 3.0]))
    elif case == "unknown":
        np.save(tmp_path / "uid.npy", np.array([10**8, 10**8 + 1, 10**8 + 2]))
    with pytest.raises(DataError, match=match):
        run_cf_load(make_cfg(tmp_path, *overrides, inputs=tiny_inputs(tiny)), "test")
    assert not (tmp_path / "cf_load" / "test").exists()             # a failed stage writes nothing


def test_stage_module_runs_only_the_fold_it_is_given(tiny: Config, tmp_path: Path):
    from stages import cf_load
    from stages._entry import Invocation

    shutil.copytree(tiny_inputs(tiny) / "split", tmp_path / "split")
    shutil.copytree(tiny_inputs(tiny) / "ingest", tmp_path / "ingest")
    cfg = make_cfg(tmp_path)
    cf_load.main(cfg, Invocation(mode="params", fold="tune"))
    assert factors(cfg, "tune").summary["counts"]["n_users"] == fold_split(cfg, "tune").parquet("users").height
    with pytest.raises(ArtifactError, match=r"cf_load@test .* does not exist — re-run `dvc repro cf-load@test`"):
        factors(cfg, "test")
