"""Tests for recopt.evaluate and recopt.report: list checks, the popularity baseline,
gate arithmetic on hand-built results, the markdown table, and evaluate_run on a
real tiny pipeline (all users, alpha extremes, timeout, resume from checkpoints)."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recopt.config import Config, load_config
from recopt.evaluate import (EvalData, RunResult, RunSpec, check_lists, evaluate_run, load_eval_data,
                             popularity_lists)
from recopt.rerank import Ranked
from recopt.report import acceptance_gates, to_markdown
from stages._entry import compose

STAGE_PATHS = ("ingest", "split", "embed_load", "cf_load", "candidates", "evaluate", "downloads")


def tiny_config(root: Path, *extra: str) -> Config:
    raw = compose(["data.preset=tiny", *[f"paths.{k}={root}/{k}" for k in STAGE_PATHS],
                   f"paths.mlflow_uri=sqlite:///{root}/mlruns/mlflow.db",
                   f"paths.mlflow_artifacts={root}/mlruns/artifacts", "candidates.batch_users=64", *extra])
    return load_config(raw)


def _ranked(items, scores=None) -> Ranked:
    items = np.array(items, dtype=np.int32)
    scores = np.full(items.shape, 0.5, np.float32) if scores is None else np.array(scores, dtype=np.float32)
    return Ranked(users=np.arange(len(items), dtype=np.int32), items=items, scores=scores,
                  positions=np.where(items >= 0, 0, -1).astype(np.int64))


def _eval_data(users: pl.DataFrame | None = None, popularity=(1,), seen=None) -> EvalData:
    pop = np.array(popularity, dtype=np.int64)
    n_items = len(pop)
    users = users if users is not None else pl.DataFrame({"user": [0], "slice": ["warm"]})
    seen = seen if seen is not None else sp.csr_matrix((len(users), n_items), dtype=np.float32)
    return EvalData(users=users, items=pl.DataFrame({"movieId": np.arange(n_items) + 1, "popularity": pop}),
                    relevant=sp.csr_matrix(seen.shape, dtype=np.float32), seen=seen,
                    mmr_vectors=np.zeros((n_items, 2), np.float32), embeddings=np.zeros((n_items, 2), np.float32),
                    popularity_share=pop / max(pop.sum(), 1), n_batches=1, skipped={}, fingerprint="test")


# --------------------------------------------------------------------------- check_lists


def test_check_lists_accepts_valid_lists_with_trailing_padding():
    check_lists(_ranked([[3, 1, 2], [5, -1, -1], [-1, -1, -1]], [[1.0, 0.5, 0.0], [0.2, 0, 0], [0, 0, 0]]), "ok")


def test_check_lists_rejects_duplicates():
    with pytest.raises(RuntimeError, match=r"^alpha=0\.50: invalid ranked lists: duplicate items in a list$"):
        check_lists(_ranked([[1, 2, 3], [4, 2, 4]]), "alpha=0.50")


def test_check_lists_rejects_non_contiguous_ranks():
    with pytest.raises(RuntimeError, match=r"ranks are not contiguous \(an item after padding\)"):
        check_lists(_ranked([[1, -1, 2]]), "baseline=random")


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan, np.inf])
def test_check_lists_rejects_scores_outside_unit_interval(bad):
    with pytest.raises(RuntimeError, match=r"scores outside \[0, 1\] or not finite"):
        check_lists(_ranked([[1, 2]], [[0.5, bad]]), "alpha=0.35")


def test_check_lists_reports_every_problem_at_once():
    with pytest.raises(RuntimeError, match=r"scores outside .*; ranks are not contiguous .*; duplicate items"):
        check_lists(_ranked([[1, -1, 1]], [[2.0, 0.0, 0.5]]), "x")


# --------------------------------------------------------------------------- popularity_lists


def test_popularity_lists_rank_unseen_items_by_train_count():
    #                      item: 0  1  2  3  4
    popularity = np.array([5, 9, 1, 9, 0])
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0, 0],      # user 0 saw the most popular item
                                   [0, 0, 0, 0, 0],      # user 1 saw nothing
                                   [1, 1, 1, 1, 0]],     # user 2 saw all but item 4
                                  dtype=np.float32))
    data = _eval_data(pl.DataFrame({"user": [0, 1, 2], "slice": ["warm"] * 3}), popularity, seen)
    r = popularity_lists(data, np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(r.items, [[3, 0, 2], [1, 3, 0], [4, -1, -1]])
    np.testing.assert_allclose(r.scores, [[1.0, 5 / 9, 1 / 9], [1.0, 1.0, 5 / 9], [0.0, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(r.users, [0, 1, 2])
    np.testing.assert_array_equal(r.positions[2], [0, -1, -1])
    check_lists(r, "baseline=popularity")


def test_popularity_lists_subset_of_users_uses_their_own_history():
    seen = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32))
    data = _eval_data(pl.DataFrame({"user": [0, 1], "slice": ["warm"] * 2}), [3, 2, 1], seen)
    r = popularity_lists(data, np.array([1]), 2)
    np.testing.assert_array_equal(r.items, [[0, 1]])


# --------------------------------------------------------------------------- acceptance_gates


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory) -> Config:
    return tiny_config(tmp_path_factory.mktemp("cfg"))


def _with(cfg: Config, section: str, **values) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def _result(kind: str, alpha: float | None, recall: list[float], users=None) -> RunResult:
    users = np.arange(len(recall), dtype=np.int32) if users is None else np.array(users, dtype=np.int32)
    per_user = {"recall@10": np.array(recall, dtype=np.float64)}
    return RunResult(spec=RunSpec(kind, alpha), users=users, lists=np.zeros((len(users), 1), np.int32),
                     scores=np.zeros((len(users), 1), np.float32), per_user=per_user,
                     summary={"recall@10": float(np.mean(recall)) if recall else 0.0})


GATE_USERS = pl.DataFrame({"user": [0, 1, 2, 3], "slice": ["cold", "warm", "cold", "heavy"]})


def _gate_runs():
    alphas = [_result("alpha", 0.35, [1.0, 0.5, 0.0, 0.5]),     # mean 0.5
              _result("alpha", 0.5, [1.0, 1.0, 0.0, 0.4])]      # mean 0.6: the best
    baselines = [_result("popularity", None, [0.5, 0.5, 0.0, 0.2]),     # mean 0.3
                 _result("content_only", None, [0.4, 0.6, 0.1, 0.5])]   # mean 0.4: the best
    return alphas, baselines


def test_gates_pass_with_hand_computed_lift_and_cold_slice(base_cfg):
    alphas, baselines = _gate_runs()
    cfg = _with(base_cfg, "evaluate", gate_min_lift=0.05, bootstrap_samples=200)
    g = acceptance_gates(alphas, baselines, _eval_data(GATE_USERS), cfg, np.random.default_rng(0))
    assert g["evaluated"] and g["passed"]
    assert g["best_alpha"] == 0.5 and g["best_baseline"] == "content_only"
    g1 = g["gate1"]
    assert g1["users"] == 4
    assert g1["alpha_value"] == pytest.approx(0.6) and g1["baseline_value"] == pytest.approx(0.4)
    assert g1["lift"] == pytest.approx(0.5) and g1["diff"] == pytest.approx(0.2)
    assert g1["required_lift"] == 0.05 and g1["passed"] is True
    assert g1["lift_ci"][0] <= g1["lift_ci"][1] and g1["diff_ci"][0] <= g1["diff_ci"][1]
    g2 = g["gate2"]
    # cold users 0 and 2: alpha [1.0, 0.0] vs content-only [0.4, 0.1]
    assert g2["users"] == 2 and g2["evaluated"] is True
    assert g2["alpha_value"] == pytest.approx(0.5) and g2["content_only_value"] == pytest.approx(0.25)
    assert g2["diff"] == pytest.approx(0.25) and g2["passed"] is True


def test_gate1_fails_below_the_required_lift(base_cfg):
    alphas, baselines = _gate_runs()
    cfg = _with(base_cfg, "evaluate", gate_min_lift=0.6, bootstrap_samples=50)
    g = acceptance_gates(alphas, baselines, _eval_data(GATE_USERS), cfg, np.random.default_rng(0))
    assert g["gate1"]["lift"] == pytest.approx(0.5)
    assert g["gate1"]["passed"] is False and g["gate2"]["passed"] is True
    assert g["passed"] is False


def test_gate2_fails_when_content_only_wins_on_cold_users(base_cfg):
    alphas, _ = _gate_runs()
    content = _result("content_only", None, [1.0, 0.0, 0.9, 0.0])   # mean 0.475, cold mean 0.95
    cfg = _with(base_cfg, "evaluate", gate_min_lift=0.05, bootstrap_samples=50)
    g = acceptance_gates(alphas, [content], _eval_data(GATE_USERS), cfg, np.random.default_rng(0))
    assert g["gate1"]["lift"] == pytest.approx(0.6 / 0.475 - 1) and g["gate1"]["passed"] is True
    assert g["gate2"]["alpha_value"] == pytest.approx(0.5)
    assert g["gate2"]["content_only_value"] == pytest.approx(0.95)
    assert g["gate2"]["passed"] is False and g["passed"] is False


def test_gates_compare_only_the_users_both_runs_finished(base_cfg):
    # the alpha run timed out after users 0 and 1
    alpha = _result("alpha", 0.5, [1.0, 0.5], users=[0, 1])
    base = _result("popularity", None, [0.5, 0.5, 1.0, 1.0])
    cfg = _with(base_cfg, "evaluate", bootstrap_samples=50)
    g = acceptance_gates([alpha], [base], _eval_data(GATE_USERS), cfg, np.random.default_rng(0))
    assert g["gate1"]["users"] == 2
    assert g["gate1"]["alpha_value"] == pytest.approx(0.75) and g["gate1"]["baseline_value"] == pytest.approx(0.5)
    assert g["gate2"] == {"evaluated": False, "reason": "no content_only baseline or no cold users", "passed": True}


def test_gates_not_evaluated_without_a_finished_alpha(base_cfg):
    empty = _result("alpha", 0.5, [], users=[])
    g = acceptance_gates([empty], [_result("popularity", None, [0.5])], _eval_data(GATE_USERS), base_cfg,
                         np.random.default_rng(0))
    assert g == {"evaluated": False, "reason": "no finished alpha run or no baseline"}


# --------------------------------------------------------------------------- to_markdown


def test_to_markdown_formats_floats_ints_strings_and_nulls():
    df = pl.DataFrame({"run": ["alpha=0.50", "baseline=random"], "recall@10": [0.123456, 1.0], "users": [3, None],
                       "timed_out": [False, True]})
    assert to_markdown(df) == (
        "| run | recall@10 | users | timed_out |\n"
        "|---|---|---|---|\n"
        "| alpha=0.50 | 0.1235 | 3 | False |\n"
        "| baseline=random | 1.0000 |  | True |"
    )
    assert to_markdown(df.select("recall@10"), digits=1).splitlines()[2:] == ["| 0.1 |", "| 1.0 |"]


# --------------------------------------------------------------------------- evaluate_run on a tiny pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """ingest -> split -> embed-load -> cf-load -> candidates on the tiny synthetic preset, once."""
    from recopt.cf import run_cf_load
    from recopt.embeddings import run_embed_load
    from recopt.ingest import ingest
    from recopt.pools import run_candidates
    from recopt.split import run_split

    root = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config(root)
    for stage in (ingest, run_split, run_embed_load, run_cf_load, run_candidates):
        stage(cfg)
    return cfg, load_eval_data(cfg)


def _fresh(cfg: Config, tmp_path: Path, **rerank) -> Config:
    """The same pipeline with its own evaluate folder (checkpoints) and rerank overrides."""
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, evaluate=str(tmp_path / "evaluate")))
    return _with(cfg, "rerank", **rerank) if rerank else cfg


def _checkpoints(cfg: Config, spec: RunSpec) -> list[Path]:
    (folder,) = (Path(cfg.paths.evaluate) / "checkpoints").glob(f"{spec.name}-*")
    return sorted(folder.glob("batch-*.npz"))


def _assert_same_run(a: RunResult, b: RunResult) -> None:
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.lists, b.lists)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.per_user.keys() == b.per_user.keys()
    for name in a.per_user:
        np.testing.assert_array_equal(a.per_user[name], b.per_user[name], err_msg=name)
    assert a.summary == b.summary


def _relevant_by_user(cfg: Config) -> dict[int, set[int]]:
    """user index -> catalog indexes of relevant test items, straight from the split files."""
    user_ids = pl.read_parquet(Path(cfg.paths.split) / "users.parquet")["userId"].to_numpy()
    item_ids = pl.read_parquet(Path(cfg.paths.ingest) / "movies.parquet")["movieId"].to_numpy()
    test = pl.read_parquet(Path(cfg.paths.split) / "test.parquet").filter(pl.col("rating") >= cfg.relevance_threshold)
    out: dict[int, set[int]] = {}
    for u, i in zip(np.searchsorted(user_ids, test["userId"].to_numpy()),
                    np.searchsorted(item_ids, test["movieId"].to_numpy())):
        out.setdefault(int(u), set()).add(int(i))
    return out


def test_evaluate_run_scores_every_user_with_a_relevant_test_item(pipeline, tmp_path):
    cfg, data = pipeline
    cfg = _fresh(cfg, tmp_path)
    r = evaluate_run(RunSpec("alpha", 0.5), cfg, data)
    relevant = _relevant_by_user(cfg)
    assert not r.timed_out
    np.testing.assert_array_equal(r.users, sorted(relevant))
    n_test = pl.read_parquet(Path(cfg.paths.split) / "users.parquet")["n_test"].to_numpy()
    assert data.skipped["no_relevant_test_item"] == int((n_test > 0).sum()) - len(relevant)
    assert r.lists.shape == (len(relevant), cfg.rerank.k_final)
    for name, values in r.per_user.items():
        assert values.shape == (len(relevant),), name
    # recall@10 recomputed from the lists and the test file
    expect = [len(set(r.lists[j, :10].tolist()) & relevant[int(u)]) / len(relevant[int(u)])
              for j, u in enumerate(r.users)]
    np.testing.assert_allclose(r.per_user["recall@10"], expect)
    assert r.summary["users_eval"] == len(relevant)
    assert r.summary["recall@10"] == pytest.approx(np.mean(expect))
    assert 0.0 < r.summary["recall@10"] <= 1.0
    # nothing seen in train is recommended
    seen = data.seen[r.users.astype(np.int64)].toarray()
    listed = r.lists >= 0
    assert not seen[np.nonzero(listed)[0], r.lists[listed]].any()
    # one checkpoint per pool batch
    assert len(_checkpoints(cfg, RunSpec("alpha", 0.5))) == data.n_batches == 5


@pytest.mark.parametrize(("alpha", "baseline"), [(1.0, "content_only"), (0.0, "cf_only")])
def test_alpha_extremes_reduce_to_the_single_source_baseline(pipeline, tmp_path, alpha, baseline):
    cfg, data = pipeline
    cfg = _fresh(cfg, tmp_path, w_quality=0.0, w_recency=0.0, w_provider=0.0, mmr_lambda=0.0)
    hybrid = evaluate_run(RunSpec("alpha", alpha), cfg, data)
    single = evaluate_run(RunSpec(baseline), cfg, data)
    np.testing.assert_array_equal(hybrid.users, single.users)
    np.testing.assert_array_equal(hybrid.lists, single.lists)
    np.testing.assert_array_equal(hybrid.scores, single.scores)
    np.testing.assert_array_equal(hybrid.per_user["recall@10"], single.per_user["recall@10"])


def test_the_two_alpha_extremes_differ(pipeline, tmp_path):
    # guards the test above against a vacuous pass (both sources ranking alike)
    cfg, data = pipeline
    cfg = _fresh(cfg, tmp_path, w_quality=0.0, w_recency=0.0, w_provider=0.0, mmr_lambda=0.0)
    a0 = evaluate_run(RunSpec("alpha", 0.0), cfg, data)
    a1 = evaluate_run(RunSpec("alpha", 1.0), cfg, data)
    assert (a0.lists[:, :10] != a1.lists[:, :10]).any(axis=1).mean() > 0.5


def test_time_limit_stops_the_run_and_reports_it(pipeline, tmp_path):
    cfg, data = pipeline
    full = evaluate_run(RunSpec("alpha", 0.5), _fresh(cfg, tmp_path / "full"), data)
    tiny = _with(_fresh(cfg, tmp_path / "tiny"), "evaluate", time_limit_alpha_s=1e-9)
    r = evaluate_run(RunSpec("alpha", 0.5), tiny, data)
    assert r.timed_out is True
    assert len(r.users) < len(full.users)
    assert r.summary["users_eval"] == len(r.users)
    # a deadline already past also stops it, whatever the per-run limit
    r = evaluate_run(RunSpec("alpha", 0.5), _fresh(cfg, tmp_path / "deadline"), data, deadline=0.0)
    assert r.timed_out is True and len(r.users) == 0 and r.lists.shape == (0, cfg.rerank.k_final)


def test_timed_out_run_keeps_finished_batches_and_resumes_to_the_full_result(pipeline, tmp_path, monkeypatch):
    import recopt.evaluate as evaluate_module

    cfg, data = pipeline
    full = evaluate_run(RunSpec("alpha", 0.5), _fresh(cfg, tmp_path / "full"), data)
    cut = _with(_fresh(cfg, tmp_path / "cut"), "evaluate", time_limit_alpha_s=5.5)
    # a clock that advances 1 s per reading; a batch reads it 3 times (limit, start, end),
    # so the limit check before batch 3 reads 7 > 5.5: exactly 2 batches fit
    ticks = iter(range(1000))
    monkeypatch.setattr(evaluate_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    partial = evaluate_run(RunSpec("alpha", 0.5), cut, data)
    monkeypatch.undo()

    first_two = data.users.filter(pl.col("batch") < 2)["user"].to_numpy()
    assert partial.timed_out is True
    np.testing.assert_array_equal(partial.users, first_two)
    np.testing.assert_array_equal(partial.lists, full.lists[: len(first_two)])
    assert len(_checkpoints(cut, RunSpec("alpha", 0.5))) == 2

    resumed = evaluate_run(RunSpec("alpha", 0.5), _with(cut, "evaluate", time_limit_alpha_s=360.0), data)
    assert resumed.timed_out is False
    _assert_same_run(resumed, dataclasses.replace(full, seconds=resumed.seconds))


@pytest.mark.parametrize("spec", [RunSpec("alpha", 0.5), RunSpec("random"), RunSpec("popularity")])
def test_resume_after_losing_checkpoints_gives_identical_results(pipeline, tmp_path, spec):
    cfg, data = pipeline
    cfg = _fresh(cfg, tmp_path)
    first = evaluate_run(spec, cfg, data)
    files = _checkpoints(cfg, spec)
    assert len(files) == data.n_batches
    kept = {f: f.stat().st_mtime_ns for f in files[::2]}
    for f in files[1::2]:
        f.unlink()
    again = evaluate_run(spec, cfg, data)
    _assert_same_run(again, first)
    assert _checkpoints(cfg, spec) == files                           # the lost batches are rebuilt ...
    assert {f: f.stat().st_mtime_ns for f in kept} == kept            # ... the others are read, not redone


def test_gate1_says_whether_the_lift_is_significant(base_cfg):
    users = pl.DataFrame({"user": list(range(200)), "slice": ["warm"] * 200})
    cfg = _with(base_cfg, "evaluate", gate_min_lift=0.05, bootstrap_samples=300)
    steady = _result("alpha", 0.5, [0.6] * 200)  # +0.1 for every user
    noisy = _result("alpha", 0.5, [1.0, 0.0] * 100)  # mean 0.5, per-user differences of +1 / -0.84
    base = _result("popularity", None, [0.5] * 200)
    g = acceptance_gates([steady], [base], _eval_data(users), cfg, np.random.default_rng(0))
    assert g["gate1"]["passed"] is True and g["gate1"]["significant"] is True
    base_noisy = _result("popularity", None, [0.0, 0.84] * 100)  # mean 0.42: lift +19% but random signs
    g = acceptance_gates([noisy], [base_noisy], _eval_data(users), cfg, np.random.default_rng(0))
    assert g["gate1"]["lift"] == pytest.approx(0.5 / 0.42 - 1)
    assert g["gate1"]["passed"] is True and g["gate1"]["significant"] is False


def test_users_with_an_empty_pool_are_evaluated_not_dropped(tmp_path):
    """temporal_global leaves some users with no train rating: no CF factor, no profile, no pool."""
    from recopt.cf import run_cf_load
    from recopt.embeddings import run_embed_load
    from recopt.ingest import ingest
    from recopt.pools import run_candidates
    from recopt.split import run_split
    from tests.conftest import tmp_config

    cfg = tmp_config(tmp_path, "data.preset=tiny", "split.strategy=temporal_global")
    ingest(cfg)
    run_split(cfg)
    run_embed_load(cfg)
    run_cf_load(cfg)
    run_candidates(cfg)
    data = load_eval_data(cfg)
    empty = data.users.filter(pl.col("pool_size") == 0)["user"].to_numpy()
    assert len(empty) > 0  # the case under test exists
    for spec in (RunSpec("alpha", 0.5), RunSpec("random"), RunSpec("cf_only")):
        r = evaluate_run(spec, cfg, data)
        np.testing.assert_array_equal(r.users, data.users["user"].to_numpy())
        rows = np.isin(r.users, empty)
        assert (r.lists[rows] == -1).all() and (r.per_user["recall@10"][rows] == 0).all()
