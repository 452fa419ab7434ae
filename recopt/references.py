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
  similarity; a user's scores are x_u S -- the sum implicit's scorer computes --
  evaluated for a whole batch of users at once.

A listed item's score is its raw score min-max scaled over the user's list (1 for
the first, 0 for the last; 0.5 when all are equal), so lists stay in [0, 1].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from numpy.typing import NDArray

_CHUNK_CELLS = 1 << 24  # users x items scored at once (64 MiB of float32)


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


def fit_ease(x: sp.csr_matrix, lam: float, max_items: int) -> Ease:
    """EASE's closed form over the `max_items` most interacted items of binary `x`."""
    counts = np.asarray(x.sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    items = np.sort(order[:min(max_items, int((counts > 0).sum()))]).astype(np.int64)
    sub = x[:, items]
    gram = (sub.T @ sub).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += lam
    # X'X + lambda I is symmetric positive definite: a float32 Cholesky inverse is ~4x faster than a
    # float64 LU inverse (relative error ~1e-6, below the float32 the weights are kept in)
    factor, info = lapack.spotrf(gram, lower=False, overwrite_a=True)
    if info == 0:
        upper, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise RuntimeError(f"EASE: X'X + {lam} I is not positive definite (LAPACK info {info})")
    p = np.triu(upper) + np.triu(upper, 1).T
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return Ease(items=items, weights=b.astype(np.float32), lam=lam)


def fit_itemknn(x: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Item-item cosine similarity with `k` neighbours per item, from implicit (items x items CSR)."""
    from implicit.nearest_neighbours import CosineRecommender

    model = CosineRecommender(K=k)
    with warnings.catch_warnings():  # implicit converts its own transposed copy back to CSR, and says so
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(x, show_progress=False)
    return model.similarity.tocsr().astype(np.float32)


def _top_unseen_dense(scores: NDArray[np.float32], seen: sp.csr_matrix, columns: NDArray[np.int64] | None,
                      k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Top-k per row of dense scores, seen items and non-finite scores excluded.

    `columns` maps score columns to catalog items (None: the identity). Ties go to the
    lower catalog index. Returns (items (n, k) -1 padded, list-scaled scores).
    """
    n, width = scores.shape
    dense_seen = seen.toarray().astype(bool)
    if columns is not None:
        dense_seen = dense_seen[:, columns]
    scores = np.where(dense_seen | ~np.isfinite(scores), -np.inf, scores)
    k_eff = min(k, width)
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if width > k_eff else \
        np.broadcast_to(np.arange(width), (n, width)).copy()
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    part, top = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    # a tie with the k-th score that argpartition cut off is re-done exactly
    kth = top[:, -1:] if k_eff else top
    redo = np.flatnonzero(np.isfinite(kth[:, 0]) & ((scores == kth).sum(axis=1) > (top == kth).sum(axis=1))) \
        if k_eff and width > k_eff else np.zeros(0, dtype=np.int64)
    for r in redo:  # rare: exact float ties at the cut
        idx = np.lexsort((np.arange(width), -scores[r]))[:k_eff]
        part[r], top[r] = idx, scores[r, idx]
    ok = np.isfinite(top)
    items = np.where(ok, part if columns is None else columns[part], -1).astype(np.int32)
    lo = np.where(ok, top, np.inf).min(axis=1, keepdims=True)
    hi = np.where(ok, top, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    scaled = np.where(span > 0, (top - lo) / np.where(span > 0, span, 1.0), 0.5)
    scaled = np.where(ok, scaled, 0.0).astype(np.float32)
    if k_eff < k:
        items = np.pad(items, ((0, 0), (0, k - k_eff)), constant_values=-1)
        scaled = np.pad(scaled, ((0, 0), (0, k - k_eff)))
    return items, scaled


def _chunks(n_rows: int, width: int) -> range:
    return range(0, n_rows, max(1, _CHUNK_CELLS // max(width, 1)))


def ease_lists(model: Ease, seen: sp.csr_matrix, k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """EASE top-k lists of the users whose binary train rows are `seen` (users x catalog)."""
    x = interaction_matrix(seen)[:, model.items]
    out_i, out_s = [], []
    for s in _chunks(x.shape[0], len(model.items)):
        block = x[s:s + _CHUNK_CELLS // max(len(model.items), 1)]
        scores = np.asarray(block @ model.weights, dtype=np.float32)
        i, sc = _top_unseen_dense(scores, seen[s:s + block.shape[0]], model.items, k)
        out_i.append(i), out_s.append(sc)
    return _stack(out_i, out_s, k)


def itemknn_lists(similarity: sp.csr_matrix, seen: sp.csr_matrix,
                  k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Item-kNN top-k lists: scores x_u S over the catalog, seen items excluded."""
    x = interaction_matrix(seen)
    out_i, out_s = [], []
    n_items = similarity.shape[1]
    for s in _chunks(x.shape[0], n_items):
        block = x[s:s + _CHUNK_CELLS // max(n_items, 1)]
        product = (block @ similarity).toarray().astype(np.float32)
        product[product == 0] = -np.inf  # no neighbour evidence: never listed
        i, sc = _top_unseen_dense(product, seen[s:s + block.shape[0]], None, k)
        out_i.append(i), out_s.append(sc)
    return _stack(out_i, out_s, k)


def _stack(items: list[NDArray], scores: list[NDArray], k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    if not items:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    return np.concatenate(items), np.concatenate(scores)
