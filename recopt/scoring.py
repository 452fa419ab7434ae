"""Per-user normalisation and blending of the pool's component scores.

Pools arrive as flat arrays grouped by user (each user's rows contiguous).
Like ranx's min-max fusion: each component is min-max normalised per user over
that user's pool (missing values stay missing; a component that is constant over
the pool maps to 0.5), then blended:

    hybrid = alpha * content + (1 - alpha) * collab
             (collab missing -> content; content missing -> collab; both -> 0)
    final  = (1 - w_q - w_r - w_p) * hybrid + w_q * quality + w_r * recency + w_p * provider

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
    """alpha * content + (1 - alpha) * collab on normalised inputs, with the cold-start fallbacks."""
    has_c, has_f = ~np.isnan(content), ~np.isnan(collab)
    mixed = alpha * np.nan_to_num(content) + (1.0 - alpha) * np.nan_to_num(collab)
    out = np.where(has_c & has_f, mixed, np.where(has_f, collab, np.where(has_c, content, 0.0)))
    return out.astype(np.float32)


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


def final_scores(hybrid: NDArray[np.float32], quality: NDArray[np.float32], recency: NDArray[np.float32],
                 provider: NDArray[np.float32], cfg: RerankConfig) -> NDArray[np.float32]:
    """Add the secondary signals to the hybrid score (all inputs in [0, 1])."""
    w = 1.0 - cfg.w_quality - cfg.w_recency - cfg.w_provider
    out = w * hybrid + cfg.w_quality * quality + cfg.w_recency * recency + cfg.w_provider * provider
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ScoredPool:
    """Every score of every (user, candidate) pair, flat and grouped by user."""

    rows: NDArray[np.int32]
    items: NDArray[np.int32]
    collab: NDArray[np.float32]     # normalised, NaN = missing
    content: NDArray[np.float32]    # normalised, NaN = missing
    hybrid: NDArray[np.float32]
    quality: NDArray[np.float32]
    recency: NDArray[np.float32]
    provider: NDArray[np.float32]
    final: NDArray[np.float32]


def score_pool(rows: NDArray[np.int32], items: NDArray[np.int32], collab: NDArray[np.float32],
               content: NDArray[np.float32], provider: NDArray[np.float32], item_quality: NDArray[np.float32],
               item_recency: NDArray[np.float32], alpha: float, cfg: RerankConfig) -> ScoredPool:
    """Normalise per user, blend with `alpha`, add the secondary signals."""
    starts = segment_starts(rows)
    content_n = minmax_per_user(content, starts)
    collab_n = minmax_per_user(collab, starts)
    if cfg.missing_collab == "user_mean":
        collab_n = impute_user_mean(collab_n, starts)
    hybrid = blend(content_n, collab_n, alpha)
    q, r = item_quality[items], item_recency[items]
    return ScoredPool(rows=rows, items=items, collab=collab_n, content=content_n, hybrid=hybrid, quality=q,
                      recency=r, provider=provider, final=final_scores(hybrid, q, r, provider, cfg))
