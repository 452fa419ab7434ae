"""Compiled inner loops (numba) for the two places numpy cannot fuse well:
dot products of gathered (row, col) pairs, and greedy MMR selection.

Both are serial and release the GIL: parallelism comes from the batch executor
(recopt.engine), which runs user batches on several threads or Ray workers, so
a batch computes the same bytes whatever runs it. Floating-point flags: the dot
product may be reassociated (vectorised), but no kernel assumes the absence of
NaN or infinity -- MMR starts from -inf and padding scores are -inf.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray


_FAST_SUM = {"reassoc", "contract", "arcp", "nsz"}  # lets the dot product vectorise; no nnan/ninf


@njit(nogil=True, fastmath=_FAST_SUM, cache=True)
def pair_dots(a: NDArray[np.float32], b: NDArray[np.float32],
              rows: NDArray[np.int32], cols: NDArray[np.int32]) -> NDArray[np.float32]:
    """out[p] = a[rows[p]] . b[cols[p]] without materialising the gathered rows."""
    out = np.empty(len(rows), dtype=np.float32)
    d = a.shape[1]
    for p in range(len(rows)):
        x = a[rows[p]]
        y = b[cols[p]]
        s = np.float32(0.0)
        for j in range(d):
            s += x[j] * y[j]
        out[p] = s
    return out


@njit(nogil=True, fastmath=_FAST_SUM, cache=True)
def _dot(x: NDArray[np.float32], y: NDArray[np.float32]) -> np.float32:
    s = np.float32(0.0)
    for t in range(len(x)):
        s += x[t] * y[t]
    return s


@njit(nogil=True, cache=True)
def mmr_select(scores: NDArray[np.float32], items: NDArray[np.int32], vectors: NDArray[np.float32],
               lam: float, k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Greedy MMR per row.

    scores, items: (n_users, L), rows sorted by score descending, padded with
    item -1 / score -inf. vectors: (n_items, d) whose dot products are the item
    similarities (zero rows have no content and so are similar to nothing). Picks up to k items per row
    maximising (1 - lam) * score - lam * max cosine to the items already
    picked; ties go to the earlier (higher-scored) item. Returns the picked
    positions into each row (-1 padded) and their MMR objective values.
    """
    n, L = scores.shape
    picked = np.full((n, k), -1, dtype=np.int32)
    objective = np.zeros((n, k), dtype=np.float32)
    for u in range(n):
        max_sim = np.full(L, -np.inf, dtype=np.float32)
        taken = np.zeros(L, dtype=np.bool_)
        n_valid = 0
        for j in range(L):
            if items[u, j] >= 0:
                n_valid += 1
        for step in range(min(k, n_valid)):
            best, best_val = -1, -np.inf
            for j in range(n_valid):
                if taken[j]:
                    continue
                penalty = max_sim[j] if step > 0 else np.float32(0.0)
                val = (1.0 - lam) * scores[u, j] - lam * penalty
                if val > best_val:
                    best, best_val = j, val
            if best < 0:  # only non-finite scores left: stop (check_lists then rejects the short list)
                break
            taken[best] = True
            picked[u, step] = best
            objective[u, step] = best_val
            v = vectors[items[u, best]]
            for j in range(n_valid):
                if not taken[j]:
                    s = _dot(v, vectors[items[u, j]])
                    if s > max_sim[j]:
                        max_sim[j] = s
    return picked, objective
