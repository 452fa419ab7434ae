"""Tests for recopt.comparisons over CONSTRUCTED runs (per-user arrays given by hand, a users table with
slices): gate 1 reads the lower end of the lift interval and reports each slice, gate 2 is computed on
the cold slice only, the reasons for NOT EVALUATED, intervals leave out the cold-rule rows, and
stability is paired and follows the selection rule."""

from __future__ import annotations

import numpy as np
import pytest

from recopt import comparisons as c
from recopt.gates import FAIL, INCONCLUSIVE, NOT_EVALUATED, PASS
from recopt.methods import Part, PartKind
from recopt.selection import COLD_ROLES, Role
from tests.fakes import fake_data, ids, make_run

N = 1000
BASE = Part(PartKind.BASELINE, method="cf_only")
COLD = Part(PartKind.COLD, 0.0, "popularity")


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _jitter(n: int, seed: int = 1, scale: float = 0.02) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-scale, scale, n)


# --------------------------------------------------------------------------- gate 1


def test_a_lift_above_the_minimum_whose_interval_crosses_0_is_inconclusive():
    # 40 users: alpha* gives 1.0 or 0.1 (mean 0.55), the baseline 0.5 for everyone: lift +10 %, very noisy
    data = fake_data(["warm"] * 30 + ["heavy"] * 10)
    star = make_run(Role.ALPHA_STAR, ids(data), np.tile([1.0, 0.1], 20))
    base = make_run(Role.BASELINE_BEST, ids(data), np.full(40, 0.5), part=BASE)
    g = c.gate1(star, base, data, 0.05, N, rng())
    r = g.comparisons["recall@10"]
    assert r.lift == pytest.approx(0.1) and r.lift_lo < 0 < r.lift_hi  # the case under test
    assert g.verdict == INCONCLUSIVE
    assert g.run is star and g.against is base and r.users == 40


def test_a_significant_lift_passes_and_a_small_one_fails():
    data = fake_data(["warm"] * 40)
    base = make_run(Role.BASELINE_BEST, ids(data), 0.5 + _jitter(40), part=BASE)
    for factor, verdict in ((1.2, PASS), (1.02, FAIL)):
        star = make_run(Role.ALPHA_STAR, ids(data), base.per_user["recall@10"] * factor)
        g = c.gate1(star, base, data, 0.05, N, rng())
        assert g.comparisons["recall@10"].lift_lo > 0 and g.verdict == verdict


# warm users gain 0.3, heavy users 0.1, cold users lose 0.2 (each with a little noise)
SPLIT = fake_data(["warm"] * 50 + ["cold"] * 20 + ["heavy"] * 10)
N_COLD = 20


def _split_runs():
    s = SPLIT.users["slice"].to_numpy()
    other = 0.3 + _jitter(80, 2)
    gain = np.select([s == "warm", s == "heavy"], [0.3, 0.1], -0.2) + _jitter(80, 3)
    star = make_run(Role.ALPHA_STAR, ids(SPLIT), other + gain)
    return star, make_run(Role.BASELINE, ids(SPLIT), other, part=BASE), s == "cold"


def test_gate1_reports_each_slice_so_a_loss_on_cold_users_shows():
    star, base, cold = _split_runs()
    g = c.gate1(star, base, SPLIT, 0.05, N, rng())
    assert g.comparisons["recall@10"].lift > 0.05 and g.verdict == PASS  # the overall lift hides the cold loss
    assert set(g.per_slice) == {"cold", "warm", "heavy"}
    verdict, cold_c = g.per_slice["cold"]
    assert verdict == FAIL and cold_c.lift < 0 and cold_c.lift_hi < 0 and cold_c.users == N_COLD
    assert cold_c.value == pytest.approx(star.per_user["recall@10"][cold].mean())
    assert cold_c.other == pytest.approx(base.per_user["recall@10"][cold].mean())
    assert g.per_slice["warm"][0] == PASS and g.per_slice["warm"][1].users == 50
    assert g.per_slice["heavy"][1].users == 10 and g.per_slice["heavy"][1].lift > 0


def test_gate1_compares_the_users_both_runs_served_and_leaves_out_an_empty_slice():
    data = fake_data(["warm"] * 30 + ["heavy"] * 10)
    star = make_run(Role.ALPHA_STAR, ids(data), 0.6 + _jitter(40))
    base = make_run(Role.BASELINE_BEST, ids(data)[5:], 0.5 + _jitter(35), part=BASE)
    g = c.gate1(star, base, data, 0.05, N, rng())
    assert g.comparisons["recall@10"].users == 35 and "35" in g.scope
    assert g.comparisons["recall@10"].value == pytest.approx(star.per_user["recall@10"][5:].mean())
    assert set(g.per_slice) == {"warm", "heavy"}  # no cold user: no cold verdict
    alone = make_run(Role.BASELINE_BEST, [999], [0.5], part=BASE)
    assert c.gate1(star, alone, data, 0.05, N, rng()).verdict == NOT_EVALUATED


# --------------------------------------------------------------------------- gate 2


def test_gate2_compares_the_cold_slice_only():
    star, base, cold = _split_runs()
    g = c.gate2(star, base, SPLIT, N, rng())
    r = g.comparisons["recall@10"]
    assert r.users == N_COLD == int(cold.sum()) and f"{N_COLD} users" in g.scope
    assert g.verdict != PASS and g.verdict == FAIL and r.diff_hi < 0
    assert r.value == pytest.approx(star.per_user["recall@10"][cold].mean())
    assert r.other == pytest.approx(base.per_user["recall@10"][cold].mean())


@pytest.mark.parametrize(("cold_change", "verdict"), [
    (np.full(N_COLD, 0.05), PASS),                                   # no regression
    (np.tile([0.3, -0.32], N_COLD // 2), INCONCLUSIVE),              # a loss of 0.01, far from significant
    (np.full(N_COLD, -0.05), FAIL)])                                 # a significant loss
def test_gate2_verdict_follows_the_cold_slice_whatever_the_warm_users_do(cold_change, verdict):
    s = SPLIT.users["slice"].to_numpy()
    other = 0.4 + _jitter(80, 2)
    change = np.where(s == "warm", -0.2, 0.2)  # the other slices move the other way
    change[s == "cold"] = cold_change
    star = make_run(Role.ALPHA_STAR, ids(SPLIT), other + change)
    assert c.gate2(star, make_run(Role.BASELINE, ids(SPLIT), other, part=BASE), SPLIT, N, rng()).verdict == verdict


def test_gate2_is_not_evaluated_on_an_empty_cold_slice_or_without_a_comparator():
    data = fake_data(["warm"] * 30 + ["heavy"] * 10)
    star = make_run(Role.ALPHA_STAR, ids(data), 0.5 + _jitter(40))
    base = make_run(Role.BASELINE, ids(data), 0.5 + _jitter(40, 2), part=BASE)
    g = c.gate2(star, base, data, N, rng())
    assert g.verdict == NOT_EVALUATED and "cold slice is empty" in g.reason and not g.comparisons
    g = c.gate2(star, None, SPLIT, N, rng())
    assert g.verdict == NOT_EVALUATED and "evaluate.baselines" in g.reason


# --------------------------------------------------------------------------- intervals, compare_many


def test_intervals_compare_every_run_serving_every_user_and_leave_out_the_cold_rule_rows():
    star, base, cold = _split_runs()
    grid = make_run(Role.GRID, ids(SPLIT), star.per_user["recall@10"] - 0.01)
    cold_rows = [make_run(role, ids(SPLIT, "cold"), np.full(N_COLD, 0.9), part=COLD) for role in COLD_ROLES]
    rows = c.intervals(star, [star, grid, *cold_rows, base], N, rng())
    assert [r for r, _ in rows] == [grid, base]
    for run, by_metric in rows:
        assert set(by_metric) == set(c.GATE_METRICS)
        r = by_metric["recall@10"]
        assert r.users == 80 and r.other == pytest.approx(star.per_user["recall@10"].mean())
        assert r.value == pytest.approx(run.per_user["recall@10"].mean())
    d = rows[0][1]["recall@10"]  # every user 0.01 below alpha*: paired, the interval is that exact difference
    assert d.diff_lo == pytest.approx(-0.01) and d.diff_hi == pytest.approx(-0.01)


def test_compare_many_is_paired():
    data = fake_data(["warm"] * 100)
    a = np.random.default_rng(5).random(100)
    ref = make_run(Role.ALPHA_STAR, ids(data), a)
    (out,) = c.compare_many(ref, [make_run(Role.GRID, ids(data), a + 0.001)], ids(data), ("recall@10",), N, rng())
    assert out["recall@10"].diff_lo == pytest.approx(0.001) and out["recall@10"].diff_hi == pytest.approx(0.001)


# --------------------------------------------------------------------------- stability


def test_stability_shares_sum_to_1():
    data = fake_data(["warm"] * 60)
    g = np.random.default_rng(7)
    cands = [(a, make_run(Role.GRID, ids(data), g.random(60), ndcg=g.random(60))) for a in (0.35, 0.5, 0.65, 0.8)]
    shares, won = c.stability(cands, ids(data), N, rng())
    assert [a for a, _ in shares] == [0.35, 0.5, 0.65, 0.8]
    assert sum(s for _, s in shares) == pytest.approx(1.0) and len(won) == N
    assert [s for _, s in shares] == pytest.approx(np.bincount(won, minlength=4) / N)


def test_a_candidate_better_for_every_user_wins_every_resample():
    # 0.5 is better than 0.35 by 0.001 recall for every user (a noisy user base: unpaired resamples would
    # let 0.35 win often) and worse on ndcg (the tie-breaker must not decide)
    data = fake_data(["warm"] * 100)
    a = np.random.default_rng(8).random(100)
    worse = make_run(Role.GRID, ids(data), a, ndcg=np.full(100, 0.9))
    better = make_run(Role.GRID, ids(data), a + 0.001, ndcg=np.full(100, 0.1))
    other = make_run(Role.GRID, ids(data), a - 0.3, ndcg=np.full(100, 1.0))
    shares, won = c.stability([(0.35, worse), (0.5, better), (0.65, other)], ids(data), N, rng())
    assert dict(shares) == {0.35: 0.0, 0.5: 1.0, 0.65: 0.0} and (won == 1).all()


def test_stability_ties_go_to_the_higher_ndcg_then_to_the_first_listed():
    data = fake_data(["warm"] * 50)
    a = np.random.default_rng(9).random(50)
    low, high = (make_run(Role.GRID, ids(data), a, ndcg=np.full(50, v)) for v in (0.2, 0.4))
    assert dict(c.stability([(1, low), (2, high)], ids(data), 200, rng())[0]) == {1: 0.0, 2: 1.0}
    assert dict(c.stability([(1, high), (2, high)], ids(data), 200, rng())[0]) == {1: 1.0, 2: 0.0}
    assert c.stability([(1, low)], ids(data)[:0], 200, rng())[0] == [(1, 0.0)]  # no user: no winner
