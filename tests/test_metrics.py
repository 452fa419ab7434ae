"""Tests for recopt.metrics: hand-computed cases, agreement with ranx, properties, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recopt import metrics as m

LOG2_3 = math.log2(3)
LOG2_5 = math.log2(5)


def _hits(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=bool)


# --------------------------------------------------------------------------- mark_hits


def test_mark_hits_marks_relevant_pairs_only():
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]))
    ranked = np.array([[3, 0, 1], [1, 0, -1], [2, -1, -1]], dtype=np.int32)
    expected = _hits([1, 0, 1], [0, 1, 0], [0, 0, 0])
    np.testing.assert_array_equal(m.mark_hits(ranked, relevant), expected)


def test_mark_hits_padding_never_hits_even_when_its_key_collides():
    # key(u=1, i=-1) = 1*4 - 1 = 3 = key(u=0, i=3), a relevant pair of user 0.
    relevant = sp.csr_matrix(np.array([[0, 0, 0, 1], [0, 0, 0, 0]]))
    ranked = np.array([[3], [-1]], dtype=np.int32)
    np.testing.assert_array_equal(m.mark_hits(ranked, relevant), _hits([1], [0]))


def test_mark_hits_ignores_explicit_zeros_and_handles_no_relevant():
    explicit_zero = sp.csr_matrix((np.array([0.0]), np.array([2]), np.array([0, 1])), shape=(1, 3))
    ranked = np.array([[2, 1]], dtype=np.int32)
    assert not m.mark_hits(ranked, explicit_zero).any()
    assert m.mark_hits(np.empty((0, 5), np.int32), sp.csr_matrix((0, 3))).shape == (0, 5)


@pytest.mark.parametrize("bad", [[[0, 5]], [[-2, 0]]])
def test_mark_hits_rejects_ids_outside_catalog(bad):
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        m.mark_hits(np.array(bad, dtype=np.int32), sp.csr_matrix((1, 5)))


def test_mark_hits_rejects_row_count_mismatch():
    with pytest.raises(ValueError, match="ranked must have shape"):
        m.mark_hits(np.zeros((2, 3), np.int32), sp.csr_matrix((3, 5)))


# --------------------------------------------------------------------------- hand-computed cases
# Each row: (hits, n_relevant, k) -> expected (recall, precision, ap, ndcg, rr, hit_rate).
# mixed:      hits 1 0 1 0 0, |rel| = 3, k = 5
#   recall 2/3, precision 2/5, AP = (P@1 + P@3) / min(5, 3) = (1 + 2/3) / 3 = 5/9,
#   DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3) + 1/2, RR = 1.
# mixed_late: hits 0 1 0 1, |rel| = 2, k = 3 (the hit at rank 4 is cut off)
#   recall 1/2, precision 1/3, AP = P@2 / min(3, 2) = (1/2) / 2 = 1/4,
#   DCG = 1/log2(3), IDCG = 1 + 1/log2(3), RR = 1/2.
# truncated:  hits 1 0 1 (L = 3), |rel| = 4, k = 5 > L
#   recall 2/4, precision 2/5 (still divides by k), AP = (1 + 2/3) / min(5, 4) = 5/12,
#   DCG = 1.5, IDCG over min(5, 4) = 4 ranks = 1 + 1/log2(3) + 1/2 + 1/log2(5).
CASES = {
    "empty (all padding)": ([0, 0, 0], 2, 3, (0, 0, 0, 0, 0, 0)),
    "no hit": ([0, 0, 0, 0], 3, 4, (0, 0, 0, 0, 0, 0)),
    "perfect": ([1, 1, 1, 0, 0], 3, 3, (1, 1, 1, 1, 1, 1)),
    "perfect, k past the relevant": ([1, 1, 1, 0, 0], 3, 5, (1, 3 / 5, 1, 1, 1, 1)),
    "mixed": ([1, 0, 1, 0, 0], 3, 5, (2 / 3, 2 / 5, 5 / 9, 1.5 / (1.5 + 1 / LOG2_3), 1, 1)),
    "mixed_late": (
        [0, 1, 0, 1], 2, 3, (1 / 2, 1 / 3, 1 / 4, (1 / LOG2_3) / (1 + 1 / LOG2_3), 1 / 2, 1)
    ),
    "truncated (k > L)": (
        [1, 0, 1], 4, 5, (1 / 2, 2 / 5, 5 / 12, 1.5 / (1.5 + 1 / LOG2_3 + 1 / LOG2_5), 1, 1)
    ),
    "no relevant items": ([0, 0], 0, 2, (0, 0, 0, 0, 0, 0)),
    # |relevant| = 12 > k = 10 (what catches a denominator of |relevant| where min(k, |relevant|) is due):
    # hits at ranks 1, 3, 10 (and 12, past k): recall 3/12, AP = (1/1 + 2/3 + 3/10) / min(10, 12),
    # DCG = 1 + 1/log2(4) + 1/log2(11), IDCG over min(10, 12) ranks = sum_{r=1..10} 1/log2(r + 1)
    "|relevant| > k": ([1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1], 12, 10, (
        3 / 12, 3 / 10, (1 + 2 / 3 + 3 / 10) / 10,
        (1 + 1 / 2 + 1 / math.log2(11)) / sum(1 / math.log2(r + 1) for r in range(1, 11)), 1, 1)),
    # every one of the top 10 relevant, 12 relevant: AP and NDCG are perfect, recall is not
    "|relevant| > k, perfect top k": ([1] * 12, 12, 10, (10 / 12, 1, 1, 1, 1, 1)),
}


@pytest.mark.parametrize("row, n_rel, k, expected", CASES.values(), ids=CASES.keys())
def test_hand_computed_cases(row, n_rel, k, expected):
    hits, n_relevant = _hits(row), np.array([n_rel])
    got = (
        m.recall_at_k(hits, n_relevant, k),
        m.precision_at_k(hits, k),
        m.average_precision_at_k(hits, n_relevant, k),
        m.ndcg_at_k(hits, n_relevant, k),
        m.reciprocal_rank(hits, k),
        m.hit_rate_at_k(hits, k),
    )
    for value in got:
        assert value.dtype == np.float64 and value.shape == (1,)
    np.testing.assert_allclose([g[0] for g in got], expected, rtol=1e-12, atol=0)


def test_reciprocal_rank_without_cutoff_uses_whole_list():
    hits = _hits([0, 0, 0, 1], [0, 0, 0, 0])
    np.testing.assert_allclose(m.reciprocal_rank(hits), [1 / 4, 0])
    np.testing.assert_allclose(m.reciprocal_rank(hits, 3), [0, 0])


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Every ranking metric of the registry at each cutoff (the per-user ones that read hits alone)."""
    inputs = m.ListInputs(ranked=np.zeros(hits.shape, np.int32), hits=hits, n_relevant=n_relevant,
                          embeddings=np.zeros((1, 1), np.float32), item_has_cf=np.ones(1, bool))
    return {metric.label(k): metric.compute(inputs, k) for metric in m.REGISTRY if metric.level == "ranking"
            for k in ks}


def test_zero_users_and_zero_width_give_empty_or_zero_arrays():
    for hits in (np.zeros((0, 5), bool), np.zeros((3, 0), bool)):
        n_relevant = np.ones(hits.shape[0], np.int64)
        for value in ranking_metrics(hits, n_relevant, [1, 10]).values():
            assert value.shape == (hits.shape[0],) and not value.any()
        assert m.reciprocal_rank(hits).shape == (hits.shape[0],)


def test_ranking_metrics_labels():
    out = ranking_metrics(_hits([1, 0]), np.array([1]), (1, 2))
    assert set(out) == {
        f"{name}@{k}" for name in ("recall", "precision", "map", "ndcg", "mrr", "hit_rate")
        for k in (1, 2)
    }


# --------------------------------------------------------------------------- agreement with ranx


@pytest.mark.filterwarnings("ignore::Warning:ranx")  # numba cast warnings inside ranx
def test_agrees_with_ranx_on_random_lists():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    n_users, n_items, width = 50, 200, 20
    ranked = np.full((n_users, width), -1, dtype=np.int32)
    relevant = np.zeros((n_users, n_items), dtype=bool)
    qrels, run = {}, {}
    for u in range(n_users):  # building the fixture only; the metrics are vectorised
        length = int(rng.integers(1, width + 1))  # varied lengths exercise k > list length
        items = rng.choice(n_items, size=length, replace=False)
        ranked[u, :length] = items
        pool = np.concatenate([items, rng.choice(n_items, size=10)])
        rel = np.unique(rng.choice(pool, size=int(rng.integers(1, 16))))
        relevant[u, rel] = True
        qrels[f"u{u}"] = {f"d{i}": 1 for i in rel}
        run[f"u{u}"] = {f"d{i}": float(width - r) for r, i in enumerate(items)}
    hits = m.mark_hits(ranked, sp.csr_matrix(relevant))
    n_relevant = relevant.sum(axis=1)
    qrels_r, run_r = ranx.Qrels(qrels), ranx.Run(run)
    ks = (1, 5, 10, 25)
    kinds = ("recall", "precision", "ndcg", "mrr", "hit_rate", "map")
    names = [f"{kind}@{k}" for k in ks for kind in kinds]
    ranx.evaluate(qrels_r, run_r, names, return_mean=False)

    def theirs(name: str) -> np.ndarray:
        return np.array([run_r.scores[name][f"u{u}"] for u in range(n_users)])

    assert hits.any() and not hits.all()
    for k in ks:
        np.testing.assert_allclose(m.recall_at_k(hits, n_relevant, k), theirs(f"recall@{k}"))
        np.testing.assert_allclose(m.precision_at_k(hits, k), theirs(f"precision@{k}"))
        np.testing.assert_allclose(m.ndcg_at_k(hits, n_relevant, k), theirs(f"ndcg@{k}"))
        np.testing.assert_allclose(m.reciprocal_rank(hits, k), theirs(f"mrr@{k}"))
        np.testing.assert_allclose(m.hit_rate_at_k(hits, k), theirs(f"hit_rate@{k}"))
        # ranx divides AP@k by |relevant| (trec_eval style); DESIGN.md divides by
        # min(k, |relevant|) so a perfect top-k scores 1. Rescale ours to compare.
        ours_as_ranx = m.average_precision_at_k(hits, n_relevant, k) * (
            np.minimum(n_relevant, k) / n_relevant
        )
        np.testing.assert_allclose(ours_as_ranx, theirs(f"map@{k}"))


# --------------------------------------------------------------------------- properties


@st.composite
def hit_lists(draw):
    n_users = draw(st.integers(0, 12))
    width = draw(st.integers(0, 12))
    hits = draw(arrays(np.bool_, (n_users, width)))
    extra = draw(arrays(np.int64, (n_users,), elements=st.integers(0, 20)))
    return hits, hits.sum(axis=1).astype(np.int64) + extra  # |relevant| >= hits in the list


@settings(max_examples=200, deadline=None)
@given(hit_lists(), st.integers(1, 15))
def test_accuracy_metrics_are_in_unit_interval(lists, k):
    hits, n_relevant = lists
    for value in ranking_metrics(hits, n_relevant, [k]).values():
        assert value.shape == (hits.shape[0],)
        assert np.all((value >= 0) & (value <= 1 + 1e-12))


@settings(max_examples=200, deadline=None)
@given(hit_lists())
def test_recall_is_monotone_in_k(lists):
    hits, n_relevant = lists
    recalls = np.stack([m.recall_at_k(hits, n_relevant, k) for k in range(1, hits.shape[1] + 3)])
    assert np.all(np.diff(recalls, axis=0) >= 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda k: m.recall_at_k(_hits([1]), np.array([1]), k),
        lambda k: m.precision_at_k(_hits([1]), k),
        lambda k: m.average_precision_at_k(_hits([1]), np.array([1]), k),
        lambda k: m.ndcg_at_k(_hits([1]), np.array([1]), k),
        lambda k: m.reciprocal_rank(_hits([1]), k),
        lambda k: m.hit_rate_at_k(_hits([1]), k),
        lambda k: m.coverage_at_k(np.array([[0]]), 3, k),
        lambda k: m.novelty_at_k(np.array([[0]]), np.array([1.0]), k),
        lambda k: m.diversity_at_k(np.array([[0]]), np.eye(1, dtype=np.float32), k),
    ],
)
@pytest.mark.parametrize("k", [0, -3, 1.5])
def test_k_below_one_or_not_integer_is_rejected(call, k):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        call(k)


def test_n_relevant_shape_and_sign_are_checked():
    with pytest.raises(ValueError, match=r"n_relevant must have shape \(2,\)"):
        m.recall_at_k(_hits([1], [0]), np.array([1]), 1)
    with pytest.raises(ValueError, match="n_relevant must be >= 0"):
        m.ndcg_at_k(_hits([1]), np.array([-1]), 1)


# --------------------------------------------------------------------------- coverage, novelty


def test_coverage_counts_distinct_items_ignoring_padding():
    ranked = np.array([[0, 1, -1], [1, 2, -1]], dtype=np.int32)
    assert m.coverage_at_k(ranked, 10, 2) == pytest.approx(0.3)
    assert m.coverage_at_k(ranked, 10, 1) == pytest.approx(0.2)
    assert m.coverage_at_k(ranked, 10, 99) == pytest.approx(0.3)
    assert m.coverage_at_k(np.empty((0, 5), np.int32), 10, 5) == 0.0
    with pytest.raises(ValueError, match="n_items must be >= 1"):
        m.coverage_at_k(ranked, 0, 2)


def test_novelty_floors_unseen_items_at_smallest_positive_share():
    share = np.array([0.5, 0.25, 0.25, 0.0])
    ranked = np.array([[0, 1], [3, -1]], dtype=np.int32)
    # items 0, 1, 3 -> -log2 of 0.5, 0.25, floor 0.25 -> 1, 2, 2 bits
    assert m.novelty_at_k(ranked, share, 2) == pytest.approx(5 / 3)
    assert m.novelty_at_k(ranked, share, 1) == pytest.approx(3 / 2)  # items 0 and 3
    assert m.novelty_at_k(np.full((2, 3), -1, np.int32), share, 3) == 0.0
    with pytest.raises(ValueError, match="no positive entry"):
        m.novelty_at_k(ranked, np.zeros(4), 2)
    with pytest.raises(ValueError, match="finite shares >= 0"):
        m.novelty_at_k(ranked, np.array([0.5, -0.5, 1.0, 0.0]), 2)


# --------------------------------------------------------------------------- diversity


def _diversity_by_pairs(ranked: np.ndarray, emb: np.ndarray, k: int) -> np.ndarray:
    """Reference: explicit pairwise loop (tests only)."""
    out = np.zeros(len(ranked))
    for u, row in enumerate(ranked[:, :k]):
        items = [i for i in row if i >= 0 and np.any(emb[i] != 0)]
        dists = [
            1 - float(np.dot(emb[a], emb[b]))
            for x, a in enumerate(items)
            for b in items[x + 1 :]
        ]
        out[u] = np.mean(dists) if dists else 0.0
    return out


def test_diversity_hand_computed():
    emb = np.array([[1, 0], [0, 1], [1, 0], [0, 0], [-1, 0]], dtype=np.float32)
    ranked = np.array(
        [[0, 1, 2, 3], [0, 4, -1, -1], [0, 3, -1, -1], [-1, -1, -1, -1]], dtype=np.int32
    )
    # user 0: items 0, 1, 2 (3 has no content): pairs 1 + 0 + 1 -> 2/3; user 1: opposite -> 2
    np.testing.assert_allclose(m.diversity_at_k(ranked, emb, 4), [2 / 3, 2, 0, 0], atol=1e-7)
    np.testing.assert_allclose(m.diversity_at_k(ranked, emb, 1), [0, 0, 0, 0])
    assert m.diversity_at_k(np.empty((0, 4), np.int32), emb, 4).shape == (0,)


def test_diversity_matches_pairwise_reference_across_chunks(monkeypatch):
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[::7] = 0
    ranked = np.stack([rng.permutation(40)[:10] for _ in range(30)]).astype(np.int32)
    ranked[::4, 6:] = -1
    monkeypatch.setattr(m, "_CHUNK_BYTES", 3 * 8 * 4)  # 3 users per chunk
    for k in (2, 5, 10, 20):
        np.testing.assert_allclose(
            m.diversity_at_k(ranked, emb, k), _diversity_by_pairs(ranked, emb, k), atol=1e-6
        )


# --------------------------------------------------------------------------- summary (the bootstrap: test_gates.py)


def test_summarise_means_and_empty_rule():
    summary = m.summarise({"recall@5": np.array([0.0, 0.5, 1.0]), "ndcg@5": np.array([])})
    assert summary == {"recall@5": 0.5, "ndcg@5": 0.0}
    assert all(type(v) is float for v in summary.values())


def test_mlflow_key():
    assert m.mlflow_key("recall@10") == "recall_at_10"
    assert m.mlflow_key("coverage") == "coverage"
