"""Compiled inner loops (numba): dot products of gathered (row, col) pairs, the blend and the final
score of every candidate, each user's final list (shortlist + MMR), and the top-k scoring of the two
reference recommenders.

All are serial and release the GIL: parallelism comes from the batch executor (recopt.engine),
which runs user batches on several threads or Ray workers, so a batch computes the same bits
whoever runs it. Every dot product goes through :func:`dot`, whose sum may be reassociated
(vectorised: 8x faster than a strict sequential sum); the result is fixed for a given CPU
instruction set, so machines of one type agree bit for bit (a cluster mixing AVX2 and AVX-512
nodes can differ in the last bit of a score). No kernel assumes the absence of NaN or infinity.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray


_FAST_SUM = {"reassoc", "contract", "arcp", "nsz"}  # lets the sum vectorise; never nnan / ninf


@njit(nogil=True, fastmath=_FAST_SUM, cache=True)
def dot(x: NDArray[np.float32], y: NDArray[np.float32]) -> np.float32:
    """x . y in float32 (the one dot product of every kernel)."""
    s = np.float32(0.0)
    for t in range(len(x)):
        s += x[t] * y[t]
    return s


@njit(nogil=True, cache=True)
def pair_dots(a: NDArray[np.float32], b: NDArray[np.float32],
              rows: NDArray[np.int32], cols: NDArray[np.int32]) -> NDArray[np.float32]:
    """out[p] = a[rows[p]] . b[cols[p]] without materialising the gathered rows."""
    out = np.empty(len(rows), dtype=np.float32)
    for p in range(len(rows)):
        out[p] = dot(a[rows[p]], b[cols[p]])
    return out


@njit(nogil=True, cache=True)
def mix(content: NDArray[np.float32], collab: NDArray[np.float32], a: np.float32,
        b: np.float32) -> NDArray[np.float32]:
    """a * content + b * collab where both are known; the known one where one is missing (NaN); 0 where
    neither. float32, one rounding per operation, no contraction: the bits numpy's float32 arithmetic
    gives (recopt.scoring.blend)."""
    out = np.empty(len(content), dtype=np.float32)
    for i in range(len(content)):
        c, f = content[i], collab[i]
        if c == c and f == f:
            out[i] = a * c + b * f
        elif f == f:
            out[i] = f
        elif c == c:
            out[i] = c
        else:
            out[i] = np.float32(0.0)
    return out


@njit(nogil=True, cache=True)
def weigh(hybrid: NDArray[np.float32], quality: NDArray[np.float32], recency: NDArray[np.float32],
          provider: NDArray[np.float32], w: np.float32, wq: np.float32, wr: np.float32,
          wp: np.float32) -> NDArray[np.float32]:
    """w * hybrid + wq * quality + wr * recency + wp * provider, summed left to right in float32 and
    clipped to [0, 1] (NaN stays NaN): the bits of the numpy expression (recopt.scoring.final_scores)."""
    out = np.empty(len(hybrid), dtype=np.float32)
    for i in range(len(hybrid)):
        x = w * hybrid[i] + wq * quality[i] + wr * recency[i] + wp * provider[i]
        out[i] = x if x != x else min(max(x, np.float32(0.0)), np.float32(1.0))
    return out


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


@njit(nogil=True, cache=True)
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


@njit(nogil=True, cache=True)
def _shortlist(final: NDArray[np.float32], start: int, length: int, m: int) -> NDArray[np.int64]:
    """Positions start..start+length-1 of the m best `final` scores, ordered by score descending,
    then position ascending (a stable sort's order); non-finite scores never make the list."""
    vals = np.empty(length, dtype=np.float32)
    n = 0
    for t in range(length):
        v = final[start + t]
        if np.isfinite(v):
            vals[n] = v
            n += 1
    if n == 0:
        return np.empty(0, dtype=np.int64)
    cut = -np.inf
    if n > m:
        cut = np.partition(vals[:n], n - m)[n - m]
    pos = np.empty(length, dtype=np.int64)
    keep = 0
    for t in range(length):
        v = final[start + t]
        if np.isfinite(v) and v >= cut:
            pos[keep] = start + t
            keep += 1
    pos = pos[:keep]
    order = np.argsort(-final[pos], kind="mergesort")  # stable: ties keep position order
    return pos[order][:min(m, keep)]


@njit(nogil=True, cache=True)
def rank_segments(final: NDArray[np.float32], items: NDArray[np.int32], starts: NDArray[np.int64],
                  lengths: NDArray[np.int64], vectors: NDArray[np.float32], lam: float, pool: int,
                  k: int) -> NDArray[np.int64]:
    """Each user's final list from a flat pool grouped by user: the `pool` best by final score
    (ties: earlier position), then greedy MMR down to k (lam = 0: that order).

    MMR picks, at each step, the item maximising (1 - lam) * score - lam * (max similarity to the
    items already picked; 0 at the first step), ties to the higher-ranked item; it stops early
    only when no finite objective is left. The shortlist's vectors are copied into one contiguous
    block per user first, so the 50 x 200 similarity updates read cached memory. Returns picked
    flat positions (n_users, k), -1 padded.
    """
    n = len(starts)
    d = vectors.shape[1]
    out = np.full((n, k), -1, dtype=np.int64)
    for u in range(n):
        short = _shortlist(final, starts[u], lengths[u], pool)
        L = len(short)
        take = min(k, L)
        if lam == 0.0 or L == 0:
            for t in range(take):
                out[u, t] = short[t]
            continue
        block = np.empty((L, d), dtype=np.float32)
        for j in range(L):
            block[j] = vectors[items[short[j]]]
        max_sim = np.full(L, -np.inf, dtype=np.float32)
        taken = np.zeros(L, dtype=np.bool_)
        for step in range(take):
            best, best_val = -1, -np.inf
            for j in range(L):
                if taken[j]:
                    continue
                penalty = max_sim[j] if step > 0 else np.float32(0.0)
                val = (1.0 - lam) * final[short[j]] - lam * penalty
                if val > best_val:
                    best, best_val = j, val
            if best < 0:  # only non-finite objectives left
                break
            taken[best] = True
            out[u, step] = short[best]
            v = block[best]
            for j in range(L):
                if not taken[j]:
                    s = dot(v, block[j])
                    if s > max_sim[j]:
                        max_sim[j] = s
    return out
