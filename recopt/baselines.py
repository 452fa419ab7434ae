"""The baselines: one registry entry each, serving every evaluated user as a deployed system would.

A baseline ranks either from the catalog (``lists``: a function of the users' train
rows) or from the candidate pool by one of its normalised components (``component``:
``collab`` or ``content``; an item the component cannot score is never listed). A
baseline that cannot score a user -- its list would be empty (no CF factor, no
content profile, no pool) -- serves that user with its ``fallback`` baseline's list
instead, and the evaluation counts who took it (per-user ``fallback`` = 1). So a
baseline never loses a user by returning an empty list, and every comparison with
it covers the same users as the run it is compared with.

Adding a baseline is one :data:`BASELINES` entry (and, for a catalog baseline, its
function); ``evaluate.baselines`` accepts every name listed here (:func:`check_names`,
which the evaluate stage calls before any work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from recopt.config import ConfigError
from recopt.keys import fetch_widths, first_unseen, seen_bitset
from recopt.rng import keyed_integers

Lists = tuple[NDArray[np.int64], NDArray[np.float32]]  # (n, k) items padded with -1, their scores in [0, 1]


@dataclass(frozen=True)
class CatalogInputs:
    """What a catalog baseline reads for a block of users (rows follow `users`)."""

    users: NDArray[np.int64]        # user indexes, ascending
    seen: sp.csr_matrix             # their train rows (users x catalog)
    popularity: NDArray[np.int64]   # train count of every catalog item
    popular_order: NDArray[np.int64]  # catalog by train count, descending (ties: lower index)
    seed: int
    stream: str                     # the random stream of this fold (recopt.rng.keyed_integers)


@dataclass(frozen=True)
class Baseline:
    rule: str                                            # how it ranks, for people
    lists: Callable[[CatalogInputs, int], Lists] | None = None  # catalog baselines: top-k lists
    component: str | None = None                         # pool baselines: "collab" | "content"
    fallback: str | None = None                          # the baseline serving users it cannot score


def popularity_lists(inp: CatalogInputs, k: int) -> Lists:
    """Most-rated train items the user has not seen, over the full catalog; score = count / max count."""
    order = inp.popular_order
    seen = seen_bitset(inp.seen)
    rows = np.arange(len(inp.users), dtype=np.int64)
    width = fetch_widths(k, np.diff(inp.seen.indptr).astype(np.int64), len(order))
    items = np.full((len(inp.users), k), -1, dtype=np.int64)
    for w in np.unique(width):  # rows grouped by how deep they must look past their seen items
        sel = rows[width == w]
        got, _ = first_unseen(sel, np.broadcast_to(order[:w], (len(sel), int(w))), seen, k)
        items[sel, :got.shape[1]] = got
    pop = inp.popularity
    scores = np.where(items >= 0, pop[np.maximum(items, 0)] / max(pop.max(initial=0), 1), 0.0)
    return items, scores.astype(np.float32)


def random_lists(inp: CatalogInputs, k: int) -> Lists:
    """k distinct unseen catalog items per user, drawn uniformly; scores descend from ~1 to ~0.

    A user's draws are a function of (seed, stream, user) alone (recopt.rng.keyed_integers), so they
    do not change with the batch or the worker that draws them. Each user draws about twice the
    number its seen share makes necessary (rows grouped by that width); duplicates keep their
    first draw; the rare user still short falls back to a keyed permutation of the catalog."""
    n_items = inp.seen.shape[1]
    seen = seen_bitset(inp.seen)
    n_seen = np.diff(inp.seen.indptr).astype(np.int64)
    need = np.ceil(2 * k * n_items / np.maximum(n_items - n_seen, 1)).astype(np.int64) + 16
    width = np.minimum(2 ** np.ceil(np.log2(need)).astype(np.int64), 4 * n_items)
    items = np.full((len(inp.users), k), -1, dtype=np.int64)
    for w in np.unique(width):
        sel = np.flatnonzero(width == w)
        draws = keyed_integers(inp.seed, inp.stream, inp.users[sel], int(w), n_items)
        keys = (np.arange(len(sel), dtype=np.int64)[:, None] * n_items + draws).ravel()
        order = np.argsort(keys, kind="stable")  # equal keys keep draw order: the first draw wins
        first = np.ones(len(keys), dtype=bool)
        first[order[1:]] = keys[order[1:]] != keys[order[:-1]]
        got, _ = first_unseen(sel.astype(np.int64), np.where(first.reshape(draws.shape), draws, -1), seen, k)
        items[sel, :got.shape[1]] = got
    short = np.flatnonzero((items >= 0).sum(axis=1) < np.minimum(k, n_items - n_seen))
    for r in short:  # a user who sees most of a small catalog: a keyed permutation of it
        perm = np.argsort(keyed_integers(inp.seed, inp.stream + "/all", inp.users[r:r + 1], n_items, 2**62)[0])
        got, _ = first_unseen(np.array([r]), perm[None, :], seen, k)
        items[r, :got.shape[1]] = got[0]
    scores = np.where(items >= 0, 1.0 - (np.arange(k) + 0.5) / k, 0.0)
    return items, scores.astype(np.float32)


BASELINES: dict[str, Baseline] = {
    "popularity": Baseline("most-rated unseen train items of the whole catalog", lists=popularity_lists),
    "random": Baseline("uniformly drawn unseen catalog items", lists=random_lists),
    "cf_only": Baseline("the pool ranked by collab alone (u.v; a folded-in factor counts)", component="collab",
                        fallback="popularity"),
    "content_only": Baseline("the pool ranked by content alone (cosine to the user's profile)",
                             component="content", fallback="popularity"),
}


def check_names(names: list[str], key: str = "evaluate.baselines") -> None:
    """Raise ConfigError naming every entry of `names` that is not a baseline of the registry."""
    bad = [f"{key}[{i}]: {n!r} is not one of {', '.join(BASELINES)}" for i, n in enumerate(names) if n not in BASELINES]
    if bad:
        raise ConfigError("; ".join(bad) + " — fix the value in conf/ (or the override)")
