"""Tests for recopt.runs on constructed parts: combine / join (the first piece holding a user serves
that user, users ascending, every array aligned row by row, slice-restricted pieces, no piece),
summarise against a hand computation, slice_summaries, restrict and common_users."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recopt.methods import Part, PartKind
from recopt.runs import Piece, combine, common_users, join, restrict, slice_summaries, summarise
from recopt.selection import Role
from tests.fakes import fake_data, make_run, part_result

# users 10 12 14 16 18 20
DATA = fake_data(["warm", "cold", "warm", "heavy", "cold", "warm"])


def _piece(users: list[int], x: list[float], keep: str | None = None):
    """A piece whose 2-D array repeats each row's value, so alignment shows in every column."""
    x = np.asarray(x, np.float64)
    return np.asarray(users, np.int32), {"x": x, "top": np.repeat(x[:, None], 3, axis=1).astype(np.int32)}, keep


A = ([10, 14, 16, 20], [1, 2, 3, 4])
B = ([12, 14, 18, 20], [10, 20, 30, 40])


def _check(result, users: list[int], x: list[float]) -> None:
    got_users, arrays = result
    np.testing.assert_array_equal(got_users, users)
    np.testing.assert_array_equal(arrays["x"], x)
    np.testing.assert_array_equal(arrays["top"], np.repeat(np.asarray(x)[:, None], 3, axis=1))


@pytest.mark.parametrize(("pieces", "users", "x"), [
    ([A, B], [10, 12, 14, 16, 18, 20], [1, 10, 2, 3, 30, 4]),       # shared users 14, 20: from A
    ([B, A], [10, 12, 14, 16, 18, 20], [1, 10, 20, 3, 30, 40]),     # ... from B when B comes first
    ([B], [12, 14, 18, 20], [10, 20, 30, 40]),
])
def test_the_first_piece_holding_a_user_serves_that_user(pieces, users, x):
    _check(combine([_piece(*p) for p in pieces], DATA), users, x)


def test_a_slice_restricted_piece_keeps_only_that_slices_users():
    # A on warm keeps 10, 14, 20 (16 is heavy and no other piece holds it); B serves the rest
    _check(combine([_piece(*A, keep="warm"), _piece(*B)], DATA), [10, 12, 14, 18, 20], [1, 10, 2, 30, 4])
    # a slice the piece has no user of gives nothing from it
    _check(combine([_piece(*A, keep="cold"), _piece(*B)], DATA), [12, 14, 18, 20], [10, 20, 30, 40])
    # per-slice pieces, as the adaptive run is made: each user from the piece of its own slice
    _check(combine([_piece(*B, keep="warm"), _piece(*A, keep="heavy"), _piece(*B, keep="cold"), _piece(*A)], DATA),
           [10, 12, 14, 16, 18, 20], [1, 10, 20, 3, 30, 40])


def test_no_piece_gives_no_user():
    users, arrays = combine([], DATA)
    assert users.dtype == np.int32 and len(users) == 0 and arrays == {}


def test_join_makes_a_run_of_its_parts():
    alpha, cold = Part(PartKind.ALPHA, 0.35), Part(PartKind.COLD, 0.5, "popularity")
    pa = part_result(alpha, [10, 14, 16, 20], {"recall@10": [1, 0, 0.5, 0.25]}, seconds=1.25)
    pc = part_result(cold, [10, 12, 18], {"recall@10": [0.1, 0.2, 0.3]}, seconds=2.5)
    run = join(Role.GRID, [(pa, "warm"), (pc, None)], DATA)
    assert run.pieces == (Piece(alpha, "warm"), Piece(cold, None)) and run.role == Role.GRID
    np.testing.assert_array_equal(run.users, [10, 12, 14, 18, 20])
    np.testing.assert_array_equal(run.per_user["recall@10"], [1, 0.2, 0, 0.3, 0.25])
    assert run.top.shape == (5, 10) and run.seconds == 3.75 and run.complete
    assert run.summary == summarise(run, DATA) and run.summary["recall@10"] == pytest.approx(1.75 / 5)


# --------------------------------------------------------------------------- summarise, by hand

# 4 items with train shares 1/2, 1/4, 1/4, 0 (novelty: 1, 2, 2 bits; the unseen item counts as rare as the
# rarest seen one: 2 bits); users 10, 12, 14 of a 5-user table whose other users must not count
HAND = fake_data(["warm", "cold", "warm", "heavy", "cold"], pool_recall=[0.2, 0.4, 0.9, 0.0, 0.0],
                 pool_size=[10, 20, 60, 1000, 1000], share=[0.5, 0.25, 0.25, 0.0])
TOP = [[0, 1] + [-1] * 8, [0, 2, 3] + [-1] * 7, [1] + [-1] * 9]


def _hand_run():
    return make_run(Role.GRID, [10, 12, 14], [1.0, 0.0, 0.5], ndcg=[0.2, 0.4, 0.6], top=TOP)


def test_summarise_means_over_its_users_and_catalog_metrics_by_hand():
    s = summarise(_hand_run(), HAND)
    assert s["recall@10"] == pytest.approx(0.5) and s["ndcg@10"] == pytest.approx(0.4)
    assert s["coverage@10"] == pytest.approx(4 / 4)            # items 0, 1, 2, 3
    assert s["novelty@10"] == pytest.approx((1 + 2 + 1 + 2 + 2 + 2) / 6)  # 0 1 | 0 2 3 | 1
    assert s["pool_recall"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert s["mean_cand"] == pytest.approx(30.0) and s["users_eval"] == 3


def test_summarise_on_a_subset_of_users():
    s = summarise(_hand_run(), HAND, np.array([True, False, True]))
    assert s["recall@10"] == pytest.approx(0.75) and s["coverage@10"] == pytest.approx(2 / 4)
    assert s["novelty@10"] == pytest.approx((1 + 2 + 2) / 3)
    assert s["pool_recall"] == pytest.approx(0.55) and s["mean_cand"] == pytest.approx(35.0) and s["users_eval"] == 2


def test_slice_summaries_count_and_measure_each_slice():
    rows = {r["slice"]: r for r in slice_summaries(_hand_run(), HAND)}
    assert list(rows) == ["cold", "warm", "heavy"]
    assert (rows["warm"]["users"], rows["cold"]["users"], rows["heavy"]["users"]) == (2, 1, 0)
    assert rows["warm"]["recall@10"] == pytest.approx(0.75) and rows["cold"]["recall@10"] == 0.0
    assert rows["cold"]["novelty@10"] == pytest.approx((1 + 2 + 2) / 3)
    assert rows["heavy"]["recall@10"] == 0.0 and rows["heavy"]["users_eval"] == 0  # the empty rule, not NaN
    assert not any(math.isnan(v) for r in rows.values() for v in r.values() if isinstance(v, float))


def test_restrict_keeps_the_rows_of_its_users_and_recomputes_the_summary():
    run = _hand_run()
    sub = restrict(run, np.array([10, 14], np.int32), HAND)
    np.testing.assert_array_equal(sub.users, [10, 14])
    np.testing.assert_array_equal(sub.per_user["ndcg@10"], [0.2, 0.6])
    np.testing.assert_array_equal(sub.top, np.asarray(TOP)[[0, 2]])
    assert sub.pieces == run.pieces and sub.role == run.role
    assert sub.summary == summarise(run, HAND, np.array([True, False, True]))
    assert run.users.tolist() == [10, 12, 14]  # the run itself is unchanged


def test_common_users_are_those_every_run_finished():
    runs = [make_run(Role.GRID, u, np.zeros(len(u))) for u in ([10, 12, 14, 18], [12, 14, 16, 18], [12, 18, 20])]
    np.testing.assert_array_equal(common_users(runs), [12, 18])
    np.testing.assert_array_equal(common_users(runs[:1]), [10, 12, 14, 18])
    assert len(common_users([])) == 0
    assert len(common_users([runs[0], make_run(Role.GRID, [11], [0.0])])) == 0
