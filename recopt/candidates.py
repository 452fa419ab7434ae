"""Two-stage candidate pools with their alpha-independent component scores.

For every user with test interactions, in batches of users (each batch a pure
function of the config, the shared arrays and its user range):

1. CF seeds: the top `n_cf_seed` unseen items by u.v among items with a CF
   factor (faiss exact inner-product search), for users with a factor from the
   fit or a folded-in one (recopt.cf). Users without a factor from the fit (the
   cold slice) also get a content-profile retrieval: top `n_cf_seed` unseen items
   by cosine to their profile (the rating-weighted mean embedding of liked train
   items), plus the `n_popular_cold` most popular unseen items (so the cold-start
   prior has the popular items to rank; they share the seeds' rank priorities).
2. Content expansion: the `k_neighbours` nearest content neighbours of each of
   the user's `m_recent` most recent liked train items (rating >= the
   relevance threshold; users with no liked item use their most recent items).
3. Union, seen items removed, hard filters with bounded relaxation and a
   popularity backfill (recopt.filters), capped at `c_max` by priority:
   seeds in score order first, then neighbours by similarity (quantised to
   1e-3, ties by item index), then backfill by popularity.
4. Component scores: collab = u.v (NaN when user or item has no factor; a
   folded-in user factor counts),
   content = cosine(profile, item) (NaN when either has no content).

Source flags: 1 CF seed, 2 content neighbour, 4 profile retrieval, 8 backfill,
16 popular (users without a CF factor).

Seen items are excluded with a per-batch bitset (one bit per (user, item)).
Everything a batch reads is in :class:`Context` (plain arrays, picklable), so a
batch runs the same in a local worker thread or a Ray task.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray

from recopt import features
from recopt.assembly import HybridInputs
from recopt.config import CandidatesConfig
from recopt.filters import first_n_per_row, relax_filters
from recopt.kernels import pair_dots
from recopt.keys import (
    fetch_widths,
    first_unseen,
    is_seen,
    isin_sorted,
    packing,
    pair_keys,
    positions,
    seen_bitset,
    segment_starts,
)

SOURCE_CF, SOURCE_CONTENT, SOURCE_PROFILE, SOURCE_BACKFILL, SOURCE_POPULAR = 1, 2, 4, 8, 16
SOURCES = {"cf": SOURCE_CF, "content": SOURCE_CONTENT, "profile": SOURCE_PROFILE, "backfill": SOURCE_BACKFILL,
           "popular": SOURCE_POPULAR}
_SIM_LEVELS = 2001  # neighbour similarity in [-1, 1] quantised to 1e-3


@dataclass(frozen=True)
class Context:
    """Arrays every batch reads (built once from train data and the hybrid inputs)."""

    cfg: CandidatesConfig
    inputs: HybridInputs
    seen: sp.csr_matrix            # users x items, train interactions
    liked: sp.csr_matrix           # users x items, profile weights
    anchors: sp.csr_matrix         # users x items, the m most recent liked items
    neighbours: NDArray[np.int32]  # items x k, -1 where not computed / none
    neighbour_sims: NDArray[np.float32]
    cf_vectors: NDArray[np.float32]       # item factors of the items with one (rows of cf_items)
    cf_items: NDArray[np.int64]
    content_vectors: NDArray[np.float32]  # embeddings of the items with content
    content_items: NDArray[np.int64]
    hard_item: NDArray[np.bool_]   # not blocklisted and scorable by some component
    soft_item: dict[str, NDArray[np.bool_]]
    item_bits: NDArray[np.uint64]
    user_bits: NDArray[np.uint64]
    use_user_providers: bool
    popular: NDArray[np.int32]     # items by train count, descending (hard-passing only)


@dataclass(frozen=True)
class Batch:
    """One batch of pools, rows grouped by user and in priority order."""

    user: NDArray[np.int32]
    item: NDArray[np.int32]
    collab: NDArray[np.float32]
    content: NDArray[np.float32]
    provider: NDArray[np.float32]
    source: NDArray[np.uint8]
    step: NDArray[np.int16]        # per batch user: relaxation step taken


def _subset(vectors: NDArray[np.float32], mask: NDArray[np.bool_]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    items = np.flatnonzero(mask).astype(np.int64)
    return np.ascontiguousarray(vectors[items], dtype=np.float32), items


def search_ip(queries: NDArray[np.float32], base: NDArray[np.float32], k: int) -> tuple[NDArray, NDArray]:
    """Exact top-k inner products (faiss, brute force, no index object): (scores, rows of `base`)."""
    return faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), base, k, metric=faiss.METRIC_INNER_PRODUCT)


def user_item_matrix(df: pl.DataFrame, user_ids: NDArray, item_ids: NDArray,
                     weights: NDArray | None = None) -> sp.csr_matrix:
    """CSR users x items from a frame with userId, movieId (every id must be in its index)."""
    rows = positions(user_ids, df["userId"].to_numpy())
    cols = positions(item_ids, df["movieId"].to_numpy())
    data = np.ones(len(rows), dtype=np.float32) if weights is None else weights.astype(np.float32)
    shape = (len(user_ids), len(item_ids))
    if len(rows) and np.all(rows[1:] >= rows[:-1]):  # grouped by user (the split's order): no COO sort
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.bincount(rows, minlength=shape[0]))
        m = sp.csr_matrix((data, cols.astype(np.int32), indptr), shape=shape)
        m.has_sorted_indices = False
    else:
        m = sp.csr_matrix((data, (rows, cols)), shape=shape)
    m.sort_indices()
    m.sum_duplicates()
    return m


def _liked_and_anchors(train: pl.DataFrame, user_ids: NDArray, item_ids: NDArray, threshold: float,
                       m_recent: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Profile weights (rating - threshold + 1 on liked items; 1 on all items for users
    with no liked item) and the m most recent liked (else most recent) items."""
    has_liked = train.group_by("userId").agg(any_liked=(pl.col("rating") >= threshold).any())
    basis = (train.join(has_liked, on="userId")
             .filter((pl.col("rating") >= threshold) | ~pl.col("any_liked"))
             .with_columns(w=pl.when(pl.col("any_liked")).then(pl.col("rating") - threshold + 1.0)
                           .otherwise(1.0)))
    liked = user_item_matrix(basis, user_ids, item_ids, basis["w"].to_numpy())
    recent = basis.sort(["userId", "timestamp", "movieId"]).group_by("userId", maintain_order=True).tail(m_recent)
    anchors = user_item_matrix(recent, user_ids, item_ids)
    return liked, anchors


def _neighbour_table(content_vectors: NDArray[np.float32], content_items: NDArray[np.int64],
                     embeddings: NDArray[np.float32], anchor_items: NDArray[np.int64],
                     k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """k nearest content neighbours (self excluded) of each anchor item, catalog-indexed."""
    n_items = len(embeddings)
    nb = np.full((n_items, k), -1, dtype=np.int32)
    sims = np.zeros((n_items, k), dtype=np.float32)
    if not len(anchor_items) or not len(content_items):
        return nb, sims
    kk = min(k + 1, len(content_items))
    for start in range(0, len(anchor_items), 8192):
        a = anchor_items[start:start + 8192]
        D, I = search_ip(embeddings[a], content_vectors, kk)
        items = np.where(I >= 0, content_items[np.maximum(I, 0)], -1)
        not_self = (items != a[:, None]) & (items >= 0)
        order = np.argsort(~not_self, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(not_self, order, axis=1)
        nb[a, :order.shape[1]] = np.where(got, np.take_along_axis(items, order, axis=1), -1)
        sims[a, :order.shape[1]] = np.where(got, np.take_along_axis(D, order, axis=1), 0.0)
    return nb, sims


def build_context(inputs: HybridInputs, train: pl.DataFrame, movies: pl.DataFrame,
                  providers: pl.DataFrame, user_providers: pl.DataFrame, eval_users: NDArray[np.int64],
                  cfg: CandidatesConfig, threshold: float) -> Context:
    """Everything the batches share; nothing here reads the test split."""
    item_ids, user_ids = inputs.item_ids, inputs.user_ids
    seen = user_item_matrix(train, user_ids, item_ids)
    liked, anchors = _liked_and_anchors(train, user_ids, item_ids, threshold, cfg.m_recent)
    cf_vectors, cf_items = _subset(inputs.item_factors, inputs.item_has_cf)
    content_vectors, content_items = _subset(inputs.embeddings, inputs.has_content)
    anchor_items = np.unique(anchors[eval_users].indices).astype(np.int64)
    # an item without content has no content neighbours (its zero query would return
    # arbitrary index rows at similarity 0)
    anchor_items = anchor_items[inputs.has_content[anchor_items]]
    neighbours, sims = _neighbour_table(content_vectors, content_items, inputs.embeddings, anchor_items,
                                        cfg.k_neighbours)
    f = cfg.filters
    hard = (inputs.has_content | inputs.item_has_cf) & ~np.isin(item_ids, np.asarray(f.blocklist, dtype=np.int64))
    names = sorted(set(providers["provider"].to_list()) | set(user_providers["provider"].to_list()))
    item_bits = features.provider_bits(providers, "movieId", item_ids, names)
    user_bits = features.provider_bits(user_providers, "userId", user_ids, names)
    soft: dict[str, NDArray[np.bool_]] = {}
    if f.genres:
        wanted = set(f.genres)
        soft["genres"] = np.array([bool(wanted.intersection(g)) for g in movies["genres"].to_list()])
    if f.providers:
        soft["providers"] = features.any_provider(item_bits, f.providers, names)
    pop = features.popularity(train, item_ids)
    order = np.argsort(-pop, kind="stable").astype(np.int32)
    return Context(cfg=cfg, inputs=inputs, seen=seen, liked=liked, anchors=anchors, neighbours=neighbours,
                   neighbour_sims=sims, cf_vectors=cf_vectors, cf_items=cf_items, content_vectors=content_vectors,
                   content_items=content_items, hard_item=hard, soft_item=soft, item_bits=item_bits,
                   user_bits=user_bits, use_user_providers=f.user_providers, popular=order[hard[order]])


def _top_unseen(base: NDArray[np.float32], base_items: NDArray[np.int64], queries: NDArray[np.float32],
                rows: NDArray[np.int64], n: int, n_seen: NDArray[np.int64],
                seen: NDArray[np.uint8]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Top-n unseen items per query: (rows, items, rank). Queries are grouped by how
    many results they must fetch (n + seen, rounded up to a power of two)."""
    if not len(rows) or not len(base_items):
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    need = fetch_widths(n, n_seen, len(base_items))
    out_r, out_i, out_rank = [], [], []
    for kb in np.unique(need):
        sel = np.flatnonzero(need == kb)
        _, I = search_ip(queries[sel], base, int(kb))
        items, _ = first_unseen(rows[sel], np.where(I >= 0, base_items[np.maximum(I, 0)], -1), seen, n)
        keep = items >= 0
        out_r.append(np.broadcast_to(rows[sel, None], items.shape)[keep])
        out_i.append(items[keep])
        out_rank.append(np.broadcast_to(np.arange(items.shape[1]), items.shape)[keep])
    return np.concatenate(out_r), np.concatenate(out_i), np.concatenate(out_rank)


def _popular_unseen(popular: NDArray[np.int32], rows: NDArray[np.int64], n: int, n_seen: NDArray[np.int64],
                    seen: NDArray[np.uint8]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The n most popular unseen items of each row: (rows, items, rank)."""
    if not len(rows) or not len(popular) or n == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    width = int(min(len(popular), n + n_seen.max()))
    items, _ = first_unseen(rows, np.broadcast_to(popular[:width].astype(np.int64), (len(rows), width)), seen, n)
    keep = items >= 0
    return (np.broadcast_to(rows[:, None], items.shape)[keep], items[keep],
            np.broadcast_to(np.arange(items.shape[1]), items.shape)[keep])


def user_profiles(liked: sp.csr_matrix, embeddings: NDArray[np.float32],
                  users: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Unit content profiles of `users` (weighted mean embedding of liked train items) and
    which users have one."""
    profiles = np.asarray(liked[users] @ embeddings, dtype=np.float32)
    norms = np.linalg.norm(profiles, axis=1)
    has_profile = norms > 1e-9
    profiles[has_profile] /= norms[has_profile, None]
    return profiles, has_profile


def build_batch(ctx: Context, users: NDArray[np.int64]) -> Batch:
    """Candidate pools of `users` (user indexes), a pure function of its arguments."""
    inp, cfg = ctx.inputs, ctx.cfg
    n_items, B = len(inp.item_ids), len(users)
    seen_b = ctx.seen[users]
    seen = seen_bitset(seen_b)
    n_seen = np.diff(seen_b.indptr).astype(np.int64)
    profiles, has_profile = user_profiles(ctx.liked, inp.embeddings, users)
    has_cf = inp.user_has_cf[users]
    has_factor = has_cf | inp.user_folded[users]  # a folded-in factor seeds too (recopt.cf)
    local = np.arange(B, dtype=np.int64)

    r_cf, i_cf, p_cf = _top_unseen(ctx.cf_vectors, ctx.cf_items, inp.user_factors[users[has_factor]],
                                   local[has_factor], cfg.n_cf_seed, n_seen[has_factor], seen)
    cold = ~has_cf & has_profile
    r_pr, i_pr, p_pr = _top_unseen(ctx.content_vectors, ctx.content_items, profiles[cold], local[cold],
                                   cfg.n_cf_seed, n_seen[cold], seen)
    # a user without a CF factor is scored through content (and the prior): popular items with content
    r_po, i_po, p_po = _popular_unseen(ctx.popular[inp.has_content[ctx.popular]], local[cold], cfg.n_popular_cold,
                                       n_seen[cold], seen)
    anc = ctx.anchors[users].tocoo()
    nb = ctx.neighbours[anc.col]
    r_ct = np.repeat(anc.row.astype(np.int64), nb.shape[1])
    i_ct = nb.ravel().astype(np.int64)
    p_ct = cfg.n_cf_seed + np.rint((1.0 - ctx.neighbour_sims[anc.col].ravel()) * 1000).astype(np.int64)
    valid = i_ct >= 0
    r_ct, i_ct, p_ct = r_ct[valid], i_ct[valid], p_ct[valid]

    rows = np.concatenate([r_cf, r_pr, r_po, r_ct])
    items = np.concatenate([i_cf, i_pr, i_po, i_ct])
    prio = np.concatenate([p_cf, p_pr, p_po, p_ct])
    src = np.concatenate([np.full(len(r_cf), SOURCE_CF), np.full(len(r_pr), SOURCE_PROFILE),
                          np.full(len(r_po), SOURCE_POPULAR), np.full(len(r_ct), SOURCE_CONTENT)]).astype(np.int64)
    # dedupe (user, item) keeping the best priority and the union of sources: one sort of
    # packed keys (user, item, priority, source); seen pairs are then dropped
    n_prio = cfg.n_cf_seed + _SIM_LEVELS + len(ctx.popular) + 1
    by_pair = packing(B, n_items, n_prio, 32)
    key = np.sort(by_pair.pack(rows, items, prio, src))
    key = key[~is_seen(seen, by_pair.field(key, 0), by_pair.field(key, 1))]
    pair = key >> by_pair.shift(1)  # == pair_keys(row, item)
    starts = segment_starts(pair)
    src = (np.bitwise_or.reduceat(key & 31, starts) if len(starts) else key & 31).astype(np.uint8)
    first = key[starts]
    rows, items, prio = by_pair.field(first, 0), by_pair.field(first, 1), by_pair.field(first, 2)

    def scorable(r: NDArray[np.int64], i: NDArray[np.int64]) -> NDArray[np.bool_]:
        # the hard rule is per pair: a cold user cannot be scored on a CF-only item
        return (has_factor[r] & inp.item_has_cf[i]) | (has_profile[r] & inp.has_content[i])

    hard = ctx.hard_item[items] & scorable(rows, items)
    active = [*ctx.soft_item, *(["user_providers"] if ctx.use_user_providers else [])]
    soft = {name: soft_mask(ctx, name, users, rows, items) for name in active}
    relax = relax_filters(rows, B, hard, soft, cfg.relax_order, cfg.min_pool)
    rows, items, prio, src = rows[relax.keep], items[relax.keep], prio[relax.keep], src[relax.keep]

    short = np.maximum(cfg.min_pool - np.bincount(rows, minlength=B), 0)
    backfill_users = np.flatnonzero((relax.step == len(relax.labels) - 1) & (short > 0))
    if len(backfill_users) and len(ctx.popular):
        t = int(min(len(ctx.popular), cfg.min_pool + n_seen[backfill_users].max() + cfg.c_max))
        br = np.repeat(backfill_users.astype(np.int64), t)
        bi = np.tile(ctx.popular[:t].astype(np.int64), len(backfill_users))
        keys = pair_keys(br, bi, n_items)
        ok = ~is_seen(seen, br, bi) & ~isin_sorted(keys, np.sort(pair_keys(rows, items, n_items)))
        ok &= scorable(br, bi)
        for name, still in relax.backfill_pass.items():
            if still:
                ok &= soft_mask(ctx, name, users, br, bi)
        br, bi = br[ok], bi[ok]
        take = first_n_per_row(br, short)
        rows = np.concatenate([rows, br[take]])
        items = np.concatenate([items, bi[take]])
        base = cfg.n_cf_seed + _SIM_LEVELS
        prio = np.concatenate([prio, base + np.flatnonzero(take) - np.searchsorted(br, br[take])])
        src = np.concatenate([src, np.full(int(take.sum()), SOURCE_BACKFILL, dtype=np.uint8)])
    src = src.astype(np.int64)

    by_rank = packing(B, n_prio, n_items, 32)
    key = np.sort(by_rank.pack(rows, prio, items, src))  # by user, then priority, then item
    rows, items, src = by_rank.field(key, 0), by_rank.field(key, 2), by_rank.field(key, 3).astype(np.uint8)
    cap = first_n_per_row(rows, np.full(B, cfg.c_max, dtype=np.int64))
    rows, items, src = rows[cap], items[cap], src[cap]

    u = users[rows]
    i32 = items.astype(np.int32)
    collab = collab_scores(inp.user_factors, inp.item_factors, inp.user_has_cf | inp.user_folded, inp.item_has_cf,
                           u, i32)
    content = pair_dots(profiles, inp.embeddings, rows.astype(np.int32), i32)
    content[~(has_profile[rows] & inp.has_content[items])] = np.nan
    provider = features.provider_match(ctx.user_bits, ctx.item_bits, u, items).astype(np.float32)
    return Batch(user=u.astype(np.int32), item=i32, collab=collab, content=content, provider=provider,
                 source=src, step=relax.step)


def collab_scores(user_factors: NDArray[np.float32], item_factors: NDArray[np.float32], user_has: NDArray[np.bool_],
                  item_has: NDArray[np.bool_], users: NDArray, items: NDArray) -> NDArray[np.float32]:
    """collab = u.v of each (user, item) pair; NaN where the user or the item has no CF factor.

    The pool store does not keep this column: evaluate recomputes it from the factors with this
    same function (same kernel, same inputs, same bits) -- 4 bytes a candidate less on disk."""
    collab = pair_dots(user_factors, item_factors, np.asarray(users, dtype=np.int32), np.asarray(items, dtype=np.int32))
    collab[~(user_has[users] & item_has[items])] = np.nan
    return collab


def soft_mask(ctx: Context, name: str, users: NDArray[np.int64], rows: NDArray[np.int64],
              items: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Pass mask of soft filter `name` for batch pairs (rows, items)."""
    if name == "user_providers":
        return features.provider_match(ctx.user_bits, ctx.item_bits, users[rows], items)
    return ctx.soft_item[name][items]
