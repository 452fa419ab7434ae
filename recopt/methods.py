"""What evaluate ranks, and how one batch of users is ranked and measured for all of it at once.

A *part* is one ranking method applied to the users it serves:

* ``alpha``: the hybrid (α·content + (1−α)·collab), secondary signals and MMR, for users
  with a CF factor from the fit;
* ``cold``: the cold-start rule ((1−β)·content + β·prior), signals and MMR with its own
  weight, for users without one (the cold slice);
* ``foldin``: the hybrid at its own α with the user's folded-in factor (recopt.cf), for
  users without a factor from the fit who have a folded-in one;
* ``baseline``: one entry of recopt.baselines, for every user (with its fallback);
* ``reference``: EASE or item-kNN (recopt.references), for every user.

A *run* (recopt.runs) joins parts: an alpha run serves each user with a factor from the
fit by its alpha part and every other user by the chosen cold rule.

:func:`evaluate_batch` is a pure function of (shared arrays, batch): it normalises the
pool once, then ranks and measures every part. A part's name carries its exact values
(shortest round-trip repr: 0.125 vs 0.12): it keys its checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from recopt import metrics
from recopt.baselines import BASELINES, CatalogInputs
from recopt.candidates import collab_scores
from recopt.config import Config, RerankConfig
from recopt.keys import segment_starts
from recopt.references import Ease, ease_lists, itemknn_lists
from recopt.rerank import Ranked, rank_pools
from recopt.scoring import Normalised, normalise_pool, served_scores

TOP = 10  # list depth kept in memory for coverage / novelty


class PartKind(str, Enum):
    ALPHA = "alpha"
    COLD = "cold"
    FOLDIN = "foldin"
    BASELINE = "baseline"
    REFERENCE = "reference"


@dataclass(frozen=True)
class Part:
    """One ranking method with its exact settings (a value, never a label to parse)."""

    kind: PartKind
    value: float | None = None  # alpha (alpha, foldin), beta (cold), EASE lambda or kNN k
    method: str | None = None   # cold prior, baseline or reference name
    mmr: float | None = None    # cold and foldin parts: their MMR weight (None: rerank.mmr_lambda)
    sampled: bool = False       # reference grids on validation: only the seeded tuning sample of users

    @property
    def name(self) -> str:
        """Its identity as text: every field, values exact (keys its checkpoints; the labels people read
        are recopt.selection's)."""
        return ":".join((self.kind.value, repr(self.value), str(self.method), repr(self.mmr)))

    @property
    def setting_name(self) -> str:
        return "lambda" if self.method == "ease" else "k"

    @property
    def setting(self) -> float | int:
        """A reference's setting in its own type (EASE's lambda, kNN's integer k)."""
        return float(self.value or 0.0) if self.method == "ease" else int(self.value or 0)

    def serves(self, has_cf: NDArray[np.bool_], folded: NDArray[np.bool_],
               sampled: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Which users (by their fit-factor mask, folded-in mask and tuning-sample membership) it ranks."""
        if self.kind == PartKind.ALPHA:
            return has_cf.copy()
        if self.kind == PartKind.COLD:
            return ~has_cf
        if self.kind == PartKind.FOLDIN:
            return ~has_cf & folded
        return sampled.copy() if self.sampled else np.ones(len(has_cf), dtype=bool)

    @property
    def reads_pool(self) -> bool:
        return self.kind != PartKind.REFERENCE and (
            self.kind != PartKind.BASELINE or BASELINES[self.method or ""].component is not None)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "value": self.value, "method": self.method, "mmr": self.mmr,
                "sampled": self.sampled}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Part:
        return cls(PartKind(d["kind"]), d["value"], d["method"], d["mmr"], bool(d["sampled"]))


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
    user_has_cf: NDArray[np.bool_]    # over the user index: a factor from the fit
    user_folded: NDArray[np.bool_]    # over the user index: a folded-in factor
    user_sampled: NDArray[np.bool_]   # the reference-tuning sample, over the user index
    relevant: sp.csr_matrix
    seen: sp.csr_matrix
    mmr: NDArray[np.float32]
    embeddings: NDArray[np.float32]
    popular_order: NDArray[np.int64]
    user_factors: NDArray[np.float32]        # cf-load's, to recompute the pool's collab
    item_factors: NDArray[np.float32]
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
    per_user: dict[str, NDArray[np.float64]]   # every metric, and `fallback` (1: served by the fallback)
    seconds: float


def _empty_lists(n: int, k: int) -> Ranked:
    return Ranked(users=np.zeros(0, np.int32), items=np.full((n, k), -1, np.int32),
                  scores=np.zeros((n, k), np.float32), positions=np.full((n, k), -1, np.int64))


def _place(users: NDArray[np.int64], ranked: Ranked, k: int) -> Ranked:
    """Lists for every user of `users`; those absent from ranked.users get an empty list."""
    out = _empty_lists(len(users), k)
    rows = np.searchsorted(users, ranked.users)
    out.items[rows], out.scores[rows], out.positions[rows] = ranked.items, ranked.scores, ranked.positions
    return Ranked(users=users.astype(np.int32), items=out.items, scores=out.scores, positions=out.positions)


def _subset(n: Normalised, keep: NDArray[np.bool_]) -> Normalised:
    rows = n.rows[keep]
    return Normalised(rows=rows, items=n.items[keep], starts=segment_starts(rows), collab=n.collab[keep],
                      collab_missing=n.collab_missing[keep], content=n.content[keep], quality=n.quality[keep],
                      recency=n.recency[keep], provider=n.provider[keep], cold=n.cold[keep])


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
    """Every per-user metric of the registry (recopt.metrics) for a batch's lists."""
    users = ranked.users.astype(np.int64)
    rel = shared.relevant[users]
    inputs = metrics.ListInputs(ranked=ranked.items, hits=metrics.mark_hits(ranked.items, rel),
                                n_relevant=np.diff(rel.indptr).astype(np.int64), embeddings=shared.embeddings,
                                item_has_cf=shared.item_has_cf)
    return metrics.per_user_metrics(inputs, sorted(set(shared.cfg.evaluate.ks)))


def catalog_lists(shared: Shared, name: str, users: NDArray[np.int64], k: int) -> Ranked:
    inp = CatalogInputs(users=users, seen=shared.seen[users], popularity=shared.popularity,
                        popular_order=shared.popular_order, seed=shared.cfg.seed,
                        stream=f"evaluate/random/{shared.fold}")
    items, scores = BASELINES[name].lists(inp, k)  # type: ignore[misc]
    return Ranked(users=users.astype(np.int32), items=items.astype(np.int32), scores=scores,
                  positions=np.where(items >= 0, 0, -1).astype(np.int64))


def _component_lists(n: Normalised, component: str, k: int) -> Ranked:
    """The pool ranked by one normalised component alone (ties: earlier pool position); items it
    cannot score (NaN; for collab: items or users without a factor -- the user-mean imputation is
    not CF) are not listed."""
    values = np.where(n.collab_missing, np.nan, n.collab) if component == "collab" else n.content
    ok = ~np.isnan(values)
    return rank_pools(n.rows[ok], n.items[ok], values[ok].astype(np.float32), np.zeros((1, 1), np.float32), k,
                      0.0, k)


def baseline_lists(shared: Shared, name: str, users: NDArray[np.int64],
                   norm: Normalised | None) -> tuple[Ranked, NDArray[np.bool_]]:
    """A baseline's lists for `users`, and which users its fallback served (recopt.baselines)."""
    k = shared.cfg.rerank.k_final
    spec = BASELINES[name]
    if spec.component is None:
        ranked = catalog_lists(shared, name, users, k)
    elif norm is None:
        raise RuntimeError(f"baseline={name}: the batch carries no pool")
    else:
        ranked = _place(users, _component_lists(norm, spec.component, k), k)
    fallback = (ranked.items < 0).all(axis=1) if spec.fallback else np.zeros(len(users), bool)
    if fallback.any():
        alt, _ = baseline_lists(shared, spec.fallback or "", users[fallback], norm)
        for arr, new in ((ranked.items, alt.items), (ranked.scores, alt.scores), (ranked.positions, alt.positions)):
            arr[fallback] = new
    return ranked, fallback


def rank_part(shared: Shared, part: Part, users: NDArray[np.int64],
              norm: Normalised | None) -> tuple[Ranked, NDArray[np.bool_]]:
    """Top-k lists of `users` (ascending) for one part, and which of them a fallback served;
    `norm` holds exactly these users' pool rows."""
    r = shared.cfg.rerank
    k = r.k_final
    if part.kind == PartKind.BASELINE:
        return baseline_lists(shared, part.method or "", users, norm)
    none = np.zeros(len(users), bool)
    if part.kind == PartKind.REFERENCE:
        seen = shared.seen[users]
        items, scores = (ease_lists(shared.ease[float(part.setting)], seen, k) if part.method == "ease"
                         else itemknn_lists(shared.knn[int(part.setting)], seen, k))
        return Ranked(users=users.astype(np.int32), items=items, scores=scores,
                      positions=np.where(items >= 0, 0, -1).astype(np.int64)), none
    if norm is None:
        raise RuntimeError(f"{part.name}: the batch carries no pool")
    _, final = part_scores(norm, part, shared.priors, r)
    return _place(users, rank_pools(norm.rows, norm.items, final, shared.mmr, k, mmr_weight(part, r), r.mmr_pool),
                  k), none


def part_scores(norm: Normalised, part: Part, priors: dict[str, NDArray[np.float32]],
                r: RerankConfig) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(hybrid, final) scores of a pool part's users: the alpha blend (alpha, foldin), or the
    content/prior rule whatever collab a user has (cold)."""
    if part.kind == PartKind.COLD:
        return served_scores(norm, None, float(part.value or 0.0), priors[part.method or r.cold_prior], r)
    return served_scores(norm, float(part.value or 0.0), 0.0, priors[r.cold_prior], r)


def mmr_weight(part: Part, r: RerankConfig) -> float:
    """The MMR weight a part ranks with (its own, else rerank.mmr_lambda)."""
    return r.mmr_lambda if part.mmr is None else part.mmr


def evaluate_batch(shared: Shared, task: Task) -> dict[Part, PartBatch]:
    """Rank and measure every part on one batch of users."""
    norm = None
    pool_sizes = np.zeros(len(task.users), np.int64)
    if task.pool is not None:
        p = task.pool
        collab = collab_scores(shared.user_factors, shared.item_factors, shared.user_has_cf | shared.user_folded,
                               shared.item_has_cf, p["user"], p["item"])
        norm = normalise_pool(p["user"], p["item"], collab, p["content"], p["provider"], shared.quality,
                              shared.recency, shared.cfg.rerank.missing_collab)
        pool_sizes = np.bincount(p["user"], minlength=len(shared.user_has_cf))[task.users]  # O(rows), no search
    has_cf, folded = shared.user_has_cf[task.users], shared.user_folded[task.users]
    sampled = shared.user_sampled[task.users]
    views: dict[PartKind, Normalised] = {}  # the pool rows of the users a kind of part serves, cut once per batch
    if norm is not None:
        row_has_cf, row_folded = shared.user_has_cf[norm.rows], shared.user_folded[norm.rows]
        views = {PartKind.ALPHA: _subset(norm, row_has_cf), PartKind.COLD: _subset(norm, ~row_has_cf),
                 PartKind.FOLDIN: _subset(norm, ~row_has_cf & row_folded), PartKind.BASELINE: norm}
    ranked, fallbacks, seconds = [], [], []
    for part in task.parts:
        started = time.perf_counter()
        mask = part.serves(has_cf, folded, sampled)
        r, fallback = rank_part(shared, part, task.users[mask], views.get(part.kind))
        check_lists(r, part.name, pool_sizes[mask] if part.kind in (PartKind.ALPHA, PartKind.COLD,
                                                                     PartKind.FOLDIN) else None)
        ranked.append(r)
        fallbacks.append(fallback)
        seconds.append(time.perf_counter() - started)
    # every part's lists measured in one call (the metrics are per user, so stacking changes nothing)
    stacked = Ranked(users=np.concatenate([r.users for r in ranked]), items=np.concatenate([r.items for r in ranked]),
                     scores=np.concatenate([r.scores for r in ranked]),
                     positions=np.concatenate([r.positions for r in ranked]))
    per_user = measure(stacked, shared) | {"fallback": np.concatenate(fallbacks).astype(np.float64)}
    cuts = np.cumsum([0, *(len(r.users) for r in ranked)])
    return {part: PartBatch(users=r.users, lists=r.items, scores=r.scores,
                            per_user={m: v[cuts[i]:cuts[i + 1]] for m, v in per_user.items()}, seconds=seconds[i])
            for i, (part, r) in enumerate(zip(task.parts, ranked))}


def part_task_fields(parts: tuple[Part, ...]) -> dict[str, Any]:
    """Which shared inputs a set of parts needs (so a pass builds only those)."""
    refs = [p for p in parts if p.kind == PartKind.REFERENCE]
    return {"pool": any(p.reads_pool for p in parts),
            "ease": sorted({float(p.setting) for p in refs if p.method == "ease"}),
            "knn": sorted({int(p.setting) for p in refs if p.method == "itemknn"})}
