"""Tests for recopt.metrics' registry: which labels each view shows and in what order, that every label a
view shows is computed (per user, per catalog or from the pool) and reaches a run's summary, and that
adding a metric is one entry (it then reaches the per-user metrics, the summaries, the views and the
tables)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recopt import metrics as m
from recopt import report
from recopt.methods import Part, PartKind
from recopt.runs import Piece, Run, summarise
from recopt.selection import Role
from tests.fakes import fake_data

KS = (20, 5, 10)  # unsorted on purpose: views show cutoffs ascending
VIEWS = (m.CONSOLE, m.TUNING, m.HEADLINE, m.INTERVAL, m.VIEW, m.SLICE)
HEAD = ["recall@10", "map@10", "ndcg@10"]


def _at(name: str) -> list[str]:
    return [f"{name}@{k}" for k in (5, 10, 20)]


@pytest.mark.parametrize(("view", "labels"), [
    (m.TUNING, [*_at("recall"), *_at("map"), *_at("ndcg"), *_at("mrr"), *_at("hit_rate"), "coverage@10",
                "novelty@10", "diversity@10", "pool_recall", "cold_item_share@10"]),
    (m.HEADLINE, [*HEAD, "coverage@10", "novelty@10"]),
    (m.CONSOLE, [*HEAD, "coverage@10", "novelty@10"]),
    (m.INTERVAL, HEAD),
    (m.SLICE, HEAD),
    (m.VIEW, [*HEAD, "coverage@10", "novelty@10", "pool_recall"]),
])
def test_each_view_shows_its_labels_in_registry_order(view, labels):
    assert m.shown_in(view, KS) == labels


def test_a_view_other_than_tuning_shows_a_ranking_metric_at_the_headline_cutoff_only():
    assert m.shown_in(m.HEADLINE, (5, 10, 20)) == m.shown_in(m.HEADLINE) == m.shown_in(m.HEADLINE, (10,))
    assert m.shown_in(m.TUNING, (10,))[:2] == ["recall@10", "map@10"]


N_ITEMS = 12


def _inputs() -> tuple[m.ListInputs, np.ndarray]:
    g = np.random.default_rng(0)
    ranked = np.array([g.permutation(N_ITEMS) for _ in range(5)], np.int32)
    ranked[1, 6:] = -1                         # a short list
    ranked[4, :] = -1                          # an empty one
    relevant = sp.csr_matrix((g.random((5, N_ITEMS)) < 0.3).astype(np.float32))
    emb = g.normal(size=(N_ITEMS, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    has_cf = np.arange(N_ITEMS) % 3 != 0       # items 0, 3, 6, 9 have no CF factor
    inp = m.ListInputs(ranked=ranked, hits=m.mark_hits(ranked, relevant),
                       n_relevant=np.diff(relevant.indptr).astype(np.int64), embeddings=emb, item_has_cf=has_cf)
    return inp, np.full(N_ITEMS, 1 / N_ITEMS)


def _run(inp: m.ListInputs, per_user: dict[str, np.ndarray]) -> Run:
    return Run(role=Role.GRID, pieces=(Piece(Part(PartKind.ALPHA, 0.5)),), users=np.arange(10, 20, 2, dtype=np.int32),
               top=inp.ranked[:, :10], per_user=per_user, seconds=1.0)


def test_every_label_of_every_view_is_computed_and_reaches_the_summary():
    inp, share = _inputs()
    per_user = m.per_user_metrics(inp, KS)
    summary = summarise(_run(inp, per_user), fake_data(["warm"] * 5, share=share.tolist()))
    for view in VIEWS:
        missing = set(m.shown_in(view, KS)) - set(summary)
        assert not missing, (view, missing)
    assert set(m.catalog_metrics(inp.ranked[:, :10], share)) == {"coverage@10", "novelty@10"}


def test_the_registry_computes_what_the_metric_functions_compute():
    inp, share = _inputs()
    per_user = m.per_user_metrics(inp, KS)
    for k in (5, 10, 20):
        np.testing.assert_array_equal(per_user[f"recall@{k}"], m.recall_at_k(inp.hits, inp.n_relevant, k))
        np.testing.assert_array_equal(per_user[f"map@{k}"], m.average_precision_at_k(inp.hits, inp.n_relevant, k))
        np.testing.assert_array_equal(per_user[f"ndcg@{k}"], m.ndcg_at_k(inp.hits, inp.n_relevant, k))
        np.testing.assert_array_equal(per_user[f"mrr@{k}"], m.reciprocal_rank(inp.hits, k))
    np.testing.assert_array_equal(per_user["diversity@10"], m.diversity_at_k(inp.ranked, inp.embeddings, 10))
    # cold-item share by hand: the share of each top-10 list without a CF factor (0 for the empty list)
    top = inp.ranked[:, :10]
    want = [np.mean(~inp.item_has_cf[row[row >= 0]]) if (row >= 0).any() else 0.0 for row in top]
    np.testing.assert_allclose(per_user["cold_item_share@10"], want)
    assert m.catalog_metrics(top, share)["coverage@10"] == len(set(top[top >= 0].tolist())) / N_ITEMS
    assert m.catalog_metrics(top[:0], share) == {"coverage@10": 0.0, "novelty@10": 0.0}


def test_adding_a_metric_is_one_registry_entry(monkeypatch):
    hits_at = m.Metric("hits", "ranking", lambda i, k: i.hits[:, :k].sum(axis=1).astype(np.float64),
                       (m.TUNING, m.HEADLINE, m.SLICE))
    distinct = m.Metric("distinct", "catalog", lambda top, share: float(len(np.unique(top[top >= 0]))),
                        (m.TUNING, m.CONSOLE))
    monkeypatch.setattr(m, "REGISTRY", (*m.REGISTRY, hits_at, distinct))
    inp, share = _inputs()
    per_user = m.per_user_metrics(inp, KS)
    for k in (5, 10, 20):
        np.testing.assert_array_equal(per_user[f"hits@{k}"], inp.hits[:, :k].sum(axis=1))
    assert m.shown_in(m.HEADLINE, KS)[-1] == "hits@10" and m.shown_in(m.SLICE, KS)[-1] == "hits@10"
    assert m.shown_in(m.TUNING, KS)[-4:] == [*_at("hits"), "distinct@10"]
    assert "hits@10" not in m.shown_in(m.INTERVAL, KS) and m.shown_in(m.CONSOLE, KS)[-1] == "distinct@10"
    run = _run(inp, per_user)
    run.summary = summarise(run, fake_data(["warm"] * 5, share=share.tolist()))
    assert run.summary["hits@10"] == per_user["hits@10"].mean()
    assert run.summary["distinct@10"] == len(np.unique(inp.ranked[:, :10][inp.ranked[:, :10] >= 0]))
    table = report.runs_table([run], 0, list(KS))
    assert {*_at("hits"), "distinct@10"} <= set(table.columns)
    assert table["hits@10"][0] == run.summary["hits@10"]
