"""From scored pools to ranked top-K lists: plain ranking or MMR diversification.

Pools arrive flat and grouped by user; recopt.kernels.rank_segments ranks each user's segment.

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

from recopt.kernels import rank_segments
from recopt.keys import segment_lengths, segment_starts


@dataclass(frozen=True)
class Ranked:
    """Top-K lists of a batch: users (n,), items/scores (n, K) padded with -1 / 0."""

    users: NDArray[np.int32]
    items: NDArray[np.int32]
    scores: NDArray[np.float32]
    positions: NDArray[np.int64]   # index of each listed item in the flat pool arrays, -1 padding


def rank_pools(rows: NDArray, items: NDArray[np.int32], final: NDArray[np.float32], vectors: NDArray[np.float32],
               k: int, lam: float, mmr_pool: int) -> Ranked:
    """Rank each user's pool (flat, grouped by user): top `mmr_pool` by final score, then MMR down to `k`.

    One compiled pass per user (recopt.kernels.rank_segments: a partial selection instead of a
    padded users x pool matrix, and lazily evaluated -- still exact -- MMR). Scores in the returned
    lists are the final scores (in [0, 1]); the order is MMR's.
    """
    starts = segment_starts(rows)
    lengths = segment_lengths(starts, len(rows))
    pos = rank_segments(final, items, starts, lengths, vectors, float(lam), int(mmr_pool), int(k))
    ok = pos >= 0
    safe = np.maximum(pos, 0)
    return Ranked(users=np.asarray(rows)[starts].astype(np.int32), items=np.where(ok, items[safe], -1).astype(np.int32),
                  scores=np.where(ok, final[safe], 0.0).astype(np.float32), positions=pos)
