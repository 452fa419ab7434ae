"""Tests for recopt.rerank and recopt.kernels: plain ranking through rank_pools (lam = 0: order by
score then pool position, the tie rule at the cut, padding, several users, non-finite scores never
listed), MMR on hand-computed cases, the lazy MMR of kernels.rank_segments against an eager greedy
oracle written here (Hypothesis, and realistic sizes), the fixed-order float32 dot product and the
pair-dot kernel (NaN and inf propagate: no fast-math), and the kernels giving the same bytes when
batches run on concurrent threads (nogil)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.kernels import dot, pair_dots
from recopt.rerank import rank_pools

# Three unit vectors: 1 is a near-duplicate of 0 (5 degrees apart), 2 is orthogonal to 0.
COS5, SIN5 = math.cos(math.radians(5)), math.sin(math.radians(5))
VECS = np.array([[1.0, 0.0], [COS5, SIN5], [0.0, 1.0]], dtype=np.float32)
NO_VECS = np.zeros((1, 1), dtype=np.float32)  # lam = 0 never reads the vectors


# --------------------------------------------------------------------------- oracles


def _segments(rows: np.ndarray) -> list[range]:
    """Flat index ranges of the runs of equal values in `rows` (written here, not recopt.keys)."""
    bounds = [0] + [p for p in range(1, len(rows)) if rows[p] != rows[p - 1]] + [len(rows)]
    return [range(a, b) for a, b in pairwise(bounds) if b > a]


def _shortlist(final: np.ndarray, seg: range, pool: int) -> list[int]:
    """The first `pool` flat positions of a stable sort by (-score, position) over finite scores."""
    finite = [p for p in seg if math.isfinite(float(final[p]))]
    return sorted(finite, key=lambda p: (-float(final[p]), p))[:pool]


def _eager_mmr(rows: np.ndarray, items: np.ndarray, final: np.ndarray, vectors: np.ndarray,
               k: int, lam: float, pool: int) -> np.ndarray:
    """Eager greedy MMR, one user (segment) at a time: (n_users, k) flat positions, -1 padded.

    At each step every remaining shortlist item is scored (1 - lam) * score - lam * penalty in float64,
    penalty = 0 at step 0, else the float32 max over the picked items of kernels.dot(picked, cand);
    the strict `>` keeps the earlier shortlist index on ties; if nothing beats -inf, the list stops.
    """
    segs = _segments(rows)
    out = np.full((len(segs), k), -1, dtype=np.int64)
    for u, seg in enumerate(segs):
        short = _shortlist(final, seg, pool)
        max_sim: list[np.float32 | None] = [None] * len(short)
        taken = [False] * len(short)
        for step in range(min(k, len(short))):
            best, best_val = -1, -math.inf
            for j, p in enumerate(short):
                if taken[j]:
                    continue
                penalty = np.float32(0.0) if step == 0 else max_sim[j]
                val = (1.0 - lam) * float(final[p]) - lam * float(penalty)
                if val > best_val:
                    best, best_val = j, val
            if best < 0:
                break
            taken[best] = True
            out[u, step] = short[best]
            v = vectors[items[short[best]]]
            for j, p in enumerate(short):
                if not taken[j]:
                    s = dot(v, vectors[items[p]])
                    if max_sim[j] is None or s > max_sim[j]:
                        max_sim[j] = s
    return out


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --------------------------------------------------------------------------- plain ranking (lam = 0)


def test_plain_ranking_orders_by_score_then_pool_position():
    rows = np.array([0, 0, 0, 0, 1, 1, 1], dtype=np.int32)
    items = np.array([10, 11, 12, 13, 20, 21, 22], dtype=np.int32)
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.3, 0.3, 0.7], dtype=np.float32)
    r = rank_pools(rows, items, scores, NO_VECS, 3, 0.0, 10)
    np.testing.assert_array_equal(r.users, [0, 1])
    np.testing.assert_array_equal(r.items, [[11, 13, 12], [22, 20, 21]])
    np.testing.assert_allclose(r.scores, [[0.9, 0.9, 0.5], [0.7, 0.3, 0.3]])
    np.testing.assert_array_equal(r.positions, [[1, 3, 2], [6, 4, 5]])
    assert r.users.dtype == np.int32 and r.items.dtype == np.int32
    assert r.scores.dtype == np.float32 and r.positions.dtype == np.int64


@pytest.mark.parametrize("pool", [3, 6])
def test_plain_ranking_tie_at_the_cut_keeps_the_earliest_positions(pool):
    # four items tie for places 1..4; only the two earliest of them may follow the first one listed,
    # whether the cut is made by the shortlist (pool 3) or by k (pool 6)
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], dtype=np.float32)
    items = np.arange(6, dtype=np.int32) + 100
    r = rank_pools(np.zeros(6, np.int32), items, scores, NO_VECS, 3, 0.0, pool)
    np.testing.assert_array_equal(r.items, [[101, 102, 104]])
    np.testing.assert_array_equal(r.positions, [[1, 2, 4]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.integers(1, 60), st.integers(1, 80))
def test_plain_ranking_matches_a_stable_sort_even_with_many_ties(levels, k, pool):
    scores = np.array(levels, dtype=np.float32)
    n = len(scores)
    r = rank_pools(np.zeros(n, np.int32), np.arange(n, dtype=np.int32), scores, NO_VECS, k, 0.0, pool)
    expect = np.argsort(-scores, kind="stable")[:min(k, pool)]
    np.testing.assert_array_equal(r.positions[0, :len(expect)], expect)
    np.testing.assert_array_equal(r.items[0, :len(expect)], expect)
    assert (r.positions[0, len(expect):] == -1).all() and (r.items[0, len(expect):] == -1).all()


def test_plain_ranking_pads_short_lists_with_minus_one_at_the_end():
    rows = np.array([0, 0, 1], dtype=np.int32)
    items = np.array([4, 5, 6], dtype=np.int32)
    scores = np.array([0.1, 0.8, 0.4], dtype=np.float32)
    r = rank_pools(rows, items, scores, NO_VECS, 4, 0.0, 10)
    np.testing.assert_array_equal(r.items, [[5, 4, -1, -1], [6, -1, -1, -1]])
    np.testing.assert_array_equal(r.scores, np.array([[0.8, 0.1, 0, 0], [0.4, 0, 0, 0]], np.float32))
    np.testing.assert_array_equal(r.positions, [[1, 0, -1, -1], [2, -1, -1, -1]])


def test_plain_ranking_returns_each_users_id_and_flat_positions():
    # user ids are not 0..n-1 and segments have different lengths
    rows = np.array([3, 3, 5, 7, 7, 7], dtype=np.int32)
    items = np.array([30, 31, 50, 70, 71, 72], dtype=np.int32)
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.4], dtype=np.float32)
    r = rank_pools(rows, items, scores, NO_VECS, 3, 0.0, 3)
    np.testing.assert_array_equal(r.users, [3, 5, 7])
    np.testing.assert_array_equal(r.positions, [[1, 0, -1], [2, -1, -1], [3, 4, 5]])
    np.testing.assert_array_equal(r.items, [[31, 30, -1], [50, -1, -1], [70, 71, 72]])
    np.testing.assert_array_equal(r.scores, scores[np.maximum(r.positions, 0)] * (r.positions >= 0))


def test_plain_ranking_of_an_empty_batch_is_empty():
    r = rank_pools(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), NO_VECS, 5, 0.0, 10)
    assert r.users.shape == (0,) and r.items.shape == (0, 5) and r.positions.shape == (0, 5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, math.nan, math.inf, -math.inf]), min_size=1,
                         max_size=30), min_size=1, max_size=6),
       st.integers(1, 12), st.integers(1, 40))
def test_plain_ranking_of_several_users_matches_a_per_user_stable_sort(per_user, k, pool):
    rows = np.repeat(np.arange(len(per_user), dtype=np.int32) * 2 + 1, [len(s) for s in per_user])
    scores = np.concatenate([np.array(s, np.float32) for s in per_user])
    items = np.arange(len(scores), dtype=np.int32)[::-1].copy()
    r = rank_pools(rows, items, scores, NO_VECS, k, 0.0, pool)
    np.testing.assert_array_equal(r.users, np.arange(len(per_user)) * 2 + 1)
    for u, seg in enumerate(_segments(rows)):
        expect = _shortlist(scores, seg, pool)[:k]
        np.testing.assert_array_equal(r.positions[u], expect + [-1] * (k - len(expect)))
        np.testing.assert_array_equal(r.items[u], [items[p] for p in expect] + [-1] * (k - len(expect)))


def test_non_finite_scores_are_never_listed():
    rows = np.array([0, 0, 0, 0, 0, 1, 1], dtype=np.int32)
    scores = np.array([np.nan, 0.2, np.inf, -np.inf, 0.1, -np.inf, np.nan], dtype=np.float32)
    items = np.arange(7, dtype=np.int32)
    for lam in (0.0, 0.5):
        r = rank_pools(rows, items, scores, np.eye(7, dtype=np.float32), 4, lam, 10)
        np.testing.assert_array_equal(r.positions, [[1, 4, -1, -1], [-1, -1, -1, -1]])
        np.testing.assert_array_equal(r.items, [[1, 4, -1, -1], [-1, -1, -1, -1]])
        assert np.isfinite(r.scores).all()


# --------------------------------------------------------------------------- MMR, hand-computed


def _one_user_pool():
    # pool order is not score order: items 2, 0, 1 with finals 0.6, 0.9, 0.85
    rows = np.zeros(3, dtype=np.int32)
    items = np.array([2, 0, 1], dtype=np.int32)
    final = np.array([0.6, 0.9, 0.85], dtype=np.float32)
    return rows, items, final


def test_mmr_hand_computed_near_duplicate_case():
    # step 0: item 0 (0.45) | step 1: item 1 -> 0.425 - 0.5 cos5 = -0.073, item 2 -> 0.3 - 0 | step 2: item 1
    rows = np.zeros(3, dtype=np.int32)
    final = np.array([0.9, 0.85, 0.6], dtype=np.float32)
    r = rank_pools(rows, np.arange(3, dtype=np.int32), final, VECS, 3, 0.5, 3)
    np.testing.assert_array_equal(r.items, [[0, 2, 1]])
    np.testing.assert_array_equal(r.scores, [final[[0, 2, 1]]])


def test_mmr_lambda_zero_keeps_the_score_order():
    rng = np.random.default_rng(1)
    vecs = _unit_rows(rng, 30, 4)
    rows = np.repeat(np.arange(5, dtype=np.int32), 30)
    items = np.tile(rng.permutation(30).astype(np.int32), 5)
    final = rng.random(150).astype(np.float32)
    r = rank_pools(rows, items, final, vecs, 10, 0.0, 30)
    for u in range(5):
        np.testing.assert_array_equal(r.positions[u], 30 * u + np.argsort(-final[30 * u:30 * (u + 1)])[:10])


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mmr_ties_go_to_the_earlier_item(lam):
    # equal scores, mutually orthogonal vectors: every step is a tie, so pool order is kept
    r = rank_pools(np.zeros(4, np.int32), np.array([3, 1, 0, 2], np.int32), np.full(4, 0.5, np.float32),
                   np.eye(4, dtype=np.float32), 4, lam, 4)
    np.testing.assert_array_equal(r.positions, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(r.items, [[3, 1, 0, 2]])


def test_mmr_zero_vectors_are_similar_to_nothing():
    # item 1 duplicates item 0, item 2 has no content (zero row): it is never penalised
    # step 1: item 1 -> 0.4 - 0.5 = -0.1, item 2 -> 0.25 - 0
    vecs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    final = np.array([0.9, 0.8, 0.5], dtype=np.float32)
    r = rank_pools(np.zeros(3, np.int32), np.arange(3, dtype=np.int32), final, vecs, 3, 0.5, 3)
    np.testing.assert_array_equal(r.items, [[0, 2, 1]])


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_mmr_stops_when_only_non_finite_scores_remain(lam):
    # two finite scores, then items whose scores are -inf or NaN: exactly two picks, the rest -1
    final = np.array([0.9, 0.4, -np.inf, np.nan], dtype=np.float32)
    items = np.array([0, 2, 1, 3], dtype=np.int32)
    r = rank_pools(np.zeros(4, np.int32), items, final, np.eye(4, dtype=np.float32), 4, lam, 4)
    np.testing.assert_array_equal(r.positions, [[0, 1, -1, -1]])
    np.testing.assert_array_equal(r.items, [[0, 2, -1, -1]])
    np.testing.assert_array_equal(r.scores, np.array([[0.9, 0.4, 0.0, 0.0]], np.float32))


def test_mmr_never_picks_a_nan_score_and_an_all_inf_user_stays_empty():
    rows = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)
    final = np.array([0.5, np.nan, 0.3, -np.inf, -np.inf, -np.inf], dtype=np.float32)
    items = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    r = rank_pools(rows, items, final, np.eye(3, dtype=np.float32), 3, 0.25, 3)
    np.testing.assert_array_equal(r.positions, [[0, 2, -1], [-1, -1, -1]])


def test_mmr_penalty_uses_the_most_similar_picked_item():
    # item 3 is close to item 0 (picked first) and less so to item 1: the max, not the last pick, counts
    # step 1: item 1 -> 0.4 - 0, item 3 -> 0.375 - 0.4 | step 2: item 2 -> 0.05, item 3 -> 0.375 - 0.5 * 0.8
    vecs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.8, 0.6, 0]], dtype=np.float32)
    final = np.array([0.9, 0.8, 0.1, 0.75], dtype=np.float32)
    r = rank_pools(np.zeros(4, np.int32), np.arange(4, dtype=np.int32), final, vecs, 4, 0.5, 4)
    np.testing.assert_array_equal(r.items, [[0, 1, 2, 3]])


def test_mmr_a_negative_similarity_lowers_the_penalty_below_zero():
    # item 2 points away from item 0 (cosine -1), item 1 is orthogonal to it. Eager greedy, lam = 0.5:
    # step 1: item 1 -> 0.4 - 0.5 * 0 = 0.4, item 2 -> 0.395 - 0.5 * (-1) = 0.895, so item 2 comes second.
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    final = np.array([0.9, 0.8, 0.79], dtype=np.float32)
    r = rank_pools(np.zeros(3, np.int32), np.arange(3, dtype=np.int32), final, vecs, 3, 0.5, 3)
    np.testing.assert_array_equal(r.items, [[0, 2, 1]])


@pytest.mark.parametrize(("lam", "expected"), [(0.1, [0, 1, 2]), (0.25, [0, 2, 1]), (0.5, [0, 2, 1])])
def test_mmr_pushes_the_near_duplicate_down_above_the_critical_lambda(lam, expected):
    # item 1 loses to item 2 at step 1 when (1-lam)(0.85-0.6) < lam*cos5, i.e. lam > 0.2006
    rows, items, final = _one_user_pool()
    r = rank_pools(rows, items, final, VECS, 3, lam, 3)
    np.testing.assert_array_equal(r.items, [expected])
    # the listed scores are the final scores of the listed items, in MMR order
    by_item = dict(zip(items.tolist(), final.tolist()))
    np.testing.assert_allclose(r.scores[0], [by_item[i] for i in expected])


def test_mmr_shortlist_limits_what_mmr_can_pick():
    # items 0..3 point the same way, item 4 is orthogonal but ranks last by score
    vecs = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    rows = np.zeros(5, dtype=np.int32)
    items = np.arange(5, dtype=np.int32)
    final = np.array([0.9, 0.89, 0.88, 0.87, 0.1], dtype=np.float32)
    short = rank_pools(rows, items, final, vecs, 3, 0.9, 3)
    wide = rank_pools(rows, items, final, vecs, 3, 0.9, 5)
    np.testing.assert_array_equal(short.items, [[0, 1, 2]])
    np.testing.assert_array_equal(wide.items, [[0, 4, 1]])


def test_mmr_pads_short_pools_at_the_end():
    rows = np.array([0, 0, 1, 1, 1, 1], dtype=np.int32)
    items = np.array([0, 2, 0, 1, 2, 3], dtype=np.int32)
    final = np.array([0.2, 0.7, 0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    r = rank_pools(rows, items, final, np.eye(4, dtype=np.float32), 4, 0.25, 10)
    np.testing.assert_array_equal(r.items, [[2, 0, -1, -1], [0, 1, 2, 3]])
    np.testing.assert_array_equal(r.scores[0], np.array([0.7, 0.2, 0.0, 0.0], np.float32))
    np.testing.assert_array_equal(r.positions[0], [1, 0, -1, -1])


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.9])
def test_mmr_never_lists_an_item_twice(lam):
    rng = np.random.default_rng(7)
    n_items, n_users = 60, 40
    vecs = rng.normal(size=(n_items, 6)).astype(np.float32)
    vecs[::5] = vecs[1::5]  # exact duplicates
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    sizes = rng.integers(1, 40, n_users)
    rows = np.repeat(np.arange(n_users, dtype=np.int32), sizes)
    items = np.concatenate([rng.choice(n_items, s, replace=False) for s in sizes]).astype(np.int32)
    final = rng.random(len(rows)).astype(np.float32)
    r = rank_pools(rows, items, final, vecs, 20, lam, 30)
    for u in range(n_users):
        listed = r.items[u][r.items[u] >= 0]
        assert len(listed) == min(20, sizes[u])
        assert len(np.unique(listed)) == len(listed)
        assert (r.items[u][len(listed):] == -1).all()
        assert set(listed) <= set(items[rows == u])
        np.testing.assert_array_equal(items[r.positions[u][:len(listed)]], listed)


def test_mmr_never_lists_a_position_twice_even_with_infinite_vectors():
    # vectors are validated finite upstream, but no kernel may assume it: an infinite similarity makes
    # every remaining objective -inf, and the eager greedy then stops rather than repeat a pick
    vecs = np.array([[np.inf, 0.0], [np.inf, 0.0], [1.0, 0.0]], dtype=np.float32)
    final = np.array([0.9, 0.8, 0.79], dtype=np.float32)
    rows, items = np.zeros(3, np.int32), np.arange(3, dtype=np.int32)
    r = rank_pools(rows, items, final, vecs, 3, 0.5, 3)
    listed = r.positions[0][r.positions[0] >= 0]
    assert len(np.unique(listed)) == len(listed), r.positions
    np.testing.assert_array_equal(r.positions, _eager_mmr(rows, items, final, vecs, 3, 0.5, 3))


# --------------------------------------------------------------------------- lazy MMR == eager oracle


@st.composite
def _pools(draw, signed: bool):
    """Random users, scores drawn from few levels (ties; some non-finite), vectors with components in
    {-1, -0.5, 0, 0.5, 1} (or only the non-negative ones) over few items (duplicates, exact-tie dots)."""
    n_items = draw(st.integers(1, 8))
    dim = draw(st.integers(1, 4))
    comps = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0] if signed else [0.0, 0.5, 1.0])
    vecs = np.array(draw(st.lists(comps, min_size=n_items * dim, max_size=n_items * dim)),
                    dtype=np.float32).reshape(n_items, dim)
    lengths = draw(st.lists(st.integers(1, 14), min_size=1, max_size=4))
    n = sum(lengths)
    levels = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.3, math.nan, -math.inf])
    final = np.array(draw(st.lists(levels, min_size=n, max_size=n)), dtype=np.float32)
    items = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), dtype=np.int32)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    lam = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    pool = draw(st.integers(1, 16))
    k = draw(st.integers(1, 16))
    return rows, items, final, vecs, k, lam, pool


@settings(max_examples=300, deadline=None)
@given(_pools(signed=True))
def test_lazy_mmr_equals_the_eager_greedy(case):
    rows, items, final, vecs, k, lam, pool = case
    r = rank_pools(rows, items, final, vecs, k, lam, pool)
    np.testing.assert_array_equal(r.positions, _eager_mmr(rows, items, final, vecs, k, lam, pool))


@settings(max_examples=300, deadline=None)
@given(_pools(signed=False))
def test_lazy_mmr_equals_the_eager_greedy_when_similarities_are_non_negative(case):
    rows, items, final, vecs, k, lam, pool = case
    r = rank_pools(rows, items, final, vecs, k, lam, pool)
    np.testing.assert_array_equal(r.positions, _eager_mmr(rows, items, final, vecs, k, lam, pool))


@pytest.mark.parametrize("lam", [0.25, 0.5])
def test_lazy_mmr_equals_the_eager_greedy_at_realistic_sizes(lam):
    # 50 users x 1,200 candidates, a 200-item shortlist, k = 50, 64-d unit vectors (as mmr.npy)
    rng = np.random.default_rng(2024)
    n_users, width, n_items = 50, 1200, 5000
    vecs = _unit_rows(rng, n_items, 64)
    rows = np.repeat(np.arange(n_users, dtype=np.int32), width)
    items = np.concatenate([rng.choice(n_items, width, replace=False) for _ in range(n_users)]).astype(np.int32)
    final = rng.random(n_users * width).astype(np.float32)
    final[::7] = np.round(final[::7], 2)  # some exact ties
    r = rank_pools(rows, items, final, vecs, 50, lam, 200)
    want = _eager_mmr(rows, items, final, vecs, 50, lam, 200)
    differ = np.flatnonzero((r.positions != want).any(axis=1))
    assert len(differ) == 0, (f"{len(differ)} of {n_users} users differ, e.g. user {differ[0]}: "
                              f"lazy {r.positions[differ[0]].tolist()} vs eager {want[differ[0]].tolist()}")


# --------------------------------------------------------------------------- kernels.dot


@pytest.mark.parametrize("n", [*range(21), 64, 384, 1001])
def test_dot_equals_a_float64_reference_within_float32_rounding(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    got = dot(x, y)
    ref = float(np.dot(x.astype(np.float64), y.astype(np.float64)))
    bound = (n + 1) * 2.0 ** -24 * float(np.abs(x.astype(np.float64) * y).sum())
    assert isinstance(got, (float, np.floating))
    assert abs(float(got) - ref) <= bound
    if n == 0:
        assert got == 0.0


@pytest.mark.parametrize("n", [*range(21), 64, 383])
def test_dot_gives_the_same_bits_on_every_call_and_thread(n):
    # the sum may be vectorised (reassociated), but one compiled kernel always sums the same way
    rng = np.random.default_rng(100 + n)
    x = (rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    first = np.float32(dot(x, y)).tobytes()
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda _: np.float32(dot(x.copy(), y.copy())).tobytes(), range(8)))
    assert set(again) == {first}


@pytest.mark.parametrize("where", [0, 3, 7, 8, 11])  # lane slots and tail slots of a length-12 vector
def test_dot_propagates_nan_and_inf(where):
    x = np.ones(12, dtype=np.float32)
    y = np.ones(12, dtype=np.float32)
    x[where] = np.nan
    assert np.isnan(dot(x, y))
    x[where] = np.inf
    assert dot(x, y) == np.inf
    y[where] = 0.0  # inf * 0
    assert np.isnan(dot(x, y))
    y[where] = 1.0
    x[(where + 1) % 12] = -np.inf  # inf + -inf
    assert np.isnan(dot(x, y))


# --------------------------------------------------------------------------- pair_dots


def test_pair_dots_equals_gathered_einsum():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 13)).astype(np.float32)
    b = rng.normal(size=(9, 13)).astype(np.float32)
    rows = rng.integers(0, 7, 200).astype(np.int32)
    cols = rng.integers(0, 9, 200).astype(np.int32)
    got = pair_dots(a, b, rows, cols)
    want = np.einsum("ij,ij->i", a[rows].astype(np.float64), b[cols].astype(np.float64))
    assert got.dtype == np.float32 and got.shape == (200,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # each pair is kernels.dot of the two rows, bit for bit
    assert all(np.float32(dot(a[r], b[c])) == got[p] for p, (r, c) in enumerate(zip(rows, cols)))


def test_pair_dots_empty():
    a = np.ones((2, 3), dtype=np.float32)
    assert pair_dots(a, a, np.zeros(0, np.int32), np.zeros(0, np.int32)).shape == (0,)


def test_pair_dots_propagates_nan_and_inf():
    # no nnan/ninf fastmath: a NaN or inf input is never assumed away
    a = np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.5], [np.inf, np.inf]], dtype=np.float32)
    b = np.array([[1.0, 1.0], [-np.inf, 1.0], [1.0, -1.0]], dtype=np.float32)
    got = pair_dots(a, b, np.array([0, 1, 2, 0, 3], np.int32), np.array([0, 0, 0, 1, 2], np.int32))
    assert got[0] == 3.0
    assert np.isnan(got[1])
    assert got[2] == np.inf
    assert got[3] == -np.inf
    assert np.isnan(got[4])  # inf + (-inf)


# --------------------------------------------------------------------------- threads


def test_kernels_give_the_same_bytes_on_concurrent_threads():
    # the executor runs batches on threads (the kernels release the GIL): a user's list must not
    # depend on what else runs at the same time, nor on which batch the user is in
    rng = np.random.default_rng(12)
    n_items, n_users = 300, 64
    vecs = _unit_rows(rng, n_items, 16)
    sizes = rng.integers(40, 150, n_users)
    rows = np.repeat(np.arange(n_users, dtype=np.int32), sizes)
    items = np.concatenate([rng.choice(n_items, s, replace=False) for s in sizes]).astype(np.int32)
    final = rng.random(len(rows)).astype(np.float32)
    whole = rank_pools(rows, items, final, vecs, 20, 0.3, 60)
    starts = np.concatenate(([0], np.cumsum(sizes)))
    chunks = [(u, min(u + 8, n_users)) for u in range(0, n_users, 8)]

    def run(chunk: tuple[int, int]):
        a, b = starts[chunk[0]], starts[chunk[1]]
        return rank_pools(rows[a:b], items[a:b], final[a:b], vecs, 20, 0.3, 60)

    pr = rng.integers(0, n_items, 5000).astype(np.int32)
    pc = rng.integers(0, n_items, 5000).astype(np.int32)
    dots = pair_dots(vecs, vecs, pr, pc)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(run, chunks * 3))
        dot_parts = list(pool.map(lambda _: pair_dots(vecs, vecs, pr, pc), range(8)))
    for (u0, u1), part in zip(chunks * 3, parts):
        offset = starts[u0]
        shifted = np.where(part.positions >= 0, part.positions + offset, -1)
        np.testing.assert_array_equal(shifted, whole.positions[u0:u1])
        np.testing.assert_array_equal(part.users, whole.users[u0:u1])
        assert part.items.tobytes() == whole.items[u0:u1].tobytes()
        assert part.scores.tobytes() == whole.scores[u0:u1].tobytes()
    for d in dot_parts:
        assert d.tobytes() == dots.tobytes()
