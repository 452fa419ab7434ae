"""Tests for recopt.filters: bounded, ordered relaxation of soft filters and the backfill step,
on hand-built cases and against a per-user brute force (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.filters import first_n_per_row, relax_filters, step_labels

T, F = True, False


def _b(*values: bool) -> np.ndarray:
    return np.array(values, dtype=np.bool_)


# --------------------------------------------------------------------------- step_labels


def test_step_labels_has_one_step_per_relaxable_filter_plus_none_and_backfill():
    assert step_labels(["providers", "genres"]) == ("none", "relaxed_providers", "relaxed_genres", "backfill")
    assert step_labels([]) == ("none", "backfill")


# --------------------------------------------------------------------------- relax_filters


def test_no_filter_takes_step_zero_and_keeps_the_hard_passing_pairs():
    rows = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    hard = _b(T, F, T, T, T)
    r = relax_filters(rows, 2, hard, {}, ["providers", "genres"], min_pool=2)
    np.testing.assert_array_equal(r.step, [0, 0])
    np.testing.assert_array_equal(r.keep, hard)
    assert r.backfill_pass == {}


def test_min_pool_zero_never_relaxes_even_an_empty_pool():
    rows = np.array([1, 1], dtype=np.int32)   # user 0 has no candidate at all
    r = relax_filters(rows, 2, _b(T, T), {"genres": _b(F, F)}, ["genres"], min_pool=0)
    np.testing.assert_array_equal(r.step, [0, 0])
    assert not r.keep.any()


def test_genre_filter_matching_nothing_relaxes_genres_at_its_place_in_the_order():
    rows = np.array([0, 0, 0], dtype=np.int32)
    soft = {"providers": _b(T, T, T), "genres": _b(F, F, F)}
    r = relax_filters(rows, 1, _b(T, T, T), soft, ["providers", "genres"], min_pool=2)
    # step 1 (drop providers) cannot help; step 2 (drop genres) does
    assert r.labels[int(r.step[0])] == "relaxed_genres"
    np.testing.assert_array_equal(r.step, [2])
    np.testing.assert_array_equal(r.keep, [T, T, T])


def test_genre_filter_matching_nothing_ends_in_backfill_after_len_order_plus_one_steps():
    order = ["providers", "genres"]
    rows = np.array([0, 0, 0, 1], dtype=np.int32)
    hard = _b(T, F, T, T)
    soft = {"providers": _b(T, T, F, T), "genres": _b(F, F, F, F)}
    r = relax_filters(rows, 2, hard, soft, order, min_pool=5)
    assert len(r.labels) == len(order) + 2
    np.testing.assert_array_equal(r.step, [len(order) + 1, len(order) + 1])
    assert r.labels[len(order) + 1] == "backfill"
    # every relaxable filter is dropped for the backfill: only the hard rules remain
    assert r.backfill_pass == {"providers": False, "genres": False}
    np.testing.assert_array_equal(r.keep, hard)


@pytest.mark.parametrize(("order", "expected"), [
    (["providers", "genres"], [2, 1]),
    (["genres", "providers"], [1, 2]),
])
def test_filters_relax_in_exactly_the_configured_order(order, expected):
    # user 0: its items pass providers but no genre; user 1: the reverse
    rows = np.array([0, 0, 1, 1], dtype=np.int32)
    soft = {"providers": _b(T, T, F, F), "genres": _b(F, F, T, T)}
    r = relax_filters(rows, 2, _b(T, T, T, T), soft, order, min_pool=2)
    np.testing.assert_array_equal(r.step, expected)
    np.testing.assert_array_equal(r.keep, [T, T, T, T])


def test_relaxation_is_per_user_and_keeps_only_what_the_users_step_allows():
    rows = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)
    soft = {"genres": _b(T, T, F, T, F, F)}
    r = relax_filters(rows, 2, np.ones(6, bool), soft, ["genres"], min_pool=2)
    np.testing.assert_array_equal(r.step, [0, 1])            # user 0 has 2 genre matches
    np.testing.assert_array_equal(r.keep, [T, T, F, T, T, T])  # user 0's non-match stays out


def test_a_filter_not_in_relax_order_never_relaxes():
    rows = np.array([0, 0, 0], dtype=np.int32)
    soft = {"genres": _b(F, T, F)}
    r = relax_filters(rows, 1, _b(T, T, T), soft, ["providers"], min_pool=3)
    assert r.labels == ("none", "relaxed_providers", "backfill")
    np.testing.assert_array_equal(r.step, [2])
    assert r.backfill_pass == {"genres": True}               # the backfill still applies it
    np.testing.assert_array_equal(r.keep, [F, T, F])


def test_hard_rules_are_never_relaxed():
    rows = np.array([0, 0, 0], dtype=np.int32)
    r = relax_filters(rows, 1, _b(F, F, T), {"genres": _b(F, F, F)}, ["genres"], min_pool=3)
    np.testing.assert_array_equal(r.step, [2])
    np.testing.assert_array_equal(r.keep, [F, F, T])


def test_steps_are_bounded_for_many_users_and_random_masks():
    rng = np.random.default_rng(0)
    n_users = 200
    rows = np.sort(rng.integers(0, n_users, 5000)).astype(np.int32)
    soft = {"providers": rng.random(5000) < 0.3, "genres": rng.random(5000) < 0.3,
            "user_providers": rng.random(5000) < 0.5}
    order = ["providers", "genres"]
    r = relax_filters(rows, n_users, rng.random(5000) < 0.9, soft, order, min_pool=20)
    assert r.step.min() >= 0 and r.step.max() <= len(order) + 1
    # user_providers is not relaxable: nothing without it is ever kept
    assert not (r.keep & ~soft["user_providers"]).any()


def _relax_by_loop(rows, n_users, hard, soft, order, min_pool):
    """Per user: the first step (0 = all filters, s = order[:s] dropped) leaving >= min_pool
    pairs, else the backfill step with every listed filter dropped."""
    step = np.full(n_users, len(order) + 1)
    keep = np.zeros(len(rows), dtype=bool)
    for u in range(n_users):
        for s in range(len(order) + 2):
            dropped = set(order[: min(s, len(order))])
            ok = hard.copy()
            for name, mask in soft.items():
                if name not in dropped:
                    ok &= mask
            mine = ok & (rows == u)
            if s == len(order) + 1 or mine.sum() >= min_pool:
                step[u] = s
                keep |= mine
                break
    return step, keep


@st.composite
def relax_cases(draw):
    n_users = draw(st.integers(1, 5))
    rows = np.sort(np.array(draw(st.lists(st.integers(0, n_users - 1), max_size=30)), dtype=np.int32))
    n = len(rows)
    masks = st.lists(st.booleans(), min_size=n, max_size=n)
    names = draw(st.lists(st.sampled_from(["providers", "genres", "user_providers"]), unique=True))
    soft = {name: np.array(draw(masks), dtype=bool) for name in names}
    order = draw(st.lists(st.sampled_from(["providers", "genres", "user_providers"]), unique=True))
    return rows, n_users, np.array(draw(masks), dtype=bool), soft, order, draw(st.integers(0, 8))


@settings(max_examples=300, deadline=None)
@given(relax_cases())
def test_relax_filters_matches_a_per_user_brute_force(case):
    rows, n_users, hard, soft, order, min_pool = case
    r = relax_filters(rows, n_users, hard, soft, order, min_pool)
    step, keep = _relax_by_loop(rows, n_users, hard, soft, order, min_pool)
    np.testing.assert_array_equal(r.step, step)
    np.testing.assert_array_equal(r.keep, keep)
    assert r.backfill_pass == {name: name not in order for name in soft}
    assert not (r.keep & ~hard).any()


# --------------------------------------------------------------------------- first_n_per_row


def test_first_n_per_row_takes_the_first_n_of_each_group():
    rows = np.array([0, 0, 0, 2, 2, 5], dtype=np.int32)
    n = np.array([2, 9, 1, 0, 0, 3], dtype=np.int64)   # indexed by row value
    np.testing.assert_array_equal(first_n_per_row(rows, n), [T, T, F, T, F, T])


def test_first_n_per_row_zero_and_empty():
    rows = np.array([1, 1], dtype=np.int32)
    np.testing.assert_array_equal(first_n_per_row(rows, np.array([5, 0])), [F, F])
    assert first_n_per_row(np.zeros(0, np.int32), np.zeros(0, np.int64)).shape == (0,)
