"""From scored pools to ranked top-K lists: plain ranking or MMR diversification.

MMR greedily picks `k_final` items maximising
    (1 - lambda) * final - lambda * max cosine to the items already picked,
over the user's top `mmr_pool` items by final score (exact MMR over a
1,200-item pool costs ~50 * 1200 * dim multiply-adds per user; the items
below the shortlist almost never win a pick). Similarities use the
`mmr.npy` vectors from embed-load: the embeddings projected on their leading
`embed_load.mmr_dim` principal directions, whose dot products are the best low-rank
approximation of the embeddings' cosines (on ml-latest-small, 64 dimensions and a
200-item shortlist keep 95% of exact MMR's top-10 items). With lambda = 0 MMR is plain
ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recopt.kernels import mmr_select
from recopt.keys import segment_lengths, segment_starts


@dataclass(frozen=True)
class Ranked:
    """Top-K lists of a batch: users (n,), items/scores (n, K) padded with -1 / 0."""

    users: NDArray[np.int32]
    items: NDArray[np.int32]
    scores: NDArray[np.float32]
    positions: NDArray[np.int64]   # index of each listed item in the flat pool arrays, -1 padding


def pad_by_user(rows: NDArray, values: NDArray, fill: float | int) -> tuple[NDArray, NDArray, NDArray]:
    """Grouped flat values -> (users, padded matrix (n_users, max_len), flat positions matrix)."""
    starts = segment_starts(rows)
    lengths = segment_lengths(starts, len(rows))
    width = int(lengths.max()) if len(lengths) else 0
    local = np.repeat(np.arange(len(starts)), lengths)
    col = np.arange(len(rows)) - np.repeat(starts, lengths)
    mat = np.full((len(starts), width), fill, dtype=values.dtype)
    mat[local, col] = values
    pos = np.full((len(starts), width), -1, dtype=np.int64)
    pos[local, col] = np.arange(len(rows))
    return rows[starts], mat, pos


def top_k(users: NDArray, score_mat: NDArray[np.float32], pos: NDArray[np.int64], items: NDArray[np.int32],
          k: int) -> Ranked:
    """Plain ranking: the k best by score per row (ties: earlier pool position first)."""
    k_eff = min(k, score_mat.shape[1])
    pos_key = np.where(pos < 0, np.iinfo(np.int64).max, pos)
    if score_mat.shape[1] > k_eff:
        part = np.argpartition(-score_mat, k_eff - 1, axis=1)[:, :k_eff]
        # argpartition picks arbitrarily among items tied with the k-th score; rows where
        # such a tie crosses the cut (rare with real scores) are re-done with a full sort
        # so that the earlier pool positions win
        kept = np.take_along_axis(score_mat, part, axis=1)
        kth = kept.min(axis=1, keepdims=True)
        redo = np.flatnonzero((score_mat == kth).sum(axis=1) > (kept == kth).sum(axis=1))
        if len(redo):
            part[redo] = np.lexsort((pos_key[redo], -score_mat[redo]), axis=1)[:, :k_eff]
    else:
        part = np.broadcast_to(np.arange(k_eff), score_mat.shape).copy()
    s = np.take_along_axis(score_mat, part, axis=1)
    p = np.take_along_axis(pos, part, axis=1)
    order = np.lexsort((np.take_along_axis(pos_key, part, axis=1), -s), axis=1)
    s, p = np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)
    return _finish(users, s, p, items, k)


def _finish(users: NDArray, s: NDArray[np.float32], p: NDArray[np.int64], items: NDArray[np.int32],
            k: int) -> Ranked:
    valid = p >= 0
    out_items = np.where(valid, items[np.maximum(p, 0)], -1).astype(np.int32)
    out_scores = np.where(valid, s, 0.0).astype(np.float32)
    if out_items.shape[1] < k:
        extra = k - out_items.shape[1]
        out_items = np.pad(out_items, ((0, 0), (0, extra)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, extra)))
        p = np.pad(p, ((0, 0), (0, extra)), constant_values=-1)
    return Ranked(users=users.astype(np.int32), items=out_items, scores=out_scores, positions=p)


def rank_pools(rows: NDArray, items: NDArray[np.int32], final: NDArray[np.float32], vectors: NDArray[np.float32],
               k: int, lam: float, mmr_pool: int) -> Ranked:
    """Rank each user's pool: top `mmr_pool` by final score, then MMR down to `k`.

    Scores in the returned lists are the final scores (in [0, 1]); the order is MMR's.
    """
    users, score_mat, pos = pad_by_user(rows, final, -np.inf)
    short = top_k(users, score_mat, pos, items, mmr_pool)
    if lam == 0.0:
        return top_k(users, np.where(short.positions >= 0, short.scores, -np.inf).astype(np.float32),
                     short.positions, items, k)
    picked, _ = mmr_select(np.where(short.positions >= 0, short.scores, -np.inf).astype(np.float32),
                           short.items, vectors, lam, k)
    ok = picked >= 0
    p = np.where(ok, np.take_along_axis(short.positions, np.maximum(picked, 0), axis=1), -1)
    s = np.where(ok, np.take_along_axis(short.scores, np.maximum(picked, 0), axis=1), 0.0)
    return _finish(users, s.astype(np.float32), p, items, k)
