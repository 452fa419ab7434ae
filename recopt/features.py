"""Item- and user-level secondary signals, all in [0, 1], from train data only.

* quality: Bayesian-average train rating, (prior * global_mean + sum) / (prior + n),
  mapped from [0.5, 5] to [0, 1]; a movie with no train rating gets the global mean.
* recency: release year scaled to [0, 1] over the catalog's year range; unknown
  year -> 0 (treated as oldest: no boost without evidence).
* providers: bitsets of the providers each movie is on and each user subscribes to;
  `provider_match` is 1 when they share one, else 0 (0 everywhere without data).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt.keys import positions


def quality(train: pl.DataFrame, item_ids: NDArray[np.int32], prior: float) -> NDArray[np.float32]:
    """Bayesian-average rating of each catalog item, in [0, 1]. Empty train -> 0.5 everywhere."""
    if train.height == 0:
        return np.full(len(item_ids), 0.5, dtype=np.float32)
    idx = positions(item_ids, train["movieId"].to_numpy())
    ratings = train["rating"].to_numpy().astype(np.float64)
    n = np.bincount(idx, minlength=len(item_ids))
    total = np.bincount(idx, weights=ratings, minlength=len(item_ids))
    mean = ratings.mean()
    bayes = (prior * mean + total) / np.maximum(prior + n, 1e-12)
    return np.clip((bayes - 0.5) / 4.5, 0.0, 1.0).astype(np.float32)


def recency(years: NDArray) -> NDArray[np.float32]:
    """Release year scaled to [0, 1] over the known years; null/NaN year -> 0."""
    y = np.asarray(years, dtype=np.float64)
    known = np.isfinite(y)
    if not known.any():
        return np.zeros(len(y), dtype=np.float32)
    lo, hi = y[known].min(), y[known].max()
    out = np.where(known, (y - lo) / max(hi - lo, 1.0), 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def popularity(train: pl.DataFrame, item_ids: NDArray[np.int32]) -> NDArray[np.int64]:
    """Train interaction count of each catalog item."""
    idx = positions(item_ids, train["movieId"].to_numpy())
    return np.bincount(idx, minlength=len(item_ids)).astype(np.int64)


def provider_bits(table: pl.DataFrame, key: str, ids: NDArray[np.int32],
                  names: list[str]) -> NDArray[np.uint64]:
    """(len(ids), words) bitsets: bit p set when row `key` is on provider names[p]."""
    words = max(1, (len(names) + 63) // 64)
    bits = np.zeros((len(ids), words), dtype=np.uint64)
    if table.height == 0 or not names:
        return bits
    known = table.filter(pl.col(key).is_in(pl.Series(ids).implode()))
    rows = np.searchsorted(ids, known[key].to_numpy())
    p = np.searchsorted(np.array(names), known["provider"].to_numpy().astype(str))
    np.bitwise_or.at(bits, (rows, p // 64), np.left_shift(np.uint64(1), (p % 64).astype(np.uint64)))
    return bits


def provider_match(user_bits: NDArray[np.uint64], item_bits: NDArray[np.uint64],
                   rows: NDArray, items: NDArray) -> NDArray[np.bool_]:
    """For pairs (rows[p], items[p]): do the user and the item share a provider?"""
    return (user_bits[rows] & item_bits[items]).any(axis=1)


def any_provider(item_bits: NDArray[np.uint64], wanted: list[str], names: list[str]) -> NDArray[np.bool_]:
    """Items on at least one of `wanted` providers (OR)."""
    mask = np.zeros(item_bits.shape[1], dtype=np.uint64)
    for name in wanted:
        if name in names:
            p = names.index(name)
            mask[p // 64] |= np.uint64(1) << np.uint64(p % 64)
    return (item_bits & mask).any(axis=1)
