"""Tests for recopt.comparisons: the paired bootstrap against a brute-force loop over the same rng
draws and against the sampling theory, intervals (hand-computed order statistics, the zero-baseline
rule, input errors), the verdicts on bootstrapped lifts, and the gates, intervals and stability over
constructed runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recopt import comparisons as c
from recopt import gates as g
from recopt.gates import FAIL, INCONCLUSIVE, PASS


def pair(a: np.ndarray, b: np.ndarray, n_samples: int, rng: np.random.Generator) -> c.Comparison:
    """mean(a) vs mean(b), paired, through the one bootstrap entry."""
    samples = c.paired_bootstrap(np.column_stack([a, b]), n_samples, rng)
    return c.interval("recall@10", len(a), a.mean(), b.mean(), samples[:, 0], samples[:, 1])


# --------------------------------------------------------------------------- bootstrap_means


def test_bootstrap_means_are_the_means_of_the_users_each_sample_draws(monkeypatch):
    # one sample per chunk: the brute force draws the same indices, one sample at a time
    monkeypatch.setattr(c, "_CHUNK_BYTES", 1)
    values = np.random.default_rng(0).random((40, 3))
    got = c.paired_bootstrap(values, 25, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    want = np.array([values[rng.integers(0, 40, size=(1, 40), dtype=np.int32)[0]].mean(axis=0) for _ in range(25)])
    assert got.shape == (25, 3)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_bootstrap_means_in_one_block_match_the_same_draws_by_fancy_indexing():
    values = np.random.default_rng(1).normal(size=(60, 2))
    got = c.paired_bootstrap(values, 50, np.random.default_rng(3))
    idx = np.random.default_rng(3).integers(0, 60, size=(50, 60), dtype=np.int32)
    np.testing.assert_allclose(got, values[idx].mean(axis=1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("chunk_bytes", [c._CHUNK_BYTES, 16 * 300 * 7])  # one block / 7 samples a chunk
def test_bootstrap_means_do_not_depend_on_the_chunking(monkeypatch, chunk_bytes):
    values = np.random.default_rng(2).random((300, 2))
    whole = c.paired_bootstrap(values, 40, np.random.default_rng(5))
    monkeypatch.setattr(c, "_CHUNK_BYTES", chunk_bytes)
    np.testing.assert_allclose(c.paired_bootstrap(values, 40, np.random.default_rng(5)), whole, rtol=1e-12)


def test_bootstrap_means_have_the_sampling_distribution_of_a_mean():
    # E = mean(values), sd = pop-sd / sqrt(n); 4000 samples put both within a few percent
    values = np.random.default_rng(4).exponential(size=(400, 1))
    means = c.paired_bootstrap(values, 4000, np.random.default_rng(6))[:, 0]
    sd = values[:, 0].std() / math.sqrt(400)
    assert abs(means.mean() - values.mean()) < 0.1 * sd
    assert means.std() == pytest.approx(sd, rel=0.05)


def test_bootstrap_means_pair_the_columns():
    # two columns that always differ by 0.25 for every user differ by exactly 0.25 in every sample
    a = np.random.default_rng(8).random(100)
    means = c.paired_bootstrap(np.column_stack([a + 0.25, a]), 200, np.random.default_rng(0))
    np.testing.assert_allclose(means[:, 0] - means[:, 1], 0.25, atol=1e-12)
    assert means[:, 1].std() > 0.01  # while the means themselves move


# --------------------------------------------------------------------------- interval, paired_bootstrap


def test_interval_takes_the_lower_and_higher_order_statistics():
    # 1000 sample differences 0.001 ... 1.000 (shuffled): 2.5% "lower" is sorted[24], 97.5% "higher" sorted[975]
    samples_a = np.random.default_rng(0).permutation(np.arange(1, 1001) / 1000)
    r = c.interval("recall@10", 10, 0.6, 0.5, samples_a + 1.0, np.ones(1000))
    assert r.diff == pytest.approx(0.1)
    assert r.diff_lo == pytest.approx(0.025) and r.diff_hi == pytest.approx(0.976)
    assert r.lift == pytest.approx(0.2)
    assert r.lift_lo == pytest.approx(0.025) and r.lift_hi == pytest.approx(0.976)


def test_paired_bootstrap_of_identical_arrays_is_zero():
    a = np.random.default_rng(1).random(500)
    result = pair(a, a.copy(), 200, np.random.default_rng(0))
    assert (result.diff, result.diff_lo, result.diff_hi) == (0.0, 0.0, 0.0)
    assert (result.lift, result.lift_lo, result.lift_hi) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_detects_a_clearly_better_array():
    rng = np.random.default_rng(2)
    b = rng.random(1000)
    a = b + 0.05 + rng.normal(0, 0.01, size=b.size)
    result = pair(a, b, 500, np.random.default_rng(0))
    assert result.diff_lo > 0 and result.lift_lo > 0
    assert result.diff_lo <= result.diff <= result.diff_hi
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert result.lift == pytest.approx(a.mean() / b.mean() - 1)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    a, b = rng.random(300), rng.random(300)
    first = pair(a, b, 100, np.random.default_rng(9))
    assert first == pair(a, b, 100, np.random.default_rng(9))
    assert first != pair(a, b, 100, np.random.default_rng(10))


def test_paired_bootstrap_relative_rule_when_baseline_is_zero():
    zeros = np.zeros(20)
    better = pair(np.full(20, 0.1), zeros, 50, np.random.default_rng(0))
    assert better.lift == math.inf and better.lift_lo == math.inf
    both = pair(zeros, zeros, 50, np.random.default_rng(0))
    assert (both.diff, both.lift, both.lift_lo, both.lift_hi) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "values, n_samples, match",
    [
        (np.ones((0, 2)), 10, "non-empty"),
        (np.ones((3, 0)), 10, "non-empty"),
        (np.ones(3), 10, r"\(users, columns\)"),
        (np.array([[1.0, np.nan]]), 10, "must be finite"),
        (np.array([[1.0, np.inf]]), 10, "must be finite"),
        (np.ones((3, 2)), 0, "n_samples must be >= 1"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(values, n_samples, match):
    with pytest.raises(ValueError, match=match):
        c.paired_bootstrap(values, n_samples, np.random.default_rng(0))



# --------------------------------------------------------------------------- verdicts on bootstrapped values


def _gate1(a: np.ndarray, b: np.ndarray) -> tuple[str, c.Comparison]:
    r = pair(a, b, 1000, np.random.default_rng(0))
    return g.gate1_verdict(r.lift, r.lift_lo, 0.05), r


def test_gate1_on_bootstrapped_lifts():
    rng = np.random.default_rng(3)
    b = rng.random(500) + 0.1
    verdict, r = _gate1(b * 1.2, b)               # +20% for every user
    assert verdict == PASS and r.lift_lo == pytest.approx(0.2)
    verdict, r = _gate1(b * 1.02, b)              # +2% for every user: significant, too small
    assert verdict == FAIL and r.lift_lo > 0
    # +10% on average over 40 users, but half of them lose: a lift >= 5% whose interval includes 0
    few = b[:40]
    verdict, r = _gate1(few + np.tile([1.1, -0.9], 20) * few.mean(), few)
    assert r.lift >= 0.05 and r.lift_lo <= 0 <= r.lift_hi
    assert verdict == INCONCLUSIVE



def test_gate2_on_bootstrapped_differences():
    rng = np.random.default_rng(5)
    base = rng.random(400)
    r = pair(base - 0.05, base, 500, np.random.default_rng(0))      # every user loses 0.05
    assert g.gate2_verdict(r.diff, r.diff_hi) == FAIL
    noisy = base - 0.005 + np.tile([0.3, -0.3], 200)                               # tiny loss, large noise
    r = pair(noisy, base, 500, np.random.default_rng(0))
    assert r.diff < 0 <= r.diff_hi and g.gate2_verdict(r.diff, r.diff_hi) == INCONCLUSIVE
    r = pair(base + 0.01, base, 500, np.random.default_rng(0))
    assert g.gate2_verdict(r.diff, r.diff_hi) == PASS


