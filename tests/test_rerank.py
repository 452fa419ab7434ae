"""Tests for recopt.rerank and recopt.kernels: padding, plain top-k with its tie rule,
MMR on hand-computed cases (including rows whose remaining scores are not finite), the
shortlist, the numba pair-dot kernel (NaN and inf propagate: no nnan/ninf fastmath), and
the kernels giving the same bytes when batches run on concurrent threads (nogil)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.kernels import mmr_select, pair_dots
from recopt.rerank import pad_by_user, rank_pools, top_k

# Three unit vectors: 1 is a near-duplicate of 0 (5 degrees apart), 2 is orthogonal to 0.
COS5, SIN5 = math.cos(math.radians(5)), math.sin(math.radians(5))
VECS = np.array([[1.0, 0.0], [COS5, SIN5], [0.0, 1.0]], dtype=np.float32)


def _reference_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best, score descending, ties by earlier position."""
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


# --------------------------------------------------------------------------- pad_by_user


def test_pad_by_user_builds_matrix_and_positions():
    rows = np.array([3, 3, 5, 7, 7, 7], dtype=np.int32)
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=np.float32)
    users, mat, pos = pad_by_user(rows, values, -1.0)
    np.testing.assert_array_equal(users, [3, 5, 7])
    np.testing.assert_allclose(mat, [[0.1, 0.2, -1.0], [0.3, -1.0, -1.0], [0.4, 0.5, 0.6]])
    np.testing.assert_array_equal(pos, [[0, 1, -1], [2, -1, -1], [3, 4, 5]])
    assert mat.dtype == np.float32


def test_pad_by_user_empty():
    users, mat, pos = pad_by_user(np.zeros(0, np.int32), np.zeros(0, np.float32), 0.0)
    assert users.shape == (0,) and mat.shape == (0, 0) and pos.shape == (0, 0)


# --------------------------------------------------------------------------- top_k


def test_top_k_orders_by_score_then_pool_position():
    rows = np.array([0, 0, 0, 0, 1, 1, 1], dtype=np.int32)
    items = np.array([10, 11, 12, 13, 20, 21, 22], dtype=np.int32)
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.3, 0.3, 0.7], dtype=np.float32)
    users, mat, pos = pad_by_user(rows, scores, -np.inf)
    r = top_k(users, mat, pos, items, 3)
    np.testing.assert_array_equal(r.users, [0, 1])
    np.testing.assert_array_equal(r.items, [[11, 13, 12], [22, 20, 21]])
    np.testing.assert_allclose(r.scores, [[0.9, 0.9, 0.5], [0.7, 0.3, 0.3]])
    np.testing.assert_array_equal(r.positions, [[1, 3, 2], [6, 4, 5]])


def test_top_k_tie_at_the_cut_keeps_the_earliest_positions():
    # four items tie for places 2..5; only the two earliest of them may be listed
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], dtype=np.float32)
    rows = np.zeros(6, dtype=np.int32)
    items = np.arange(6, dtype=np.int32) + 100
    users, mat, pos = pad_by_user(rows, scores, -np.inf)
    r = top_k(users, mat, pos, items, 3)
    np.testing.assert_array_equal(r.items, [[101, 102, 104]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.integers(1, 60))
def test_top_k_matches_a_stable_sort_even_with_many_ties(levels, k):
    scores = np.array(levels, dtype=np.float32)
    n = len(scores)
    users, mat, pos = pad_by_user(np.zeros(n, np.int32), scores, -np.inf)
    r = top_k(users, mat, pos, np.arange(n, dtype=np.int32), k)
    expect = _reference_top_k(scores, k)
    np.testing.assert_array_equal(r.items[0, :len(expect)], expect)
    assert (r.items[0, len(expect):] == -1).all()


def test_top_k_pads_short_lists_with_minus_one_at_the_end():
    rows = np.array([0, 0, 1], dtype=np.int32)
    items = np.array([4, 5, 6], dtype=np.int32)
    scores = np.array([0.1, 0.8, 0.4], dtype=np.float32)
    users, mat, pos = pad_by_user(rows, scores, -np.inf)
    r = top_k(users, mat, pos, items, 4)
    np.testing.assert_array_equal(r.items, [[5, 4, -1, -1], [6, -1, -1, -1]])
    np.testing.assert_allclose(r.scores, [[0.8, 0.1, 0, 0], [0.4, 0, 0, 0]])
    np.testing.assert_array_equal(r.positions, [[1, 0, -1, -1], [2, -1, -1, -1]])


# --------------------------------------------------------------------------- mmr_select (kernel)


def test_mmr_select_hand_computed_case():
    scores = np.array([[0.9, 0.85, 0.6]], dtype=np.float32)
    items = np.array([[0, 1, 2]], dtype=np.int32)
    picked, objective = mmr_select(scores, items, VECS, 0.5, 3)
    # step 0: 0.45 | step 1: item 1 -> 0.425 - 0.5 cos5 = -0.073, item 2 -> 0.3 | step 2: item 1
    np.testing.assert_array_equal(picked, [[0, 2, 1]])
    np.testing.assert_allclose(objective, [[0.45, 0.3, 0.425 - 0.5 * COS5]], atol=1e-6)


def test_mmr_select_lambda_zero_keeps_the_given_order():
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(30, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scores = -np.sort(-rng.random((5, 30)), axis=1).astype(np.float32)
    items = np.tile(np.arange(30, dtype=np.int32), (5, 1))
    picked, _ = mmr_select(scores, items, vecs, 0.0, 10)
    np.testing.assert_array_equal(picked, np.tile(np.arange(10), (5, 1)))


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_mmr_select_ties_go_to_the_earlier_item(lam):
    # equal scores, mutually orthogonal vectors: every step is a tie
    scores = np.full((1, 4), 0.5, dtype=np.float32)
    picked, objective = mmr_select(scores, np.array([[3, 1, 0, 2]], np.int32), np.eye(4, dtype=np.float32), lam, 4)
    np.testing.assert_array_equal(picked, [[0, 1, 2, 3]])
    np.testing.assert_allclose(objective, np.full((1, 4), (1 - lam) * 0.5))


def test_mmr_select_zero_vectors_are_similar_to_nothing():
    # item 1 duplicates item 0, item 2 has no content (zero row): it is never penalised
    vecs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.5]], dtype=np.float32)
    picked, objective = mmr_select(scores, np.array([[0, 1, 2]], np.int32), vecs, 0.5, 3)
    np.testing.assert_array_equal(picked, [[0, 2, 1]])
    np.testing.assert_allclose(objective[0, 1], 0.25, atol=1e-6)


def test_mmr_select_stops_when_only_non_finite_scores_remain():
    # two finite scores, then valid items whose scores are -inf: exactly two picks, the rest -1
    scores = np.array([[0.9, 0.4, -np.inf, -np.inf]], dtype=np.float32)
    items = np.array([[0, 2, 1, 3]], dtype=np.int32)
    vecs = np.eye(4, dtype=np.float32)
    for lam in (0.0, 0.5):
        picked, objective = mmr_select(scores, items, vecs, lam, 4)
        np.testing.assert_array_equal(picked, [[0, 1, -1, -1]])
        np.testing.assert_allclose(objective[0, :2], [(1 - lam) * 0.9, (1 - lam) * 0.4])
        np.testing.assert_array_equal(objective[0, 2:], 0.0)


def test_mmr_select_never_picks_a_nan_score_and_an_all_inf_row_stays_empty():
    scores = np.array([[0.5, np.nan, 0.3], [-np.inf, -np.inf, -np.inf]], dtype=np.float32)
    items = np.array([[0, 1, 2], [0, 1, 2]], dtype=np.int32)
    picked, _ = mmr_select(scores, items, np.eye(3, dtype=np.float32), 0.25, 3)
    np.testing.assert_array_equal(picked, [[0, 2, -1], [-1, -1, -1]])


def test_mmr_select_penalty_uses_the_most_similar_picked_item():
    # item 3 is close to item 0 (picked first) and orthogonal to item 1: max, not the last pick
    vecs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.8, 0.6, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.1, 0.75]], dtype=np.float32)
    picked, objective = mmr_select(scores, np.array([[0, 1, 2, 3]], np.int32), vecs, 0.5, 4)
    # step 1: item 1 -> 0.4 - 0, item 3 -> 0.375 - 0.4 | step 2: item 2 -> 0.05, item 3 -> 0.375 - 0.5 * 0.8
    np.testing.assert_array_equal(picked, [[0, 1, 2, 3]])
    np.testing.assert_allclose(objective[0], [0.45, 0.4, 0.05, 0.375 - 0.4], atol=1e-6)


def test_kernels_give_the_same_bytes_on_concurrent_threads():
    # the executor runs batches on threads (the kernels release the GIL): a row's result must not
    # depend on what else runs at the same time
    rng = np.random.default_rng(12)
    n_items, n_users, width = 300, 64, 120
    vecs = rng.normal(size=(n_items, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scores = -np.sort(-rng.random((n_users, width)), axis=1).astype(np.float32)
    items = np.stack([rng.choice(n_items, width, replace=False) for _ in range(n_users)]).astype(np.int32)
    rows = rng.integers(0, n_items, 5000).astype(np.int32)
    cols = rng.integers(0, n_items, 5000).astype(np.int32)
    whole = mmr_select(scores, items, vecs, 0.3, 20)
    dots = pair_dots(vecs, vecs, rows, cols)
    chunks = [slice(s, s + 8) for s in range(0, n_users, 8)]
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda sl: mmr_select(scores[sl], items[sl], vecs, 0.3, 20), chunks * 3))
        dot_parts = list(pool.map(lambda _: pair_dots(vecs, vecs, rows, cols), range(8)))
    for sl, (picked, objective) in zip(chunks * 3, parts):
        np.testing.assert_array_equal(picked, whole[0][sl])
        np.testing.assert_array_equal(objective, whole[1][sl])
    for d in dot_parts:
        np.testing.assert_array_equal(d, dots)


# --------------------------------------------------------------------------- rank_pools


def _one_user_pool():
    # pool order is not score order: items 2, 0, 1 with finals 0.6, 0.9, 0.85
    rows = np.zeros(3, dtype=np.int32)
    items = np.array([2, 0, 1], dtype=np.int32)
    final = np.array([0.6, 0.9, 0.85], dtype=np.float32)
    return rows, items, final


def test_rank_pools_lambda_zero_is_plain_ranking():
    rows, items, final = _one_user_pool()
    r = rank_pools(rows, items, final, VECS, 3, 0.0, 3)
    np.testing.assert_array_equal(r.items, [[0, 1, 2]])
    np.testing.assert_allclose(r.scores, [[0.9, 0.85, 0.6]])
    np.testing.assert_array_equal(r.positions, [[1, 2, 0]])


@pytest.mark.parametrize(("lam", "expected"), [(0.1, [0, 1, 2]), (0.25, [0, 2, 1]), (0.5, [0, 2, 1])])
def test_rank_pools_pushes_the_near_duplicate_down_above_the_critical_lambda(lam, expected):
    # item 1 loses to item 2 at step 1 when (1-lam)(0.85-0.6) < lam*cos5, i.e. lam > 0.2006
    rows, items, final = _one_user_pool()
    r = rank_pools(rows, items, final, VECS, 3, lam, 3)
    np.testing.assert_array_equal(r.items, [expected])
    # the listed scores are the final scores of the listed items, in MMR order
    by_item = dict(zip(items.tolist(), final.tolist()))
    np.testing.assert_allclose(r.scores[0], [by_item[i] for i in expected])


def test_rank_pools_shortlist_limits_what_mmr_can_pick():
    # items 0..3 point the same way, item 4 is orthogonal but ranks last by score
    vecs = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    rows = np.zeros(5, dtype=np.int32)
    items = np.arange(5, dtype=np.int32)
    final = np.array([0.9, 0.89, 0.88, 0.87, 0.1], dtype=np.float32)
    short = rank_pools(rows, items, final, vecs, 3, 0.9, 3)
    wide = rank_pools(rows, items, final, vecs, 3, 0.9, 5)
    np.testing.assert_array_equal(short.items, [[0, 1, 2]])
    np.testing.assert_array_equal(wide.items, [[0, 4, 1]])


def test_rank_pools_pads_short_pools_at_the_end():
    rows = np.array([0, 0, 1, 1, 1, 1], dtype=np.int32)
    items = np.array([0, 2, 0, 1, 2, 3], dtype=np.int32)
    final = np.array([0.2, 0.7, 0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    vecs = np.eye(4, dtype=np.float32)
    r = rank_pools(rows, items, final, vecs, 4, 0.25, 10)
    np.testing.assert_array_equal(r.items, [[2, 0, -1, -1], [0, 1, 2, 3]])
    np.testing.assert_allclose(r.scores[0], [0.7, 0.2, 0.0, 0.0])
    np.testing.assert_array_equal(r.positions[0, 2:], [-1, -1])


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.9])
def test_rank_pools_never_lists_an_item_twice(lam):
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
        pool_pos = r.positions[u][: len(listed)]
        np.testing.assert_array_equal(items[pool_pos], listed)


# --------------------------------------------------------------------------- pair_dots


def test_pair_dots_equals_gathered_einsum():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    b = rng.normal(size=(9, 5)).astype(np.float32)
    rows = rng.integers(0, 7, 200).astype(np.int32)
    cols = rng.integers(0, 9, 200).astype(np.int32)
    got = pair_dots(a, b, rows, cols)
    want = np.einsum("ij,ij->i", a[rows], b[cols])
    assert got.dtype == np.float32 and got.shape == (200,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pair_dots_empty():
    a = np.ones((2, 3), dtype=np.float32)
    assert pair_dots(a, a, np.zeros(0, np.int32), np.zeros(0, np.int32)).shape == (0,)


def test_pair_dots_propagates_nan_and_inf():
    # no nnan/ninf fastmath: a NaN or inf input is never assumed away
    a = np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.5]], dtype=np.float32)
    b = np.array([[1.0, 1.0], [-np.inf, 1.0]], dtype=np.float32)
    got = pair_dots(a, b, np.array([0, 1, 2, 0], np.int32), np.array([0, 0, 0, 1], np.int32))
    assert got[0] == 3.0
    assert np.isnan(got[1])
    assert got[2] == np.inf
    assert got[3] == -np.inf

