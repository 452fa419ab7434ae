"""Tests for recopt.scoring: per-user min-max, blending with cold-start fallbacks,
secondary signals, the cold-start rule (1 - beta) * content + beta * prior for users
without any collab, score_pool end to end, and Hypothesis properties (range, beta = 0
is the content-only rule, beta = 1 ranks by the prior, warm users ignore beta)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.config import RerankConfig
from recopt.keys import segment_starts
from recopt.scoring import (blend, cold_blend, final_scores, impute_user_mean, minmax_per_user, normalise_pool,
                            prior_signal, served_scores)

NAN = np.nan


def score_pool(rows, items, collab, content, provider, quality, recency, prior, alpha, cfg) -> SimpleNamespace:
    """What a pool part does: normalise per user, blend at `alpha` (users without collab: rerank.cold_beta),
    add the signals."""
    n = normalise_pool(rows, items, collab, content, provider, quality, recency, cfg.missing_collab)
    hybrid, final = served_scores(n, alpha, cfg.cold_beta, prior, cfg)
    return SimpleNamespace(rows=rows, items=items, collab=n.collab, content=n.content, hybrid=hybrid,
                           quality=n.quality, recency=n.recency, final=final)


def _rerank(w_quality: float = 0.0, w_recency: float = 0.0, w_provider: float = 0.0,
            missing_collab: str = "user_mean", cold_beta: float = 0.0, cold_prior: str = "popularity") -> RerankConfig:
    return RerankConfig(w_quality=w_quality, w_recency=w_recency, w_provider=w_provider, mmr_lambda=0.0,
                        k_final=10, mmr_pool=10, missing_collab=missing_collab, cold_beta=cold_beta,
                        cold_prior=cold_prior, cold_mmr_lambda=None, cold_alpha=None)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# --------------------------------------------------------------------------- segment_starts


def test_segment_starts_finds_each_run_and_handles_empty():
    np.testing.assert_array_equal(segment_starts(np.array([0, 0, 3, 3, 3, 7])), [0, 2, 5])
    np.testing.assert_array_equal(segment_starts(np.array([5])), [0])
    assert segment_starts(np.array([], dtype=np.int32)).shape == (0,)


# --------------------------------------------------------------------------- minmax_per_user


def test_minmax_normalises_each_segment_separately():
    # segments: [1, 3, 5] | [10, 20] -- the second segment's scale must not leak into the first
    x = _f32(1, 3, 5, 10, 20)
    out = minmax_per_user(x, np.array([0, 3]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0, 1.0])
    assert out.dtype == np.float32


def test_minmax_nan_stays_nan_and_is_ignored_for_min_and_max():
    x = _f32(NAN, 4, 8, 6)
    out = minmax_per_user(x, np.array([0]))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.0, 1.0, 0.5])


def test_minmax_constant_segment_maps_to_half_and_all_nan_segment_stays_nan():
    #            const  | single | all NaN  | const with a NaN
    x = _f32(2, 2, 2, 7, NAN, NAN, 3, NAN, 3)
    out = minmax_per_user(x, np.array([0, 3, 4, 6]))
    np.testing.assert_allclose(out[:4], [0.5, 0.5, 0.5, 0.5])
    assert np.isnan(out[4]) and np.isnan(out[5])
    np.testing.assert_allclose(out[[6, 8]], [0.5, 0.5])
    assert np.isnan(out[7])


def test_minmax_negative_values_and_range():
    x = _f32(-2, -1, 0, 2)
    out = minmax_per_user(x, np.array([0]))
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5, 1.0])
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_minmax_empty_input_gives_empty_float32():
    out = minmax_per_user(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert out.shape == (0,) and out.dtype == np.float32


# --------------------------------------------------------------------------- blend

# pairs: both present | collab missing | content missing | both present | both missing
CONTENT = _f32(0.2, 0.8, NAN, 0.6, NAN)
COLLAB = _f32(0.6, NAN, 0.4, 0.1, NAN)


def test_blend_mixes_both_sources_with_alpha():
    out = blend(CONTENT, COLLAB, 0.25)
    np.testing.assert_allclose(out, [0.25 * 0.2 + 0.75 * 0.6, 0.8, 0.4, 0.25 * 0.6 + 0.75 * 0.1, 0.0], rtol=1e-6)
    assert out.dtype == np.float32


def test_blend_alpha_one_is_content_with_collab_fallback():
    np.testing.assert_allclose(blend(CONTENT, COLLAB, 1.0), [0.2, 0.8, 0.4, 0.6, 0.0], rtol=1e-6)


def test_blend_alpha_zero_is_collab_with_content_fallback():
    np.testing.assert_allclose(blend(CONTENT, COLLAB, 0.0), [0.6, 0.8, 0.4, 0.1, 0.0], rtol=1e-6)


def test_blend_missing_collab_falls_back_to_content_whatever_alpha():
    content = _f32(0.3, 0.9)
    collab = _f32(NAN, NAN)
    for alpha in (0.0, 0.35, 1.0):
        np.testing.assert_allclose(blend(content, collab, alpha), [0.3, 0.9], rtol=1e-6)


def test_blend_both_missing_is_zero_never_nan():
    out = blend(_f32(NAN, NAN), _f32(NAN, NAN), 0.5)
    np.testing.assert_array_equal(out, [0.0, 0.0])


# --------------------------------------------------------------------------- final_scores


def test_final_scores_weights_each_signal():
    cfg = _rerank(w_quality=0.1, w_recency=0.2, w_provider=0.3)
    out = final_scores(_f32(0.5, 1.0), _f32(1.0, 0.0), _f32(0.5, 0.0), _f32(1.0, 0.0), cfg)
    # 0.4 * hybrid + 0.1 * q + 0.2 * r + 0.3 * p
    np.testing.assert_allclose(out, [0.4 * 0.5 + 0.1 + 0.2 * 0.5 + 0.3, 0.4], rtol=1e-6)


def test_final_scores_zero_weights_is_hybrid():
    hybrid = _f32(0.0, 0.3, 1.0)
    ones = np.ones(3, dtype=np.float32)
    np.testing.assert_allclose(final_scores(hybrid, ones, ones, ones, _rerank()), hybrid)


def test_final_scores_default_weights_keep_hybrid_order_when_signals_are_equal():
    cfg = _rerank(w_quality=0.05, w_recency=0.03, w_provider=0.02)
    hybrid = _f32(0.1, 0.9, 0.5)
    same = np.full(3, 0.5, dtype=np.float32)
    out = final_scores(hybrid, same, same, same, cfg)
    np.testing.assert_allclose(out, 0.9 * hybrid + 0.05, rtol=1e-6)


# --------------------------------------------------------------------------- score_pool


def test_score_pool_end_to_end_known_answer():
    rows = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    items = np.array([2, 0, 1, 0, 2], dtype=np.int32)
    collab = _f32(1, 3, 5, NAN, NAN)          # user 1 has no CF factor
    content = _f32(0.1, 0.3, 0.2, 0.9, 0.5)
    provider = _f32(1, 0, 0, 1, 0)
    quality = _f32(0.2, 0.4, 0.6)             # per catalog item
    recency = _f32(0.0, 0.5, 1.0)
    cfg = _rerank(w_quality=0.1, w_recency=0.1, w_provider=0.1)
    prior = _f32(5, 1, 3)                     # catalog-level; beta = 0 ignores it
    sp = score_pool(rows, items, collab, content, provider, quality, recency, prior, 0.5, cfg)

    np.testing.assert_allclose(sp.collab[:3], [0.0, 0.5, 1.0])
    assert np.isnan(sp.collab[3:]).all()
    np.testing.assert_allclose(sp.content, [0.0, 1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(sp.hybrid, [0.0, 0.75, 0.75, 1.0, 0.0])
    np.testing.assert_allclose(sp.quality, [0.6, 0.2, 0.4, 0.2, 0.6])
    np.testing.assert_allclose(sp.recency, [1.0, 0.0, 0.5, 0.0, 1.0])
    # 0.7 * hybrid + 0.1 * (quality + recency + provider)
    np.testing.assert_allclose(sp.final, [0.26, 0.545, 0.615, 0.82, 0.16], rtol=1e-5)
    np.testing.assert_array_equal(sp.rows, rows)
    np.testing.assert_array_equal(sp.items, items)


def test_item_without_cf_factor_gets_the_users_mean_collab():
    # user 0 has a factor; item 3 has none. Normalised collab of items 0..2: 0, 0.5, 1 -> mean 0.5
    rows = np.array([0, 0, 0, 0], dtype=np.int32)
    items = np.array([0, 1, 2, 3], dtype=np.int32)
    collab = _f32(1, 2, 3, NAN)
    content = _f32(0, 0, 0, 1)  # item 3 is the best content match
    z = np.zeros(4, dtype=np.float32)
    mean_rule = score_pool(rows, items, collab, content, z, z, z, z, 0.25, _rerank())
    np.testing.assert_allclose(mean_rule.collab, [0.0, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(mean_rule.hybrid, [0.0, 0.375, 0.75, 0.25 * 1 + 0.75 * 0.5])
    literal = score_pool(rows, items, collab, content, z, z, z, z, 0.25, _rerank(missing_collab="content"))
    np.testing.assert_allclose(literal.hybrid, [0.0, 0.375, 0.75, 1.0])  # the fallback ranks it first


def test_impute_user_mean_leaves_users_without_any_value_missing():
    x = _f32(NAN, NAN, 0.2, NAN, 0.6)
    out = impute_user_mean(x, np.array([0, 2]))
    assert np.isnan(out[:2]).all()
    np.testing.assert_allclose(out[2:], [0.2, 0.4, 0.6])


def test_score_pool_alpha_extremes_reduce_to_one_source():
    rows = np.array([0, 0, 0], dtype=np.int32)
    items = np.array([0, 1, 2], dtype=np.int32)
    collab = _f32(3, 2, 1)
    content = _f32(1, 2, 3)
    z = np.zeros(3, dtype=np.float32)
    only_content = score_pool(rows, items, collab, content, z, z, z, z, 1.0, _rerank())
    only_collab = score_pool(rows, items, collab, content, z, z, z, z, 0.0, _rerank())
    np.testing.assert_allclose(only_content.final, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(only_collab.final, [1.0, 0.5, 0.0])


# --------------------------------------------------------------------------- cold start


def test_prior_signal_is_log1p_popularity_or_the_quality_signal():
    quality = _f32(0.9, 0.1, 0.5)
    popularity = np.array([0, 9, 99], dtype=np.int64)
    np.testing.assert_allclose(prior_signal("popularity", quality, popularity), [0.0, np.log(10), np.log(100)],
                               rtol=1e-6)
    np.testing.assert_array_equal(prior_signal("quality", quality, popularity), quality)
    assert prior_signal("popularity", quality, popularity).dtype == np.float32


def test_cold_blend_weights_content_and_prior_and_counts_missing_content_as_zero():
    content = _f32(0.0, 0.5, 1.0, NAN)
    prior = _f32(1.0, 0.0, 0.5, 0.8)
    np.testing.assert_allclose(cold_blend(content, prior, 0.25), [0.25, 0.375, 0.875, 0.2], rtol=1e-6)
    np.testing.assert_allclose(cold_blend(content, prior, 0.0), [0.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(cold_blend(content, prior, 1.0), prior)


def test_score_pool_cold_user_known_answer_and_the_warm_user_is_untouched():
    # user 0 has collab (warm), user 1 has none (cold); items 0..2 in both pools
    rows = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)
    items = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    collab = _f32(3, 1, 2, NAN, NAN, NAN)
    content = _f32(0.5, 0.9, 0.1, 0.2, 0.6, 1.0)
    z3 = np.zeros(3, dtype=np.float32)
    z6 = np.zeros(6, dtype=np.float32)
    popularity = np.array([100, 0, 10], dtype=np.int64)
    prior = prior_signal("popularity", z3, popularity)
    sp = score_pool(rows, items, collab, content, z6, z3, z3, prior, 0.5, _rerank(cold_beta=0.5))
    # cold user: content -> (0, 0.5, 1); prior log(101), 0, log(11) -> (1, 0, log(11)/log(101))
    prior_n = np.log(11) / np.log(101)
    np.testing.assert_allclose(sp.hybrid[3:], [0.5, 0.25, 0.5 + 0.5 * prior_n], rtol=1e-6)
    # warm user: 0.5 * content (0.5, 1, 0) + 0.5 * collab (1, 0, 0.5) whatever beta and the prior
    np.testing.assert_allclose(sp.hybrid[:3], [0.75, 0.5, 0.25], rtol=1e-6)
    other = score_pool(rows, items, collab, content, z6, z3, z3, prior[::-1].copy(), 0.5, _rerank(cold_beta=1.0))
    np.testing.assert_array_equal(other.hybrid[:3], sp.hybrid[:3])
    assert not np.array_equal(other.hybrid[3:], sp.hybrid[3:])


def test_normalise_pool_marks_exactly_the_users_without_any_collab_as_cold():
    rows = np.array([0, 0, 1, 1, 2], dtype=np.int32)
    items = np.array([0, 1, 0, 1, 1], dtype=np.int32)
    collab = _f32(NAN, 2.0, NAN, NAN, NAN)  # user 0 has one collab value; users 1 and 2 none
    z = np.zeros(5, dtype=np.float32)
    n = normalise_pool(rows, items, collab, _f32(1, 2, 3, 4, 5), z, _f32(0, 0), _f32(0, 0), "user_mean")
    np.testing.assert_array_equal(n.cold, [False, False, True, True, True])
    np.testing.assert_array_equal(n.collab_missing, np.isnan(collab))
    np.testing.assert_allclose(n.collab[:2], [0.5, 0.5])  # user 0's missing value gets its mean


# --------------------------------------------------------------------------- properties


@st.composite
def pools(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    rows = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    n = len(rows)
    component = st.one_of(st.just(float("nan")),
                          st.floats(allow_nan=False, allow_infinity=False, width=32))
    unit = st.floats(0.0, 1.0, width=32)
    collab = np.array(draw(st.lists(component, min_size=n, max_size=n)), dtype=np.float32)
    cold_users = np.array(draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes))))
    collab[cold_users[rows]] = np.nan  # users without any collab: the cold-start rule
    content = np.array(draw(st.lists(component, min_size=n, max_size=n)), dtype=np.float32)
    provider = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)), dtype=np.float32)
    n_items = draw(st.integers(1, 8))
    items = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), dtype=np.int32)
    quality = np.array(draw(st.lists(unit, min_size=n_items, max_size=n_items)), dtype=np.float32)
    recency = np.array(draw(st.lists(unit, min_size=n_items, max_size=n_items)), dtype=np.float32)
    popularity = np.array(draw(st.lists(st.integers(0, 10**6), min_size=n_items, max_size=n_items)), dtype=np.int64)
    prior = prior_signal(draw(st.sampled_from(["popularity", "quality"])), quality, popularity)
    weights = draw(st.lists(st.floats(0.0, 1 / 3), min_size=3, max_size=3))
    alpha = draw(st.floats(0.0, 1.0))
    beta = draw(st.floats(0.0, 1.0))
    return rows, items, collab, content, provider, quality, recency, prior, alpha, _rerank(*weights, cold_beta=beta)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(pools())
def test_score_pool_outputs_are_finite_and_in_unit_interval(pool):
    sp = score_pool(*pool)
    for name in ("hybrid", "final", "quality", "recency"):
        values = getattr(sp, name)
        assert np.isfinite(values).all(), name
        assert values.min() >= 0.0 and values.max() <= 1.0, name
    for name in ("collab", "content"):
        values = getattr(sp, name)
        present = values[~np.isnan(values)]
        assert present.min(initial=0.0) >= 0.0 and present.max(initial=1.0) <= 1.0, name
    # a raw content NaN is never made up into a value; a collab NaN only gets the user's mean,
    # so it stays NaN exactly for users with no collab at all
    assert np.isnan(sp.content[np.isnan(pool[3])]).all()
    rows, collab = pool[0], pool[2]
    user_has_collab = np.bincount(rows, weights=~np.isnan(collab), minlength=rows.max() + 1) > 0
    np.testing.assert_array_equal(np.isnan(sp.collab), np.isnan(collab) & ~user_has_collab[rows])


def _normalised(pool):
    rows, items, collab, content, provider, quality, recency, prior, alpha, cfg = pool
    n = normalise_pool(rows, items, collab, content, provider, quality, recency, cfg.missing_collab)
    return n, prior, alpha, cfg


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(pools())
def test_beta_zero_is_exactly_the_content_only_rule(pool):
    n, prior, alpha, cfg = _normalised(pool)
    hybrid, final = served_scores(n, alpha, 0.0, prior, cfg)
    # the seed's rule: the alpha blend, which for a user without collab is content (0 if missing)
    np.testing.assert_array_equal(hybrid, blend(n.content, n.collab, alpha))
    np.testing.assert_array_equal(hybrid[n.cold], np.nan_to_num(n.content[n.cold]))
    np.testing.assert_array_equal(final, final_scores(hybrid, n.quality, n.recency, n.provider, cfg))


def _minmax_by_loop(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(values))
    for u in np.unique(rows):
        m = rows == u
        v = values[m].astype(np.float64)
        span = v.max() - v.min()
        out[m] = (v - v.min()) / span if span > 1e-12 else 0.5
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(pools())
def test_beta_one_ranks_cold_users_by_the_per_user_normalised_prior(pool):
    n, prior, alpha, cfg = _normalised(pool)
    hybrid, _ = served_scores(n, alpha, 1.0, prior, cfg)
    expect = _minmax_by_loop(prior[n.items], n.rows)
    np.testing.assert_allclose(hybrid[n.cold], expect[n.cold], rtol=1e-5, atol=1e-6)
    # so within each cold user the order is the prior's order (content plays no part)
    for u in np.unique(n.rows[n.cold]):
        m = n.rows == u
        p, h = prior[n.items[m]], hybrid[m]
        strictly = p[:, None] > p[None, :]
        assert (h[:, None] >= h[None, :])[strictly].all()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=100, deadline=None)
@given(pools(), st.floats(0.0, 1.0))
def test_beta_and_prior_never_change_a_warm_users_scores(pool, beta):
    n, prior, alpha, cfg = _normalised(pool)
    base, _ = served_scores(n, alpha, 0.0, prior, cfg)
    moved, _ = served_scores(n, alpha, beta, prior[::-1].copy() + 1.0, cfg)
    np.testing.assert_array_equal(moved[~n.cold], base[~n.cold])


def test_without_an_alpha_every_user_gets_the_content_prior_rule_whatever_collab_they_have():
    """A cold part (recopt.methods) scores folded-in users by the content/prior rule, ignoring their collab."""
    rows = np.array([0, 0, 0, 1, 1], np.int32)
    items = np.array([0, 1, 2, 3, 4], np.int32)
    collab = _f32(3.0, 1.0, 2.0, NAN, NAN)     # user 0 has collab (a folded-in factor), user 1 none
    content = _f32(0.1, 0.9, 0.5, 0.2, 0.8)
    prior = _f32(0.0, 10.0, 5.0, 1.0, 0.0)
    z = np.zeros(5, np.float32)
    n = normalise_pool(rows, items, collab, content, z, z, z, "user_mean")
    hybrid, _ = served_scores(n, None, 0.25, prior, _rerank())
    want = cold_blend(n.content, minmax_per_user(prior[items], n.starts), 0.25)
    np.testing.assert_allclose(hybrid, want, rtol=1e-6)
    with_alpha, _ = served_scores(n, 0.5, 0.25, prior, _rerank())
    assert not np.allclose(with_alpha[:3], want[:3]) and np.allclose(with_alpha[3:], want[3:])


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.4321, 1.0, 0.123456789])
@pytest.mark.parametrize("weights", [(0.05, 0.03, 0.02), (0.0, 0.0, 0.0), (0.11, 0.07, 0.013)])
def test_the_compiled_blend_and_final_scores_give_the_bits_of_the_numpy_float32_expressions(alpha, weights):
    """Oracle: the float32 numpy expressions the compiled loops replace (one rounding per operation)."""
    rng = np.random.default_rng(7)
    n = 20_000
    content, collab = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    content[rng.random(n) < 0.2], collab[rng.random(n) < 0.2] = np.nan, np.nan
    q, r, p = (rng.random(n).astype(np.float32) for _ in range(3))
    cfg = dataclasses.replace(_rerank(), w_quality=weights[0], w_recency=weights[1], w_provider=weights[2])
    has_c, has_f = ~np.isnan(content), ~np.isnan(collab)
    mixed = alpha * np.nan_to_num(content) + (1.0 - alpha) * np.nan_to_num(collab)
    want = np.where(has_c & has_f, mixed, np.where(has_f, collab, np.where(has_c, content, 0.0))).astype(np.float32)
    hybrid = blend(content, collab, alpha)
    np.testing.assert_array_equal(hybrid.view(np.int32), want.view(np.int32))
    w = 1.0 - sum(weights)
    want_final = np.clip(w * hybrid + weights[0] * q + weights[1] * r + weights[2] * p, 0.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(final_scores(hybrid, q, r, p, cfg).view(np.int32), want_final.view(np.int32))
