"""Ranking and beyond-accuracy metrics over padded top-K arrays, vectorised over users.

Every list metric reads ``hits`` (bool, shape (n_users, L)) built by :func:`mark_hits`
from ``ranked`` (int32, shape (n_users, L), each row a user's catalog indices in rank
order, padded at the end with -1). Rows are assumed duplicate-free (the re-ranker
guarantees it). Conventions shared by all metrics:

* ``k`` must be an integer >= 1. A cutoff beyond the list length L is the list
  truncated at L: ranks past L hold nothing and never hit, but denominators that
  involve ``k`` (precision's k, AP's and NDCG's min(k, |relevant|)) keep using ``k``.
* A user with 0 relevant items or an all-padding row scores 0.0, never NaN; 0 users
  give empty arrays (and 0.0 for the catalog-level coverage and novelty).
* Per-user metrics return float64 arrays of shape (n_users,); CSV labels look like
  ``recall@10``, MLflow keys like ``recall_at_10`` (see :func:`mlflow_key`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from typing import Any

PADDING = -1
# Bounds the (users x d) embedding sums in diversity_at_k; 64 MiB stays far below RAM at 200k users.
_CHUNK_BYTES = 64 * 2**20

FloatArray = NDArray[np.float64]


def _check_k(k: int) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer >= 1, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    return k


def _top(hits: NDArray[np.bool_], k: int) -> NDArray[np.bool_]:
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (n_users, L), got shape {hits.shape}")
    return hits[:, : _check_k(k)]


def _relevant_counts(n_relevant: NDArray[np.int64], n_users: int) -> NDArray[np.int64]:
    n_relevant = np.asarray(n_relevant)
    if n_relevant.shape != (n_users,):
        raise ValueError(f"n_relevant must have shape ({n_users},), got {n_relevant.shape}")
    if n_users and n_relevant.min() < 0:
        raise ValueError("n_relevant must be >= 0 for every user")
    return n_relevant.astype(np.int64, copy=False)


def _safe_divide(num: NDArray, den: NDArray) -> FloatArray:
    """num / den, 0.0 where den == 0 (the users with nothing relevant)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    return np.divide(num, den, out=out, where=den > 0)


def _top_items(ranked: NDArray[np.int32], n_items: int, k: int | None) -> NDArray[np.int32]:
    """ranked truncated at k (whole list if None), its ids checked against the catalog."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (n_users, L), got shape {ranked.shape}")
    top = ranked if k is None else ranked[:, : _check_k(k)]
    if top.size and (top.min() < PADDING or top.max() >= n_items):
        raise ValueError(f"ranked holds ids outside [0, {n_items}) other than -1 padding")
    return top


def mark_hits(ranked: NDArray[np.int32], relevant: sp.csr_matrix) -> NDArray[np.bool_]:
    """Bool (n_users, L): True where ``ranked[u, r]`` is a relevant item of user u.

    ``relevant`` is (n_users, n_items), any stored nonzero = relevant; -1 padding
    never hits. Pairs are encoded as int64 keys ``u * n_items + i`` and looked up by
    binary search in the sorted keys of the relevant pairs.
    """
    n_users, n_items = relevant.shape
    ranked = _top_items(ranked, n_items, None)
    if ranked.shape[0] != n_users:
        raise ValueError(f"ranked must have shape ({n_users}, L), got {ranked.shape}")
    rows, cols = relevant.nonzero()
    keys = np.sort(rows.astype(np.int64) * n_items + cols)
    if keys.size == 0:
        return np.zeros(ranked.shape, dtype=bool)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + ranked
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return (keys[pos] == query) & (ranked != PADDING)


def recall_at_k(hits: NDArray[np.bool_], n_relevant: NDArray[np.int64], k: int) -> FloatArray:
    """recall@k: hits in the top k / |relevant|, per user in [0, 1]."""
    top = _top(hits, k)
    return _safe_divide(top.sum(axis=1), _relevant_counts(n_relevant, top.shape[0]))


def precision_at_k(hits: NDArray[np.bool_], k: int) -> FloatArray:
    """precision@k: hits in the top k / k, per user in [0, 1] (a short list still divides by k)."""
    return _top(hits, k).sum(axis=1) / float(k)


def average_precision_at_k(
    hits: NDArray[np.bool_], n_relevant: NDArray[np.int64], k: int
) -> FloatArray:
    """ap@k (its mean is map@k): sum_{r<=k} P@r * rel_r / min(k, |relevant|), in [0, 1]."""
    top = _top(hits, k)
    ranks = np.arange(1, top.shape[1] + 1, dtype=np.float64)
    precision_at_hit = np.where(top, np.cumsum(top, axis=1) / ranks, 0.0)
    cap = np.minimum(_relevant_counts(n_relevant, top.shape[0]), k)
    return _safe_divide(precision_at_hit.sum(axis=1), cap)


def ndcg_at_k(hits: NDArray[np.bool_], n_relevant: NDArray[np.int64], k: int) -> FloatArray:
    """ndcg@k: binary gain, 1/log2(rank + 1) discount, ideal DCG over min(k, |relevant|).

    In [0, 1]; a list shorter than min(k, |relevant|) cannot reach 1.
    """
    top = _top(hits, k)
    n_ideal = np.minimum(_relevant_counts(n_relevant, top.shape[0]), k)
    longest = max(top.shape[1], int(n_ideal.max(initial=0)))
    discount = 1.0 / np.log2(np.arange(2, longest + 2, dtype=np.float64))
    dcg = (top * discount[: top.shape[1]]).sum(axis=1)  # per row, not BLAS: a user's value never
    # depends on which other users share the call
    ideal = np.concatenate(([0.0], np.cumsum(discount)))[n_ideal]
    return _safe_divide(dcg, ideal)


def reciprocal_rank(hits: NDArray[np.bool_], k: int | None = None) -> FloatArray:
    """mrr@k per user: 1 / rank of the first hit in the top k (whole list if k is None), else 0."""
    if k is None:
        k = max(np.shape(hits)[-1], 1) if np.ndim(hits) == 2 else 1
    top = _top(hits, k)
    if top.shape[1] == 0:  # argmax refuses an empty axis
        return np.zeros(top.shape[0], dtype=np.float64)
    return np.where(top.any(axis=1), 1.0 / (top.argmax(axis=1) + 1.0), 0.0)


def hit_rate_at_k(hits: NDArray[np.bool_], k: int) -> FloatArray:
    """hit_rate@k per user: 1.0 if any of the top k is relevant, else 0.0."""
    return _top(hits, k).any(axis=1).astype(np.float64)


def coverage_at_k(ranked: NDArray[np.int32], n_items: int, k: int) -> float:
    """coverage@k: distinct items across all top-k lists / n_items, in [0, 1]; 0.0 for no users."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = _top_items(ranked, n_items, k)
    shown = np.zeros(n_items, dtype=bool)
    shown[top[top != PADDING]] = True
    return float(shown.sum() / n_items)


def novelty_at_k(ranked: NDArray[np.int32], popularity_share: NDArray[np.float64], k: int) -> float:
    """novelty@k in bits: mean of -log2(train popularity share) over every recommended item.

    ``popularity_share`` (n_items,) is each item's share of train interactions. An item
    never seen in train (share 0) counts as rare as the rarest seen item: its share is
    floored at the smallest positive share (= 1/n_train_interactions whenever some item
    was seen once). Averaged over all non-padding (user, item) slots of the top-k lists,
    so long lists weigh more; 0.0 when nothing is recommended.
    """
    share = np.asarray(popularity_share, dtype=np.float64)
    if share.ndim != 1 or not np.all(np.isfinite(share)) or np.any(share < 0):
        raise ValueError("popularity_share must be a 1-D array of finite shares >= 0")
    if not np.any(share > 0):
        raise ValueError("popularity_share has no positive entry: no train interactions")
    top = _top_items(ranked, share.size, k)
    items = top[top != PADDING]
    if items.size == 0:
        return 0.0
    floored = np.maximum(share[items], share[share > 0].min())
    return float(np.mean(-np.log2(floored)))


def diversity_at_k(
    ranked: NDArray[np.int32], embeddings: NDArray[np.float32], k: int
) -> FloatArray:
    """diversity@k per user: mean pairwise (1 - cosine) of the top-k item embeddings, in [0, 2].

    ``embeddings`` (n_items, d) has L2-normalised rows, zero rows for items without
    content; pairs involving such an item (or padding) are excluded. A user with fewer
    than 2 content items in the top k gets 0.0. Uses sum_{i<j} e_i.e_j =
    (|sum_i e_i|^2 - sum_i |e_i|^2) / 2, so a chunk of users costs one sparse (users x
    items) @ (items x d) product, O(k d) per user instead of a k x k Gram matrix.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n_items, d), got shape {emb.shape}")
    top = _top_items(ranked, emb.shape[0], k)
    sq_norm = np.einsum("ij,ij->i", emb, emb, dtype=np.float64)
    keep = top != PADDING
    keep[keep] = sq_norm[top[keep]] > 0
    out = np.zeros(top.shape[0], dtype=np.float64)
    chunk = max(1, _CHUNK_BYTES // (max(emb.shape[1], 1) * emb.itemsize))
    for start in range(0, top.shape[0], chunk):  # chunks of users bound memory
        block, mask = top[start : start + chunk], keep[start : start + chunk]
        count = mask.sum(axis=1)
        indptr = np.concatenate(([0], np.cumsum(count)))
        members = sp.csr_matrix(
            (np.ones(indptr[-1], emb.dtype), block[mask], indptr), shape=(len(block), len(emb))
        )
        total = members @ emb
        norms = np.where(mask, sq_norm[block], 0.0).sum(axis=1)
        pair_dot = (np.einsum("ij,ij->i", total, total, dtype=np.float64) - norms) / 2
        n_pairs = count * (count - 1) / 2
        out[start : start + chunk] = np.clip(_safe_divide(n_pairs - pair_dot, n_pairs), 0, 2)
    return out


def summarise(per_user: dict[str, NDArray]) -> dict[str, float]:
    """Mean of each per-user metric over the users given; 0.0 for an empty array."""
    return {name: float(np.mean(v)) if np.size(v) else 0.0 for name, v in per_user.items()}


def mlflow_key(name: str) -> str:
    """MLflow metric key for a label: ``recall@10`` -> ``recall_at_10`` (MLflow rejects '@')."""
    return name.replace("@", "_at_")


# --------------------------------------------------------------------------- the registry
# Every metric recopt computes, in the order tables show them, with the views that show it.
# Adding a metric is one entry here (and its function above).
CONSOLE, TUNING, HEADLINE, INTERVAL, VIEW, SLICE, PLOT = ("console", "tuning", "headline", "interval", "mlflow_view",
                                                          "slice", "plot")  # PLOT: the panels of alpha_curve.png
HEADLINE_K = 10  # the cutoff of every headline figure (selection and gates use recall@10)


@dataclass(frozen=True)
class ListInputs:
    """What the per-user metrics of a block of ranked lists read."""

    ranked: NDArray[np.int32]       # (n_users, L) catalog indices, -1 padded
    hits: NDArray[np.bool_]         # (n_users, L) from mark_hits
    n_relevant: NDArray[np.int64]   # (n_users,)
    embeddings: NDArray[np.float32]  # catalog embeddings (diversity)
    item_has_cf: NDArray[np.bool_]  # catalog CF mask (cold-item share)


@dataclass(frozen=True)
class Metric:
    """One metric: `name` is a family measured at each cutoff of evaluate.ks (``level="ranking"``) or at
    the headline cutoff (``"list"``: per user; ``"catalog"``: one value over every list), or a property
    of the candidate pool (``"pool"``: read from the candidates store, no function)."""

    name: str
    level: str
    compute: Callable[..., Any] | None
    views: tuple[str, ...]

    def cutoffs(self, ks: list[int] | tuple[int, ...], view: str | None = None) -> list[int | None]:
        """The cutoffs it is shown at: every one of `ks` for a ranking metric (the headline one only in
        views other than the tuning table), the headline cutoff for list and catalog metrics, none
        (``[None]``) for pool ones."""
        if self.level == "pool":
            return [None]
        return list(sorted(ks)) if self.level == "ranking" and view in (None, TUNING) else [HEADLINE_K]

    def label(self, k: int | None) -> str:
        """Its column label at cutoff `k`: ``recall@10``; a pool metric's name."""
        return self.name if k is None else f"{self.name}@{k}"


def _cold_item_share(inp: ListInputs, k: int) -> FloatArray:
    """Share of each top-k list that has no CF factor (0.0 for an empty list)."""
    top = inp.ranked[:, :k]
    n_top = (top >= 0).sum(axis=1)
    cold = ((top >= 0) & ~inp.item_has_cf[np.maximum(top, 0)]).sum(axis=1)
    return np.where(n_top > 0, cold / np.maximum(n_top, 1), 0.0)


_ALL = (CONSOLE, TUNING, HEADLINE, INTERVAL, VIEW, SLICE)
REGISTRY: tuple[Metric, ...] = (
    Metric("recall", "ranking", lambda i, k: recall_at_k(i.hits, i.n_relevant, k), (*_ALL, PLOT)),
    Metric("map", "ranking", lambda i, k: average_precision_at_k(i.hits, i.n_relevant, k), _ALL),
    Metric("ndcg", "ranking", lambda i, k: ndcg_at_k(i.hits, i.n_relevant, k), (*_ALL, PLOT)),
    Metric("precision", "ranking", lambda i, k: precision_at_k(i.hits, k), ()),
    Metric("mrr", "ranking", lambda i, k: reciprocal_rank(i.hits, k), (TUNING,)),
    Metric("hit_rate", "ranking", lambda i, k: hit_rate_at_k(i.hits, k), (TUNING,)),
    Metric("coverage", "catalog", lambda top, share: coverage_at_k(top, len(share), HEADLINE_K),
           (CONSOLE, TUNING, HEADLINE, VIEW, PLOT)),
    Metric("novelty", "catalog", lambda top, share: novelty_at_k(top, share, HEADLINE_K),
           (CONSOLE, TUNING, HEADLINE, VIEW)),
    Metric("diversity", "list", lambda i, k: diversity_at_k(i.ranked, i.embeddings, k), (TUNING,)),
    Metric("pool_recall", "pool", None, (TUNING, VIEW)),
    Metric("cold_item_share", "list", _cold_item_share, (TUNING,)),
)


def per_user_metrics(inp: ListInputs, ks: list[int] | tuple[int, ...]) -> dict[str, FloatArray]:
    """Every per-user metric of the registry (ranking metrics at each cutoff), keyed by label."""
    out: dict[str, FloatArray] = {}
    for m in REGISTRY:
        if m.level in ("ranking", "list"):
            for k in m.cutoffs(ks):
                out[m.label(k)] = m.compute(inp, k)  # type: ignore[misc]
    return out


def catalog_metrics(top: NDArray[np.int32], popularity_share: NDArray[np.float64]) -> dict[str, float]:
    """Every catalog-level metric of the registry over a set of top lists (0.0 for no lists)."""
    return {m.label(HEADLINE_K): (m.compute(top, popularity_share) if len(top) else 0.0)  # type: ignore[misc]
            for m in REGISTRY if m.level == "catalog"}


def shown_in(view: str, ks: list[int] | tuple[int, ...] = (HEADLINE_K,)) -> list[str]:
    """The labels a view shows, in registry order."""
    return [m.label(k) for m in REGISTRY if view in m.views for k in m.cutoffs(ks, view)]
