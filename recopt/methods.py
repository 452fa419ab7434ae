"""What evaluate ranks, and how one batch of users is ranked and measured for all of it at once.

A *part* is one ranking method applied to the users it serves:

* ``alpha=<a>``: the hybrid (``a``·content + (1−``a``)·collab), secondary signals and MMR,
  for users with a CF factor;
* ``cold:beta=<b>:<prior>:mmr=<l>``: the cold-start rule ((1−b)·content + b·prior), signals
  and MMR with weight l, for users without one;
* ``baseline=<name>``: popularity (most-rated unseen items of the whole catalog),
  random (uniformly drawn unseen catalog items), cf_only (the pool ranked by collab
  alone) and content_only (the pool ranked by content alone), for every user; an item
  the component cannot score is never listed by it;
* ``reference=ease:lambda=<l>`` / ``reference=itemknn:k=<k>``: see recopt.references.

A *run* (recopt.evaluate) joins parts: an alpha run serves each user with a CF factor
by its alpha part and every other user by the chosen cold part.

:func:`evaluate_batch` is a pure function of (shared arrays, batch): it normalises the
pool once, then ranks and measures every part. Names carry the exact values
(shortest round-trip repr): ``alpha=0.125`` and ``alpha=0.12`` are different runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from recopt import metrics
from recopt.candidates import collab_scores
from recopt.config import Config
from recopt.keys import fetch_widths, first_unseen, seen_bitset, segment_starts
from recopt.references import Ease, ease_lists, itemknn_lists
from recopt.rerank import Ranked, rank_pools
from recopt.rng import keyed_integers
from recopt.scoring import Normalised, normalise_pool, served_scores

ALPHA, COLD, BASELINE, REFERENCE = "alpha", "cold", "baseline", "reference"
TOP = 10  # list depth kept in memory for coverage / novelty


@dataclass(frozen=True)
class Part:
    kind: str                  # alpha | cold | baseline | reference
    value: float | None = None  # alpha, beta, EASE lambda or kNN k
    method: str | None = None   # cold prior, baseline or reference name
    mmr: float | None = None    # cold parts: their MMR weight (None: rerank.mmr_lambda)
    sampled: bool = False       # reference grids on validation: only the seeded tuning sample of users

    @property
    def name(self) -> str:
        if self.kind == ALPHA:
            return f"alpha={self.value!r}"
        if self.kind == COLD:
            return f"cold:beta={self.value!r}:{self.method}" + ("" if self.mmr is None else f":mmr={self.mmr!r}")
        if self.kind == BASELINE:
            return f"baseline={self.method}"
        param = "lambda" if self.method == "ease" else "k"
        value = self.value if self.method == "ease" else int(self.value or 0)
        return f"reference={self.method}:{param}={value!r}"

    def serves(self, has_cf: NDArray[np.bool_], sampled: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Which users (by their CF mask and tuning-sample membership) this part ranks."""
        if self.kind == ALPHA:
            return has_cf
        if self.kind == COLD:
            return ~has_cf
        return sampled.copy() if self.sampled else np.ones(len(has_cf), dtype=bool)

    @property
    def reads_pool(self) -> bool:
        return self.kind in (ALPHA, COLD) or self.method in ("cf_only", "content_only")


@dataclass(frozen=True)
class Shared:
    """What every batch reads (built once per pass; plain arrays, picklable for Ray)."""

    cfg: Config
    fold: str
    parts: tuple[Part, ...]
    quality: NDArray[np.float32]
    recency: NDArray[np.float32]
    popularity: NDArray[np.int64]
    priors: dict[str, NDArray[np.float32]]
    item_has_cf: NDArray[np.bool_]
    user_has_cf: NDArray[np.bool_]
    user_sampled: NDArray[np.bool_]   # the reference-tuning sample, over the user index
    relevant: sp.csr_matrix
    seen: sp.csr_matrix
    mmr: NDArray[np.float32]
    embeddings: NDArray[np.float32]
    popular_order: NDArray[np.int64]
    user_factors: NDArray[np.float32]        # cf-load's, to recompute the pool's collab
    item_factors: NDArray[np.float32]
    factor_users: NDArray[np.bool_]          # who has a factor (user_has_cf above: the evaluated users)
    factor_items: NDArray[np.bool_]
    ease: dict[float, Ease] = field(default_factory=dict)
    knn: dict[int, sp.csr_matrix] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    batch: int
    users: NDArray[np.int64]         # evaluated users of the batch, ascending
    pool: dict[str, NDArray] | None  # flat pool arrays (recopt.pools.read_pool), None if no part reads it
    parts: tuple[Part, ...]          # the parts to compute on this batch (those its checkpoints lack)


@dataclass
class PartBatch:
    users: NDArray[np.int32]
    lists: NDArray[np.int32]
    scores: NDArray[np.float32]
    per_user: dict[str, NDArray[np.float64]]
    seconds: float


def _empty_lists(n: int, k: int) -> Ranked:
    return Ranked(users=np.zeros(0, np.int32), items=np.full((n, k), -1, np.int32),
                  scores=np.zeros((n, k), np.float32), positions=np.full((n, k), -1, np.int64))


def _place(users: NDArray[np.int64], ranked: Ranked, k: int) -> Ranked:
    """Lists for every user of `users`; those without a pool (absent from ranked.users) get
    an empty list, scored 0 on every metric -- never dropped."""
    out = _empty_lists(len(users), k)
    rows = np.searchsorted(users, ranked.users)
    out.items[rows], out.scores[rows], out.positions[rows] = ranked.items, ranked.scores, ranked.positions
    return Ranked(users=users.astype(np.int32), items=out.items, scores=out.scores, positions=out.positions)


def _subset(n: Normalised, keep: NDArray[np.bool_]) -> Normalised:
    rows = n.rows[keep]
    return Normalised(rows=rows, items=n.items[keep], starts=segment_starts(rows), collab=n.collab[keep],
                      collab_missing=n.collab_missing[keep], content=n.content[keep], quality=n.quality[keep], recency=n.recency[keep],
                      provider=n.provider[keep], cold=n.cold[keep])


def _plain(n: Normalised, values: NDArray[np.float32], k: int) -> Ranked:
    """Pool ranked by one component alone (ties: earlier pool position); items it cannot score (NaN)
    are not listed."""
    ok = ~np.isnan(values)
    return rank_pools(n.rows[ok], n.items[ok], values[ok].astype(np.float32), np.zeros((1, 1), np.float32), k,
                      0.0, k)


def popularity_lists(shared: Shared, users: NDArray[np.int64], k: int) -> Ranked:
    """Most-rated train items the user has not seen, over the full catalog; score = count / max count."""
    pop, order = shared.popularity, shared.popular_order
    seen_rows = shared.seen[users]
    seen = seen_bitset(seen_rows)
    rows = np.arange(len(users), dtype=np.int64)
    width = fetch_widths(k, np.diff(seen_rows.indptr).astype(np.int64), len(order))
    items = np.full((len(users), k), -1, dtype=np.int64)
    for w in np.unique(width):  # rows grouped by how deep they must look past their seen items
        sel = rows[width == w]
        got, _ = first_unseen(sel, np.broadcast_to(order[:w], (len(sel), int(w))), seen, k)
        items[sel, :got.shape[1]] = got
    ok = items >= 0
    scores = np.where(ok, pop[np.maximum(items, 0)] / max(pop.max(initial=0), 1), 0.0).astype(np.float32)
    return Ranked(users=users.astype(np.int32), items=items.astype(np.int32), scores=scores,
                  positions=np.where(ok, 0, -1).astype(np.int64))


def random_lists(shared: Shared, users: NDArray[np.int64], k: int) -> Ranked:
    """k distinct unseen catalog items per user, drawn uniformly; scores descend from ~1 to ~0.

    A user's draws are a function of (seed, fold, user) alone (recopt.rng.keyed_integers), so they
    do not change with the batch or the worker that draws them. Each user draws about twice the
    number its seen share makes necessary (rows grouped by that width); duplicates keep their
    first draw; the rare user still short falls back to a keyed permutation of the catalog."""
    n_items = shared.seen.shape[1]
    seen_rows = shared.seen[users]
    seen = seen_bitset(seen_rows)
    n_seen = np.diff(seen_rows.indptr).astype(np.int64)
    stage = f"evaluate/random/{shared.fold}"
    need = np.ceil(2 * k * n_items / np.maximum(n_items - n_seen, 1)).astype(np.int64) + 16
    width = np.minimum(2 ** np.ceil(np.log2(need)).astype(np.int64), 4 * n_items)
    items = np.full((len(users), k), -1, dtype=np.int64)
    for w in np.unique(width):
        sel = np.flatnonzero(width == w)
        draws = keyed_integers(shared.cfg.seed, stage, users[sel], int(w), n_items)
        keys = (np.arange(len(sel), dtype=np.int64)[:, None] * n_items + draws).ravel()
        order = np.argsort(keys, kind="stable")  # equal keys keep draw order: the first draw wins
        first = np.ones(len(keys), dtype=bool)
        first[order[1:]] = keys[order[1:]] != keys[order[:-1]]
        got, _ = first_unseen(sel.astype(np.int64), np.where(first.reshape(draws.shape), draws, -1), seen, k)
        items[sel, :got.shape[1]] = got
    short = np.flatnonzero((items >= 0).sum(axis=1) < np.minimum(k, n_items - n_seen))
    for r in short:  # a user who sees most of a small catalog: a keyed permutation of it
        perm = np.argsort(keyed_integers(shared.cfg.seed, stage + "/all", users[r:r + 1], n_items, 2**62)[0])
        got, _ = first_unseen(np.array([r]), perm[None, :], seen, k)
        items[r, :got.shape[1]] = got[0]
    ok = items >= 0
    scores = np.where(ok, 1.0 - (np.arange(k) + 0.5) / k, 0.0).astype(np.float32)
    return Ranked(users=users.astype(np.int32), items=items.astype(np.int32), scores=scores,
                  positions=np.where(ok, 0, -1).astype(np.int64))


def _reference_lists(shared: Shared, part: Part, users: NDArray[np.int64], k: int) -> Ranked:
    seen = shared.seen[users]
    if part.method == "ease":
        items, scores = ease_lists(shared.ease[float(part.value or 0)], seen, k)
    else:
        items, scores = itemknn_lists(shared.knn[int(part.value or 0)], seen, k)
    return Ranked(users=users.astype(np.int32), items=items, scores=scores,
                  positions=np.where(items >= 0, 0, -1).astype(np.int64))


def check_lists(ranked: Ranked, name: str, pool_sizes: NDArray[np.int64] | None = None) -> None:
    """Scores in [0, 1] and finite; ranks contiguous (padding only at the end); no duplicates;
    and a user whose pool is not empty gets a non-empty list."""
    items, scores = ranked.items, ranked.scores
    problems = []
    if not np.all(np.isfinite(scores)) or scores.min(initial=0) < 0 or scores.max(initial=0) > 1:
        problems.append("scores outside [0, 1] or not finite")
    pad = items < 0
    if np.any(pad[:, :-1] & ~pad[:, 1:]):
        problems.append("ranks are not contiguous (an item after padding)")
    s = np.sort(np.where(pad, -np.arange(items.shape[1]) - 1, items), axis=1)
    if np.any(s[:, 1:] == s[:, :-1]):
        problems.append("duplicate items in a list")
    if pool_sizes is not None:
        empty = pad.all(axis=1) & (pool_sizes > 0)
        if empty.any():
            problems.append(f"{int(empty.sum())} user(s) with a non-empty pool got an empty list")
    if problems:
        raise RuntimeError(f"{name}: invalid ranked lists: {'; '.join(problems)}")


def measure(ranked: Ranked, shared: Shared) -> dict[str, NDArray[np.float64]]:
    """Every per-user metric of a batch's lists."""
    users = ranked.users.astype(np.int64)
    rel = shared.relevant[users]
    hits = metrics.mark_hits(ranked.items, rel)
    n_rel = np.diff(rel.indptr).astype(np.int64)
    out = metrics.ranking_metrics(hits, n_rel, sorted(set(shared.cfg.evaluate.ks)))
    out["diversity@10"] = metrics.diversity_at_k(ranked.items, shared.embeddings, 10)
    top = ranked.items[:, :10]
    n_top = (top >= 0).sum(axis=1)
    cold = ((top >= 0) & ~shared.item_has_cf[np.maximum(top, 0)]).sum(axis=1)
    out["cold_item_share@10"] = np.where(n_top > 0, cold / np.maximum(n_top, 1), 0.0)
    return out


def rank_part(shared: Shared, part: Part, users: NDArray[np.int64], norm: Normalised | None) -> Ranked:
    """Top-k lists of `users` (ascending) for one part; `norm` holds exactly these users' pool rows."""
    r = shared.cfg.rerank
    k = r.k_final
    if part.kind == BASELINE and part.method == "popularity":
        return popularity_lists(shared, users, k)
    if part.kind == BASELINE and part.method == "random":
        return random_lists(shared, users, k)
    if part.kind == REFERENCE:
        return _reference_lists(shared, part, users, k)
    if norm is None:
        raise RuntimeError(f"{part.name}: the batch carries no pool")
    n = norm
    if part.kind == BASELINE:
        ranked = _plain(n, _pure_collab(n) if part.method == "cf_only" else n.content, k)
    else:
        alpha = part.value if part.kind == ALPHA else 0.0
        beta = part.value if part.kind == COLD else 0.0
        prior = shared.priors[part.method or r.cold_prior]
        _, final = served_scores(n, float(alpha or 0.0), float(beta or 0.0), prior, r)
        lam = r.mmr_lambda if part.mmr is None else part.mmr
        ranked = rank_pools(n.rows, n.items, final, shared.mmr, k, lam, r.mmr_pool)
    return _place(users, ranked, k)


def _pure_collab(n: Normalised) -> NDArray[np.float32]:
    """Normalised collab where the item really has a CF factor (the user-mean imputation is not CF)."""
    return np.where(n.collab_missing, np.nan, n.collab).astype(np.float32)


def evaluate_batch(shared: Shared, task: Task) -> dict[str, PartBatch]:
    """Rank and measure every part on one batch of users."""
    norm = None
    pool_sizes = np.zeros(len(task.users), np.int64)
    if task.pool is not None:
        p = task.pool
        collab = collab_scores(shared.user_factors, shared.item_factors, shared.factor_users, shared.factor_items,
                               p["user"], p["item"])
        norm = normalise_pool(p["user"], p["item"], collab, p["content"], p["provider"], shared.quality,
                              shared.recency, shared.cfg.rerank.missing_collab)
        pool_sizes = np.bincount(np.searchsorted(task.users, p["user"]), minlength=len(task.users))
    has_cf = shared.user_has_cf[task.users]
    views: dict[str, Normalised] = {}  # the pool rows of the users a kind of part serves, cut once per batch
    if norm is not None:
        row_has_cf = shared.user_has_cf[norm.rows]
        views = {ALPHA: _subset(norm, row_has_cf), COLD: _subset(norm, ~row_has_cf), BASELINE: norm}
    ranked, seconds = [], []
    for part in task.parts:
        started = time.perf_counter()
        mask = part.serves(has_cf, shared.user_sampled[task.users])
        r = rank_part(shared, part, task.users[mask], views.get(part.kind))
        check_lists(r, part.name, pool_sizes[mask] if part.kind in (ALPHA, COLD) else None)
        ranked.append(r)
        seconds.append(time.perf_counter() - started)
    # every part's lists measured in one call (the metrics are per user, so stacking changes nothing)
    stacked = Ranked(users=np.concatenate([r.users for r in ranked]), items=np.concatenate([r.items for r in ranked]),
                     scores=np.concatenate([r.scores for r in ranked]),
                     positions=np.concatenate([r.positions for r in ranked]))
    per_user = measure(stacked, shared)
    cuts = np.cumsum([0, *(len(r.users) for r in ranked)])
    return {part.name: PartBatch(users=r.users, lists=r.items, scores=r.scores,
                                 per_user={m: v[cuts[i]:cuts[i + 1]] for m, v in per_user.items()},
                                 seconds=seconds[i])
            for i, (part, r) in enumerate(zip(task.parts, ranked))}


def part_task_fields(parts: tuple[Part, ...]) -> dict[str, Any]:
    """Which shared inputs a set of parts needs (so a pass builds only those)."""
    return {"pool": any(p.reads_pool for p in parts),
            "ease": sorted({float(p.value or 0) for p in parts if p.kind == REFERENCE and p.method == "ease"}),
            "knn": sorted({int(p.value or 0) for p in parts if p.kind == REFERENCE and p.method == "itemknn"})}
