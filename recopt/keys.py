"""(user, item) pairs as packed int64 keys `row * n_items + item`: membership tests
against sorted keys, and "the first n unseen items of each row" — the step every
retrieval (CF seeds, profile search, popularity) ends with."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray


def row_keys(m: sp.csr_matrix, n_items: int) -> NDArray[np.int64]:
    """Sorted keys of the stored entries of a CSR matrix with sorted indices."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return rows * n_items + m.indices.astype(np.int64)


def isin_sorted(keys: NDArray[np.int64], sorted_keys: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Elementwise `keys in sorted_keys` by binary search (any shape of `keys`)."""
    if not len(sorted_keys):
        return np.zeros(np.shape(keys), dtype=np.bool_)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def first_unseen(rows: NDArray[np.int64], candidates: NDArray[np.int64], seen_keys: NDArray[np.int64],
                 n_items: int, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per row, the first `n` candidates (in column order) that are valid (>= 0) and unseen.

    rows (r,), candidates (r, w). Returns (items (r, min(n, w)), columns) with -1 where a
    row has fewer than n such candidates; `columns` index into `candidates`.
    """
    ok = (candidates >= 0) & ~isin_sorted(rows[:, None] * n_items + candidates, seen_keys)
    order = np.argsort(~ok, axis=1, kind="stable")[:, :n]
    keep = np.take_along_axis(ok, order, axis=1)
    items = np.where(keep, np.take_along_axis(candidates, order, axis=1), -1)
    return items, np.where(keep, order, -1)


def fetch_widths(n: int, n_seen: NDArray[np.int64], limit: int) -> NDArray[np.int64]:
    """How many ranked candidates a row must fetch to keep n unseen ones: n + seen, rounded up to a
    power of two (so rows group into few widths), at most `limit`."""
    return np.minimum(2 ** np.ceil(np.log2(n + n_seen + 1)).astype(np.int64), limit)
