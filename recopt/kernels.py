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


@njit(nogil=True, cache=True)
def _top_of(acc: NDArray[np.float32], cand: NDArray[np.int64], n_cand: int, k: int,
            out_items: NDArray[np.int32], out_scores: NDArray[np.float32], row: int) -> None:
    """The k best of acc[cand[:n_cand]] into out[row] (score descending, then index ascending)."""
    if n_cand == 0:
        return
    vals = np.empty(n_cand, dtype=np.float32)
    for t in range(n_cand):
        vals[t] = acc[cand[t]]
    take = min(k, n_cand)
    if n_cand > take:
        kth = np.partition(vals, n_cand - take)[n_cand - take]
        keep = 0
        for t in range(n_cand):
            if vals[t] >= kth:
                cand[keep] = cand[t]
                keep += 1
        n_cand = keep
    sel_vals = np.empty(n_cand, dtype=np.float32)
    sel_items = np.empty(n_cand, dtype=np.int64)
    for t in range(n_cand):
        sel_items[t] = cand[t]
        sel_vals[t] = acc[cand[t]]
    order = np.argsort(sel_items, kind="mergesort")  # index ascending, then a stable sort by score
    sel_items, sel_vals = sel_items[order], sel_vals[order]
    order = np.argsort(-sel_vals, kind="mergesort")
    for t in range(min(take, n_cand)):
        out_items[row, t] = sel_items[order[t]]
        out_scores[row, t] = sel_vals[order[t]]


@njit(nogil=True, fastmath=_FAST_SUM, cache=True)
def dense_topk(indptr: NDArray[np.int64], indices: NDArray[np.int32], weights: NDArray[np.float32],
               k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Top-k of x_u W per CSR row u (x binary over W's rows), the row's own columns excluded.

    EASE's scoring: each row's score vector is the sum of W's rows for the row's items.
    Returns (columns (n, k), scores (n, k)), -1 / -inf padded.
    """
    n, width = len(indptr) - 1, weights.shape[1]
    items = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    acc = np.empty(width, dtype=np.float32)
    cand = np.empty(width, dtype=np.int64)
    for u in range(n):
        acc[:] = 0.0
        for p in range(indptr[u], indptr[u + 1]):
            acc += weights[indices[p]]
        for p in range(indptr[u], indptr[u + 1]):
            acc[indices[p]] = -np.inf
        n_cand = 0
        for j in range(width):
            if acc[j] > -np.inf:
                cand[n_cand] = j
                n_cand += 1
        _top_of(acc, cand, n_cand, k, items, scores, u)
    return items, scores


@njit(nogil=True, cache=True)
def sparse_topk(indptr: NDArray[np.int64], indices: NDArray[np.int32], s_indptr: NDArray[np.int64],
                s_indices: NDArray[np.int32], s_data: NDArray[np.float32], n_items: int,
                k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Top-k of x_u S per CSR row u (x binary, S a sparse items x items similarity), the row's own
    items and items with no evidence (never reached through S) excluded.

    Item-kNN's scoring: only the items the row's neighbours reach are touched, so a row costs
    (its items x neighbours), not the catalog. Returns (items (n, k), scores (n, k)), -1 / -inf padded.
    """
    n = len(indptr) - 1
    items = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    acc = np.zeros(n_items, dtype=np.float32)
    touched = np.zeros(n_items, dtype=np.bool_)
    own = np.zeros(n_items, dtype=np.bool_)
    cand = np.empty(n_items, dtype=np.int64)
    for u in range(n):
        for p in range(indptr[u], indptr[u + 1]):
            own[indices[p]] = True
        n_cand = 0
        for p in range(indptr[u], indptr[u + 1]):
            i = indices[p]
            for q in range(s_indptr[i], s_indptr[i + 1]):
                j = s_indices[q]
                if not touched[j]:
                    touched[j] = True
                    if not own[j]:
                        cand[n_cand] = j
                        n_cand += 1
                acc[j] += s_data[q]
        _top_of(acc, cand, n_cand, k, items, scores, u)
        for p in range(indptr[u], indptr[u + 1]):  # reset only what this row touched
            i = indices[p]
            own[i] = False
            for q in range(s_indptr[i], s_indptr[i + 1]):
                acc[s_indices[q]] = 0.0
                touched[s_indices[q]] = False
    return items, scores
