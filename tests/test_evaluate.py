"""The evaluation: list checks, one pass over every part, checkpoints and time limits, run identity,
the selection rules, the tune fold's independence from test, and the written outputs."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recopt.config import Config
from recopt.errors import RecoptError
from recopt.evaluate import EvalData, evaluate_parts, load_eval_data
from recopt.methods import Part, PartKind, check_lists
from recopt.report import to_markdown
from recopt.rerank import Ranked
from recopt.selection import next_alphas
from recopt.study import run_tune
from stages._entry import Invocation
from tests.conftest import build_folds, tmp_config

ALPHA, COLD, FOLDIN, BASELINE, REFERENCE = (PartKind.ALPHA, PartKind.COLD, PartKind.FOLDIN, PartKind.BASELINE,
                                            PartKind.REFERENCE)


def _ranked(items, scores=None) -> Ranked:
    items = np.array(items, dtype=np.int32)
    scores = np.full(items.shape, 0.5, np.float32) if scores is None else np.array(scores, dtype=np.float32)
    return Ranked(users=np.arange(len(items), dtype=np.int32), items=items, scores=scores,
                  positions=np.where(items >= 0, 0, -1).astype(np.int64))


# --------------------------------------------------------------------------- check_lists


def test_check_lists_accepts_valid_lists_with_trailing_padding():
    check_lists(_ranked([[3, 1, 2], [5, -1, -1], [-1, -1, -1]], [[1.0, 0.5, 0.0], [0.2, 0, 0], [0, 0, 0]]), "ok")


def test_check_lists_rejects_duplicates():
    with pytest.raises(RuntimeError, match=r"^alpha=0\.5: invalid ranked lists: duplicate items in a list$"):
        check_lists(_ranked([[1, 2, 3], [4, 2, 4]]), "alpha=0.5")


def test_check_lists_rejects_non_contiguous_ranks():
    with pytest.raises(RuntimeError, match=r"ranks are not contiguous \(an item after padding\)"):
        check_lists(_ranked([[1, -1, 2]]), "baseline=random")


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan, np.inf])
def test_check_lists_rejects_scores_outside_unit_interval(bad):
    with pytest.raises(RuntimeError, match=r"scores outside \[0, 1\] or not finite"):
        check_lists(_ranked([[1, 2]], [[0.5, bad]]), "alpha=0.35")


def test_an_empty_list_for_a_non_empty_pool_is_an_error():
    lists = _ranked([[4, 5], [-1, -1], [-1, -1]])
    check_lists(lists, "ok", pool_sizes=np.array([3, 0, 0]))  # empty pool, empty list: fine
    with pytest.raises(RuntimeError, match=r"1 user\(s\) with a non-empty pool got an empty list"):
        check_lists(lists, "alpha=0.5", pool_sizes=np.array([3, 0, 7]))


def test_to_markdown_formats_floats_ints_strings_and_nulls():
    df = pl.DataFrame({"run": ["alpha=0.5", "baseline=random"], "recall@10": [0.123456, 1.0], "users": [3, None],
                       "timed_out": [False, True]})
    assert to_markdown(df) == (
        "| run | recall@10 | users | timed_out |\n"
        "|---|---|---|---|\n"
        "| alpha=0.5 | 0.1235 | 3 | False |\n"
        "| baseline=random | 1.0000 |  | True |"
    )


# --------------------------------------------------------------------------- run identity


@pytest.mark.parametrize(("a", "b"), [(0.12, 0.125), (0.35, 0.351), (0.5, 0.5000001)])
def test_run_names_carry_the_exact_value(a, b):
    assert Part(ALPHA, a).name != Part(ALPHA, b).name
    assert repr(a) in Part(ALPHA, a).name.split(":")  # the exact value, not a rounded one
    assert Part(COLD, a, "popularity").name != Part(COLD, b, "popularity").name


# --------------------------------------------------------------------------- one pass on a tiny pipeline


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny pipeline up to candidates, both folds, in user batches of 64 (several per fold)."""
    from recopt.ingest import ingest
    from recopt.split import run_split

    cfg = tmp_config(tmp_path_factory.mktemp("tiny"), "data.preset=tiny", "candidates.batch_users=64")
    ingest(cfg)
    run_split(cfg)
    return build_folds(cfg)


def _with(cfg: Config, section: str | None = None, **values) -> Config:
    if section is None:
        return dataclasses.replace(cfg, **values)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def _own_checkpoints(cfg: Config, tmp_path: Path) -> Config:
    return _with(cfg, "paths", checkpoints=str(tmp_path / "checkpoints"))


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.top, b.top)
    assert a.per_user.keys() == b.per_user.keys()
    for name in a.per_user:
        np.testing.assert_array_equal(a.per_user[name], b.per_user[name], err_msg=name)


PARTS = (Part(ALPHA, 0.5), Part(COLD, 0.5, "popularity"), Part(BASELINE, method="popularity"),
         Part(BASELINE, method="cf_only"), Part(REFERENCE, 200.0, "ease"), Part(FOLDIN, 0.5))


def test_one_pass_gives_each_part_what_it_gives_alone(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    together = evaluate_parts(cfg, data, PARTS, deadline=None, desc="all")
    for p in PARTS:
        alone = evaluate_parts(cfg, data, (p,), deadline=None, desc=p.name)
        _assert_same(together.parts[p], alone.parts[p])


def test_parts_serve_the_users_they_are_for(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    r = evaluate_parts(cfg, data, PARTS, deadline=None, desc="all")
    everyone = data.users.sort("user")["user"].to_numpy()
    has_cf = data.factors["user_has_cf"][everyone]
    folded = data.factors["user_folded"][everyone]
    assert (~has_cf).any() and has_cf.any() and folded.any()  # every kind of user exists in the tiny data
    assert not (has_cf & folded).any()
    np.testing.assert_array_equal(r.parts[Part(ALPHA, 0.5)].users, everyone[has_cf])
    np.testing.assert_array_equal(r.parts[Part(COLD, 0.5, "popularity")].users, everyone[~has_cf])
    np.testing.assert_array_equal(r.parts[Part(FOLDIN, 0.5)].users, everyone[~has_cf & folded])
    np.testing.assert_array_equal(r.parts[Part(BASELINE, method="popularity")].users, everyone)


def test_resuming_from_checkpoints_gives_identical_results(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    first = evaluate_parts(cfg, data, PARTS, deadline=None, desc="first")
    files = {part: sorted(d.glob("batch-*.npz")) for part, d in first.checkpoints.items()}
    assert all(len(f) == len(first.batches) > 1 for f in files.values())
    for f in files.values():
        f[0].unlink()  # as if killed before the first batch was written
    files[Part(ALPHA, 0.5)][1].unlink()  # and one part of the second batch lost
    again = evaluate_parts(cfg, data, PARTS, deadline=None, desc="again")
    assert again.resumed == len(first.batches) - 1
    for p in PARTS:
        _assert_same(first.parts[p], again.parts[p])


def test_a_past_deadline_makes_a_partial_pass_on_the_same_users_for_every_part(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    import time
    r = evaluate_parts(cfg, data, PARTS[:1] + PARTS[2:3], deadline=time.perf_counter() - 1, desc="late")
    assert not r.complete and r.done == []
    assert all(len(p.users) == 0 for p in r.parts.values())


def test_the_stage_refuses_to_choose_on_a_partial_pass(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(_with(built, "evaluate", time_limit_total_s=1e-9), tmp_path)
    with pytest.raises(RecoptError, match=r"evaluate@tune: stopped at evaluate.time_limit_total_s=1e-09 after 0 of "
                                          r"\d+ user batches.*re-run to resume"):
        run_tune(cfg)


def test_alpha_values_that_round_alike_never_share_checkpoints(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    a = evaluate_parts(cfg, data, (Part(ALPHA, 0.12),), deadline=None, desc="a")
    b = evaluate_parts(cfg, data, (Part(ALPHA, 0.125),), deadline=None, desc="b")
    assert a.checkpoints[Part(ALPHA, 0.12)] != b.checkpoints[Part(ALPHA, 0.125)] and b.resumed == 0
    assert not np.array_equal(a.parts[Part(ALPHA, 0.12)].top, b.parts[Part(ALPHA, 0.125)].top)


def test_users_with_an_empty_pool_are_evaluated_not_dropped(tmp_path: Path):
    """temporal_global leaves some users with no train rating: no CF factor, no profile, no pool."""
    from recopt.ingest import ingest
    from recopt.split import run_split

    cfg = tmp_config(tmp_path, "data.preset=tiny", "split.strategy=temporal_global")
    ingest(cfg)
    run_split(cfg)
    build_folds(cfg, ("test",))
    data = load_eval_data(cfg, "test", reader="test")
    empty = data.users.filter(pl.col("pool_size") == 0)["user"].to_numpy()
    assert len(empty) > 0  # the case under test exists
    r = evaluate_parts(cfg, data, (Part(COLD, 0.0, "popularity"), Part(BASELINE, method="cf_only"),
                                   Part(BASELINE, method="popularity")), deadline=None, desc="x")
    cold = r.parts[Part(COLD, 0.0, "popularity")]
    rows = np.isin(cold.users, empty)
    assert rows.sum() == len(empty)  # evaluated, with an empty list scored 0
    assert (cold.top[rows] == -1).all() and (cold.per_user["recall@10"][rows] == 0).all()
    # a baseline serves them by its fallback, as a deployed system would: cf_only's list is popularity's
    cf, pop = r.parts[Part(BASELINE, method="cf_only")], r.parts[Part(BASELINE, method="popularity")]
    rows = np.isin(cf.users, empty)
    assert rows.sum() == len(empty) and (cf.per_user["fallback"][rows] == 1).all()
    np.testing.assert_array_equal(cf.top[rows], pop.top[np.isin(pop.users, empty)])
    assert (cf.top[rows] >= 0).all()


# --------------------------------------------------------------------------- the tune fold never reads test


def test_the_tune_fold_chooses_without_any_test_artifact(built: Config, tmp_path: Path):
    """Every choice is made with the test fold's artifacts (test.parquet included) gone."""
    root = tmp_path / "copy"
    shutil.copytree(Path(built.paths.ingest).parent, root)
    cfg = tmp_config(root, "data.preset=tiny", "candidates.batch_users=64")
    with_test = run_tune(cfg).selection
    for stage in ("split", "embed_load", "cf_load", "candidates"):
        shutil.rmtree(root / stage / "test")
    shutil.rmtree(root / "checkpoints")
    assert not list(root.rglob("test.parquet"))
    assert run_tune(cfg).selection == with_test


def test_baseline_content_only_never_lists_an_item_without_content(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    r = evaluate_parts(cfg, data, (Part(BASELINE, method="content_only"), Part(BASELINE, method="cf_only")),
                       deadline=None, desc="x")
    has_content, has_cf = data.items["has_content"].to_numpy(), data.items["has_cf"].to_numpy()
    for method, scorable in (("content_only", has_content), ("cf_only", has_cf)):
        part = r.parts[Part(BASELINE, method=method)]
        own = part.top[part.per_user["fallback"] == 0]  # the users it scored itself
        assert scorable[own[own >= 0]].all()


def test_random_baseline_draws_unseen_catalog_items_whatever_the_batch(built: Config, tmp_path: Path):
    from recopt.evaluate import build_shared
    from recopt.methods import catalog_lists
    from recopt.pools import read_pool

    cfg = _own_checkpoints(built, tmp_path)
    data: EvalData = load_eval_data(cfg, "test", reader="test")
    shared, _ = build_shared(cfg, data, (Part(BASELINE, method="random"),))
    users = data.users.sort("user")["user"].to_numpy().astype(np.int64)
    whole = catalog_lists(shared, "random", users, 50)
    np.testing.assert_array_equal(catalog_lists(shared, "random", users[7:19], 50).items, whole.items[7:19])
    seen = data.seen[users].toarray() > 0
    rows = np.broadcast_to(np.arange(len(users))[:, None], whole.items.shape)
    listed = whole.items >= 0
    assert listed.all(axis=1).all()  # 50 distinct unseen items for everyone in the tiny catalog
    assert not seen[rows[listed], whole.items[listed]].any()
    # drawn from the catalog, not from the candidate pool
    g = data.pool_users.filter(pl.col("batch") == 0)
    pool = read_pool(data.candidates, 0, g["pool_size"].to_numpy(), g["user"].to_numpy())
    in_pool = set(zip(pool["user"].tolist(), pool["item"].tolist()))
    outside = sum((int(u), int(i)) not in in_pool for u, row in zip(users, whole.items) for i in row if i >= 0
                  and u in set(g["user"].to_list()))
    assert outside > 0


def test_the_collab_evaluate_recomputes_is_the_one_candidates_computed(built: Config):
    """The store drops the collab column; recomputing it from the cf-load factors must give the same bits."""
    from recopt.artifacts import open_artifact
    from recopt.assembly import load_hybrid_inputs
    from recopt.candidates import build_batch, build_context, collab_scores

    paths = built.paths
    ingest, split = open_artifact(paths, "ingest", reader="t"), open_artifact(paths, "split", "test", reader="t")
    embed, cf = open_artifact(paths, "embed_load", "test", reader="t"), open_artifact(paths, "cf_load", "test", reader="t")
    inputs = load_hybrid_inputs(ingest, split, embed, cf)
    users = split.parquet("users")
    eval_users = np.flatnonzero(users["n_heldout"].to_numpy() > 0).astype(np.int64)
    ctx = build_context(inputs, split.parquet("train"), ingest.parquet("movies"), ingest.parquet("providers"),
                        ingest.parquet("user_providers"), eval_users, built.candidates, built.relevance_threshold)
    batch = build_batch(ctx, eval_users[:64])
    again = collab_scores(cf.npy("user_factors"), cf.npy("item_factors"), cf.npy("user_has_cf") | cf.npy("user_folded"),
                          cf.npy("item_has_cf"), batch.user, batch.item)
    assert np.isnan(batch.collab).any() and (~np.isnan(batch.collab)).any()
    assert again.tobytes() == batch.collab.tobytes()


def test_the_alpha_search_leaves_the_grid_edge_and_records_every_point(built: Config, tmp_path: Path):
    """A grid whose lowest point wins on the tiny data: the search goes outward, then refines, within its bound."""
    cfg = _own_checkpoints(_with(_with(built, "evaluate", alphas=[0.35, 0.5, 0.65]), alpha=0.5), tmp_path)
    a = run_tune(cfg).selection.alpha
    assert a.grid == (0.35, 0.5, 0.65) and a.added and len(a.added) <= cfg.evaluate.alpha_search_points
    assert set(a.tried) == set(a.grid) | set(a.added) and set(a.recall) == set(a.tried)
    assert a.recall[a.chosen] == max(a.recall.values())
    assert min(a.added) < 0.35  # it left the lower edge
    assert a.edge is None or len(a.added) == a.limit
    # replaying the rule on the recorded points adds nothing more: the search ended where the rule ends
    assert next_alphas(a.tried, a.chosen, a.grid, a.limit - len(a.added)) == []
    none = run_tune(_own_checkpoints(_with(cfg, "evaluate", alpha_search_points=0), tmp_path)).selection.alpha
    assert none.added == () and none.tried == a.grid and none.edge == "lower"


def test_a_new_part_is_computed_alone_the_others_resume(built: Config, tmp_path: Path):
    cfg = _own_checkpoints(built, tmp_path)
    data = load_eval_data(cfg, "test", reader="test")
    first = evaluate_parts(cfg, data, PARTS[:2], deadline=None, desc="first")
    stamps = {p: [f.stat().st_mtime_ns for f in sorted(d.glob("batch-*.npz"))] for p, d in first.checkpoints.items()}
    more = evaluate_parts(cfg, data, (*PARTS[:2], Part(ALPHA, 0.8)), deadline=None, desc="more")
    for p, d in first.checkpoints.items():  # the earlier parts were read back, not recomputed
        assert [f.stat().st_mtime_ns for f in sorted(d.glob("batch-*.npz"))] == stamps[p]
        _assert_same(first.parts[p], more.parts[p])
    assert len(list(more.checkpoints[Part(ALPHA, 0.8)].glob("batch-*.npz"))) == len(more.batches)


def test_the_evaluate_artifact_is_the_same_bytes_computed_or_resumed(built: Config, tmp_path: Path):
    """What a pass reads depends on its checkpoints; the artifact (manifest included) must not."""
    import hashlib

    from stages.evaluate import main

    cfg = _with(built, "paths", checkpoints=str(tmp_path / "ck"), evaluate=str(tmp_path / "ev"),
                runs=str(tmp_path / "runs"), metrics=str(tmp_path / "metrics"),
                mlflow_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db", mlflow_artifacts=str(tmp_path / "mlruns/a"))

    def digests() -> dict[str, str]:
        root = tmp_path / "ev" / "tune"
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
                if p.is_file()}

    main(cfg, Invocation(mode="params", fold="tune"))
    fresh = digests()
    main(cfg, Invocation(mode="params", fold="tune"))  # every part resumes from its checkpoints now
    assert digests() == fresh


# --------------------------------------------------------------------------- checkpoints keyed by the code


def test_checkpoints_are_keyed_by_every_module_a_batch_imports(tmp_path: Path):
    """A change to any module a batch runs (candidates' collab_scores, rng's keyed draws, ...) must
    invalidate the checkpoints; a module a batch never imports must not."""
    from recopt.closure import ROOT, closure, code_digest
    from recopt.evaluate import CODE_ENTRIES

    files = {str(f.relative_to(ROOT)) for f in closure(*CODE_ENTRIES)}
    assert {"recopt/candidates.py", "recopt/rng.py", "recopt/baselines.py", "recopt/scoring.py", "recopt/rerank.py",
            "recopt/kernels.py", "recopt/metrics.py", "recopt/keys.py", "recopt/references.py"} <= files
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "recopt", copy / "recopt")
    base = code_digest(*CODE_ENTRIES, root=copy)
    assert base == code_digest(*CODE_ENTRIES)
    for name in ("candidates.py", "rng.py", "baselines.py"):
        code_digest.cache_clear()
        (copy / "recopt" / name).write_text((ROOT / "recopt" / name).read_text() + "\n# changed\n")
        assert code_digest(*CODE_ENTRIES, root=copy) != base, name
        (copy / "recopt" / name).write_text((ROOT / "recopt" / name).read_text())
    (copy / "recopt" / "ingest.py").write_text((ROOT / "recopt" / "ingest.py").read_text() + "\n# changed\n")
    code_digest.cache_clear()
    assert code_digest(*CODE_ENTRIES, root=copy) == base  # ingest is not something a batch runs
