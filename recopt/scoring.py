"""Per-user normalisation and blending of the pool's component scores.

Pools arrive as flat arrays grouped by user (each user's rows contiguous).
Like ranx's min-max fusion: each component is min-max normalised per user over
that user's pool (missing values stay missing; a component that is constant over
the pool maps to 0.5), then blended:

    hybrid = alpha * content + (1 - alpha) * collab
             (collab missing -> content; content missing -> collab; both -> 0)
    final  = (1 - w_q - w_r - w_p) * hybrid + w_q * quality + w_r * recency + w_p * provider

A user without any CF factor (cold start) is scored by the cold-start rule instead
of the blend:

    cold   = (1 - beta) * content + beta * prior
             (prior: log(1 + train count) for `popularity`, the quality signal for
             `quality`, min-max normalised per user over the pool; missing content -> 0)

beta = 0 is the seed's content-only rule; beta and the prior are chosen on validation.

Every output is in [0, 1] and finite.

`rerank.missing_collab` decides what an item without a CF factor gets as collab for a user
who has one: `user_mean` (default) imputes that user's mean normalised collab over the pool
(no evidence either way), so alpha keeps its meaning for those items; `content` is the
literal fallback hybrid = content, which hands every such item a (1 - alpha) * (content -
collab) head start (on ml-latest-small it filled ~60% of top-10 lists with them). A user
without any CF factor is scored by content alone under both rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recopt.config import RerankConfig
from recopt.kernels import mix, weigh
from recopt.keys import segment_lengths, segment_starts


def minmax_per_user(x: NDArray[np.float32], starts: NDArray[np.int64]) -> NDArray[np.float32]:
    """Min-max normalise `x` within each segment, ignoring NaN (which stays NaN)."""
    if not len(x):
        return x.astype(np.float32)
    lengths = segment_lengths(starts, len(x))
    with np.errstate(invalid="ignore"):
        lo = np.repeat(np.fmin.reduceat(x, starts), lengths)
        hi = np.repeat(np.fmax.reduceat(x, starts), lengths)
        span = hi - lo
        out = np.where(span > 1e-12, (x - lo) / np.where(span > 1e-12, span, 1.0), 0.5)
    out = np.where(np.isnan(x), np.nan, out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def blend(content: NDArray[np.float32], collab: NDArray[np.float32], alpha: float) -> NDArray[np.float32]:
    """alpha * content + (1 - alpha) * collab on normalised inputs, with the cold-start fallbacks
    (float32; a compiled loop, recopt.kernels.mix)."""
    return mix(np.asarray(content, np.float32), np.asarray(collab, np.float32), np.float32(alpha),
               np.float32(1.0 - alpha))


def impute_user_mean(x: NDArray[np.float32], starts: NDArray[np.int64]) -> NDArray[np.float32]:
    """Missing values of a user who has some values -> that user's mean over the pool.

    A user with no value at all (a new user without a CF factor) keeps them missing.
    """
    if not len(x):
        return x
    lengths = segment_lengths(starts, len(x))
    known = ~np.isnan(x)
    count = np.add.reduceat(known.astype(np.int64), starts)
    mean = np.add.reduceat(np.where(known, x, 0.0), starts) / np.maximum(count, 1)
    fill = np.repeat(np.where(count > 0, mean, np.nan), lengths)
    return np.where(known, x, fill).astype(np.float32)


def prior_signal(name: str, quality: NDArray[np.float32], popularity: NDArray[np.int64]) -> NDArray[np.float32]:
    """The catalog-level cold-start prior `name` (popularity | quality), before per-user normalisation."""
    if name == "popularity":
        return np.log1p(popularity.astype(np.float64)).astype(np.float32)
    return quality.astype(np.float32)


def cold_blend(content: NDArray[np.float32], prior: NDArray[np.float32], beta: float) -> NDArray[np.float32]:
    """(1 - beta) * content + beta * prior on normalised inputs; missing content counts 0."""
    return ((1.0 - beta) * np.nan_to_num(content) + beta * np.nan_to_num(prior)).astype(np.float32)


def final_scores(hybrid: NDArray[np.float32], quality: NDArray[np.float32], recency: NDArray[np.float32],
                 provider: NDArray[np.float32], cfg: RerankConfig) -> NDArray[np.float32]:
    """Add the secondary signals to the hybrid score (all inputs in [0, 1]; float32, a compiled loop,
    recopt.kernels.weigh)."""
    w = 1.0 - cfg.w_quality - cfg.w_recency - cfg.w_provider
    return weigh(*(np.asarray(x, np.float32) for x in (hybrid, quality, recency, provider)), np.float32(w),
                 np.float32(cfg.w_quality), np.float32(cfg.w_recency), np.float32(cfg.w_provider))


@dataclass(frozen=True)
class Normalised:
    """A pool's alpha-independent scores, flat and grouped by user (one entry per candidate)."""

    rows: NDArray[np.int32]
    items: NDArray[np.int32]
    starts: NDArray[np.int64]
    collab: NDArray[np.float32]     # normalised, imputed per rerank.missing_collab; NaN = missing
    collab_missing: NDArray[np.bool_]  # no collab before imputation (user or item without a factor)
    content: NDArray[np.float32]    # normalised, NaN = missing
    quality: NDArray[np.float32]
    recency: NDArray[np.float32]
    provider: NDArray[np.float32]
    cold: NDArray[np.bool_]         # the candidate's user has no collab at all (cold start)


def normalise_pool(rows: NDArray[np.int32], items: NDArray[np.int32], collab: NDArray[np.float32],
                   content: NDArray[np.float32], provider: NDArray[np.float32], item_quality: NDArray[np.float32],
                   item_recency: NDArray[np.float32], missing_collab: str) -> Normalised:
    """Per-user min-max of both components (and the imputation), done once for every alpha."""
    starts = segment_starts(rows)
    content_n = minmax_per_user(content, starts)
    collab_n = minmax_per_user(collab, starts)
    lengths = segment_lengths(starts, len(rows))
    has_collab = np.add.reduceat((~np.isnan(collab)).astype(np.int64), starts) > 0 if len(rows) else np.zeros(0, bool)
    if missing_collab == "user_mean":
        collab_n = impute_user_mean(collab_n, starts)
    return Normalised(rows=rows, items=items, starts=starts, collab=collab_n, collab_missing=np.isnan(collab),
                      content=content_n,
                      quality=item_quality[items], recency=item_recency[items], provider=provider,
                      cold=np.repeat(~has_collab, lengths))


def served_scores(n: Normalised, alpha: float | None, beta: float, prior: NDArray[np.float32],
                  cfg: RerankConfig) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(hybrid, final) of every candidate: the alpha blend, or the cold-start rule (`beta`, `prior`)
    for users without collab -- and for every user when `alpha` is None (the content/prior rule
    applied whatever collab a user has). `prior` is the catalog-level prior (:func:`prior_signal`)."""
    cold = n.cold if alpha is not None else np.ones(len(n.rows), dtype=bool)
    hybrid = blend(n.content, n.collab, alpha) if alpha is not None else np.zeros(len(n.rows), np.float32)
    if cold.any():
        prior_n = minmax_per_user(prior[n.items], n.starts)
        hybrid = np.where(cold, cold_blend(n.content, prior_n, beta), hybrid).astype(np.float32)
    return hybrid, final_scores(hybrid, n.quality, n.recency, n.provider, cfg)
