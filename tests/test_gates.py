"""Tests for recopt.gates: bootstrap means against a brute-force loop over the same rng
draws and against the sampling theory, paired intervals (hand-computed order statistics,
the zero-baseline rule, input errors), and the gate verdicts on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recopt import gates as g
from recopt.gates import FAIL, INCONCLUSIVE, PASS

# --------------------------------------------------------------------------- bootstrap_means


def test_bootstrap_means_are_the_means_of_the_users_each_sample_draws(monkeypatch):
    # one sample per chunk: the brute force draws the same indices, one sample at a time
    monkeypatch.setattr(g, "_CHUNK_BYTES", 1)
    values = np.random.default_rng(0).random((40, 3))
    got = g.bootstrap_means(values, 25, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    want = np.array([values[rng.integers(0, 40, size=(1, 40))[0]].mean(axis=0) for _ in range(25)])
    assert got.shape == (25, 3)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_bootstrap_means_in_one_block_match_the_same_draws_by_fancy_indexing():
    values = np.random.default_rng(1).normal(size=(60, 2))
    got = g.bootstrap_means(values, 50, np.random.default_rng(3))
    idx = np.random.default_rng(3).integers(0, 60, size=(50, 60))
    np.testing.assert_allclose(got, values[idx].mean(axis=1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("chunk_bytes", [g._CHUNK_BYTES, 16 * 300 * 7])  # one block / 7 samples a chunk
def test_bootstrap_means_do_not_depend_on_the_chunking(monkeypatch, chunk_bytes):
    values = np.random.default_rng(2).random((300, 2))
    whole = g.bootstrap_means(values, 40, np.random.default_rng(5))
    monkeypatch.setattr(g, "_CHUNK_BYTES", chunk_bytes)
    np.testing.assert_allclose(g.bootstrap_means(values, 40, np.random.default_rng(5)), whole, rtol=1e-12)


def test_bootstrap_means_have_the_sampling_distribution_of_a_mean():
    # E = mean(values), sd = pop-sd / sqrt(n); 4000 samples put both within a few percent
    values = np.random.default_rng(4).exponential(size=(400, 1))
    means = g.bootstrap_means(values, 4000, np.random.default_rng(6))[:, 0]
    sd = values[:, 0].std() / math.sqrt(400)
    assert abs(means.mean() - values.mean()) < 0.1 * sd
    assert means.std() == pytest.approx(sd, rel=0.05)


def test_bootstrap_means_pair_the_columns():
    # two columns that always differ by 0.25 for every user differ by exactly 0.25 in every sample
    a = np.random.default_rng(8).random(100)
    means = g.bootstrap_means(np.column_stack([a + 0.25, a]), 200, np.random.default_rng(0))
    np.testing.assert_allclose(means[:, 0] - means[:, 1], 0.25, atol=1e-12)
    assert means[:, 1].std() > 0.01  # while the means themselves move


# --------------------------------------------------------------------------- interval, paired_bootstrap


def test_interval_takes_the_lower_and_higher_order_statistics():
    # 1000 sample differences 0.001 ... 1.000 (shuffled): 2.5% "lower" is sorted[24], 97.5% "higher" sorted[975]
    samples_a = np.random.default_rng(0).permutation(np.arange(1, 1001) / 1000)
    r = g.interval(0.6, 0.5, samples_a + 1.0, np.ones(1000))
    assert r.diff == pytest.approx(0.1)
    assert r.diff_lo == pytest.approx(0.025) and r.diff_hi == pytest.approx(0.976)
    assert r.rel == pytest.approx(0.2)
    assert r.rel_lo == pytest.approx(0.025) and r.rel_hi == pytest.approx(0.976)


def test_paired_bootstrap_of_identical_arrays_is_zero():
    a = np.random.default_rng(1).random(500)
    result = g.paired_bootstrap(a, a.copy(), 200, np.random.default_rng(0))
    assert (result.diff, result.diff_lo, result.diff_hi) == (0.0, 0.0, 0.0)
    assert (result.rel, result.rel_lo, result.rel_hi) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_detects_a_clearly_better_array():
    rng = np.random.default_rng(2)
    b = rng.random(1000)
    a = b + 0.05 + rng.normal(0, 0.01, size=b.size)
    result = g.paired_bootstrap(a, b, 500, np.random.default_rng(0))
    assert result.diff_lo > 0 and result.rel_lo > 0
    assert result.diff_lo <= result.diff <= result.diff_hi
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert result.rel == pytest.approx(a.mean() / b.mean() - 1)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    a, b = rng.random(300), rng.random(300)
    first = g.paired_bootstrap(a, b, 100, np.random.default_rng(9))
    assert first == g.paired_bootstrap(a, b, 100, np.random.default_rng(9))
    assert first != g.paired_bootstrap(a, b, 100, np.random.default_rng(10))


def test_paired_bootstrap_relative_rule_when_baseline_is_zero():
    zeros = np.zeros(20)
    better = g.paired_bootstrap(np.full(20, 0.1), zeros, 50, np.random.default_rng(0))
    assert better.rel == math.inf and better.rel_lo == math.inf
    both = g.paired_bootstrap(zeros, zeros, 50, np.random.default_rng(0))
    assert (both.diff, both.rel, both.rel_lo, both.rel_hi) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "a, b, n_samples, match",
    [
        (np.ones(3), np.ones(4), 10, "equal shape"),
        (np.ones(0), np.ones(0), 10, "non-empty"),
        (np.ones((2, 2)), np.ones((2, 2)), 10, "1-D"),
        (np.array([1.0, np.nan]), np.ones(2), 10, "must be finite"),
        (np.ones(3), np.ones(3), 0, "n_samples must be >= 1"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(a, b, n_samples, match):
    with pytest.raises(ValueError, match=match):
        g.paired_bootstrap(a, b, n_samples, np.random.default_rng(0))


# --------------------------------------------------------------------------- gate 1


@pytest.mark.parametrize(("lift", "lift_lo", "verdict"), [
    (0.10, 0.02, PASS),           # large enough and significant
    (0.05, 1e-9, PASS),           # exactly the minimum lift, interval just above 0
    (0.08, -0.01, INCONCLUSIVE),  # large enough, interval reaches below 0
    (0.08, 0.0, INCONCLUSIVE),    # an interval ending at 0 does not lie above it
    (0.03, 0.01, FAIL),           # significant but too small
    (0.049, 0.02, FAIL),
    (-0.10, -0.20, FAIL),
])
def test_gate1_verdicts(lift, lift_lo, verdict):
    assert g.gate1_verdict(lift, lift_lo, 0.05) == verdict


def _gate1(a: np.ndarray, b: np.ndarray) -> tuple[str, g.BootstrapResult]:
    r = g.paired_bootstrap(a, b, 1000, np.random.default_rng(0))
    return g.gate1_verdict(r.rel, r.rel_lo, 0.05), r


def test_gate1_on_bootstrapped_lifts():
    rng = np.random.default_rng(3)
    b = rng.random(500) + 0.1
    verdict, r = _gate1(b * 1.2, b)               # +20% for every user
    assert verdict == PASS and r.rel_lo == pytest.approx(0.2)
    verdict, r = _gate1(b * 1.02, b)              # +2% for every user: significant, too small
    assert verdict == FAIL and r.rel_lo > 0
    # +10% on average over 40 users, but half of them lose: a lift >= 5% whose interval includes 0
    few = b[:40]
    verdict, r = _gate1(few + np.tile([1.1, -0.9], 20) * few.mean(), few)
    assert r.rel >= 0.05 and r.rel_lo <= 0 <= r.rel_hi
    assert verdict == INCONCLUSIVE


# --------------------------------------------------------------------------- gate 2


@pytest.mark.parametrize(("diff", "diff_hi", "verdict"), [
    (0.01, 0.03, PASS),
    (0.0, 0.02, PASS),             # no regression
    (-0.01, 0.005, INCONCLUSIVE),  # a regression that is not significant
    (-0.01, 0.0, INCONCLUSIVE),
    (-0.01, -0.001, FAIL),         # a significant regression
])
def test_gate2_verdicts(diff, diff_hi, verdict):
    assert g.gate2_verdict(diff, diff_hi) == verdict


def test_gate2_on_bootstrapped_differences():
    rng = np.random.default_rng(5)
    base = rng.random(400)
    r = g.paired_bootstrap(base - 0.05, base, 500, np.random.default_rng(0))      # every user loses 0.05
    assert g.gate2_verdict(r.diff, r.diff_hi) == FAIL
    noisy = base - 0.005 + np.tile([0.3, -0.3], 200)                               # tiny loss, large noise
    r = g.paired_bootstrap(noisy, base, 500, np.random.default_rng(0))
    assert r.diff < 0 <= r.diff_hi and g.gate2_verdict(r.diff, r.diff_hi) == INCONCLUSIVE
    r = g.paired_bootstrap(base + 0.01, base, 500, np.random.default_rng(0))
    assert g.gate2_verdict(r.diff, r.diff_hi) == PASS


# --------------------------------------------------------------------------- enforce


@pytest.mark.parametrize(("verdicts", "strict", "holds"), [
    ([PASS, PASS], False, True),
    ([PASS, PASS], True, True),
    ([PASS, INCONCLUSIVE], False, True),
    ([PASS, INCONCLUSIVE], True, False),
    ([FAIL, PASS], False, False),
    ([INCONCLUSIVE, FAIL], False, False),
    ([], True, True),
])
def test_enforce(verdicts, strict, holds):
    assert g.enforce(verdicts, inconclusive_fails=strict) is holds
