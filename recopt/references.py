"""Peer reference recommenders on the same split: EASE and item-kNN (rows to compare with, not gates).

Both learn from the fold's train interactions as binary implicit feedback (a rating
is an interaction, whatever its value), rank the whole catalog they cover, and never
list a seen item.

* EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
  B = I - P / diag(P) with P = (X'X + lambda I)^-1, diag(B) = 0; scores = x_u B.
  The dense item x item matrix covers the ``evaluate.ease_max_items`` most
  interacted items only (ties: lower catalog index); on larger catalogs the rest
  are never recommended, and the report says how many items EASE covers.
* item-kNN: implicit's ``CosineRecommender`` (K neighbours per item) fits the item
  similarity; a user's scores are x_u S -- the sum implicit's scorer computes -- over the
  items the user's neighbours reach (an item nothing reaches has no evidence and is never listed).

Both are scored by numba kernels (recopt.kernels), one user at a time inside a batch.

A listed item's score is its raw score min-max scaled over the user's list (1 for
the first, 0 for the last; 0.5 when all are equal), so lists stay in [0, 1].
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from numpy.typing import NDArray

from recopt.kernels import dense_topk, sparse_topk

@dataclass(frozen=True)
class Ease:
    items: NDArray[np.int64]      # catalog index of each covered item
    weights: NDArray[np.float32]  # (len(items), len(items)), zero diagonal
    lam: float


def interaction_matrix(seen: sp.csr_matrix) -> sp.csr_matrix:
    """Binary float32 copy of a users x items matrix (any stored entry is an interaction)."""
    m = seen.astype(np.float32, copy=True)
    m.data[:] = 1.0
    return m


def _gram(sub: sp.csr_matrix, workers: int) -> NDArray[np.float32]:
    """X'X of a binary users x items matrix, summed over user chunks on `workers` threads (scipy's
    sparse product releases the GIL; the sums are integer counts, exact in float32 in any order)."""
    cuts = np.linspace(0, sub.shape[0], 4 * workers + 1).astype(np.int64)

    def chunk(bounds: tuple[int, int]) -> NDArray[np.float32]:
        block = sub[bounds[0]:bounds[1]]
        return (block.T @ block).toarray().astype(np.float32)

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(chunk, zip(cuts[:-1], cuts[1:])))


def fit_ease(x: sp.csr_matrix, lams: list[float], max_items: int, workers: int = 1) -> dict[float, Ease]:
    """EASE's closed form for each lambda, over the `max_items` most interacted items of binary `x`
    (ties: lower catalog index). X'X is built once for the whole grid."""
    counts = np.asarray(x.sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    items = np.sort(order[:min(max_items, int((counts > 0).sum()))]).astype(np.int64)
    gram = _gram(x[:, items].tocsr(), workers)
    models = {}
    for lam in lams:
        g = gram.copy()
        g[np.diag_indices_from(g)] += lam
        # X'X + lambda I is symmetric positive definite: a float32 Cholesky inverse is ~4x faster than
        # a float64 LU inverse (relative error ~1e-6, below the float32 the weights are kept in)
        factor, info = lapack.spotrf(g, lower=False, overwrite_a=True)
        if info == 0:
            upper, info = lapack.spotri(factor, lower=False, overwrite_c=True)
        if info != 0:
            raise RuntimeError(f"EASE: X'X + {lam} I is not positive definite (LAPACK info {info})")
        p = np.triu(upper) + np.triu(upper, 1).T
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        models[lam] = Ease(items=items, weights=b.astype(np.float32), lam=lam)
    return models


def fit_itemknn(x: sp.csr_matrix, ks: list[int]) -> dict[int, sp.csr_matrix]:
    """Item-item cosine similarity with k neighbours per item, for each k, from implicit (items x items).

    implicit's CosineRecommender keeps each item's K most similar items; it is fitted once with the
    largest k, and each smaller k keeps the k most similar of those (ties: lower item index)."""
    from implicit.nearest_neighbours import CosineRecommender

    model = CosineRecommender(K=max(ks))
    with warnings.catch_warnings():  # implicit converts its own transposed copy back to CSR, and says so
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(x, show_progress=False)
    full = model.similarity.tocsr().astype(np.float32)
    full.sort_indices()
    rows = np.repeat(np.arange(full.shape[0]), np.diff(full.indptr))
    order = np.lexsort((full.indices, -full.data, rows))  # per row: most similar first
    rank = np.arange(len(order)) - np.repeat(full.indptr[:-1], np.diff(full.indptr))
    out = {}
    for k in ks:
        keep = order[rank < k]
        m = sp.csr_matrix((full.data[keep], (rows[keep], full.indices[keep])), shape=full.shape)
        m.sort_indices()
        out[k] = m
    return out


def _scaled(items: NDArray[np.int32], raw: NDArray[np.float32]) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Scores min-max scaled over each list (1 first, 0 last, 0.5 when all equal; 0 for padding)."""
    ok = items >= 0
    lo = np.where(ok, raw, np.inf).min(axis=1, keepdims=True)
    hi = np.where(ok, raw, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore"):
        scaled = np.where(span > 0, (raw - lo) / np.where(span > 0, span, 1.0), 0.5)
    return items, np.where(ok, scaled, 0.0).astype(np.float32)


def ease_lists(model: Ease, seen: sp.csr_matrix, k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """EASE top-k lists of the users whose train rows are `seen` (users x catalog): x_u B over the
    covered items, the user's items excluded (numba kernel: one dense accumulator per user)."""
    x = seen[:, model.items].tocsr()
    x.sort_indices()
    cols, raw = dense_topk(x.indptr.astype(np.int64), x.indices.astype(np.int32), model.weights, k)
    items = np.where(cols >= 0, model.items[np.maximum(cols, 0)], -1).astype(np.int32)
    return _scaled(items, raw)


def itemknn_lists(similarity: sp.csr_matrix, seen: sp.csr_matrix,
                  k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Item-kNN top-k lists: x_u S over the items the user's neighbours reach, seen items excluded."""
    s = similarity.tocsr()
    items, raw = sparse_topk(seen.indptr.astype(np.int64), seen.indices.astype(np.int32),
                             s.indptr.astype(np.int64), s.indices.astype(np.int32), s.data.astype(np.float32),
                             s.shape[1], k)
    return _scaled(items, raw)
