"""Runs (what a table row is) joined from parts, and their summaries.

A run serves every evaluated user of the fold: an alpha run takes users with a CF
factor from the fit from its alpha part and the others from the cold rule's parts;
the adaptive run takes each such user from the alpha part chosen for the user's
slice. Pieces are taken in order and the first piece holding a user serves that
user, so a cold rule "fold-in hybrid, else content/prior" is two pieces. Baselines
and references are single parts. A run carries its pieces and its role
(recopt.selection.Role), never a name: labels are made for people at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt import metrics
from recopt.config import SLICES
from recopt.evaluate import EvalData, PartResult
from recopt.methods import Part, PartKind
from recopt.selection import Role


@dataclass(frozen=True)
class Piece:
    """A part, restricted to one slice's users (None: all the users it served)."""

    part: Part
    slice: str | None = None


@dataclass
class Run:
    """One row of a results table, over the users it served (ascending)."""

    role: Role
    pieces: tuple[Piece, ...]
    users: NDArray[np.int32]
    top: NDArray[np.int32]
    per_user: dict[str, NDArray[np.float64]]
    seconds: float
    complete: bool = True
    summary: dict[str, float] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()          # a sweep job's other swept keys (`rerank.mmr_lambda=0.1`)
    config: dict[str, str] = field(default_factory=dict)   # a sweep job's own flattened config
    cold_from_config: bool = False           # a sweep job whose cold rule is the config's, not validation's
    slice_rows: list[dict[str, Any]] | None = field(default=None, repr=False)  # slice_summaries, once

    @property
    def alpha(self) -> float | None:
        """The alpha serving users with a factor from the fit (None when no single alpha does)."""
        alphas = {p.part.value for p in self.pieces if p.part.kind == PartKind.ALPHA}
        return float(next(iter(alphas))) if len(alphas) == 1 and self.role != Role.ADAPTIVE else None

    @property
    def main(self) -> Part:
        """The run's first part (the one that names it)."""
        return self.pieces[0].part

    @property
    def fallback_users(self) -> int:
        """Users its fallback served (recopt.baselines)."""
        return int(self.per_user["fallback"].sum()) if "fallback" in self.per_user else 0


def combine(pieces: list[tuple[NDArray[np.int32], dict[str, NDArray], str | None]],
            data: EvalData) -> tuple[NDArray[np.int32], dict[str, NDArray]]:
    """Rows of several parts as one run's: each piece is (users ascending, arrays with a row per user, the
    slice it keeps or None); the first piece holding a user serves that user. Returns (users ascending,
    arrays)."""
    masks = [None if keep is None else user_slices(users, data) == keep for users, _, keep in pieces]
    take = lambda a, m: a if m is None else a[m]  # noqa: E731
    if not pieces:
        return np.zeros(0, np.int32), {}
    users = np.concatenate([take(u, m) for (u, _, _), m in zip(pieces, masks)])
    _, first = np.unique(users, return_index=True)  # ascending users, each from its first piece
    arrays = {k: np.concatenate([take(a[k], m) for (_, a, _), m in zip(pieces, masks)])[first]
              for k in pieces[0][1]}
    return users[first], arrays


def join(role: Role, pieces: list[tuple[PartResult, str | None]], data: EvalData, *, complete: bool = True,
         overrides: tuple[str, ...] = (), config: dict[str, str] | None = None) -> Run:
    """A run made of parts, each restricted to one slice's users or taken whole (:func:`combine`).

    Args:
        role: how the row came to be (recopt.selection.Role).
        pieces: (a part's results, the slice kept or None), in serving order.
        data: the fold's evaluation data.
        complete: False for a partial pass (never chosen).
        overrides, config: a sweep job's other swept keys and its own flattened config.
    Returns:
        The run, its summary computed.
    """
    users, arrays = combine([(p.users, {"top": p.top, **p.per_user}, keep) for p, keep in pieces], data)
    top = arrays.pop("top", np.zeros((0, 0), np.int32))
    run = Run(role=role, pieces=tuple(Piece(p.part, keep) for p, keep in pieces), users=users, top=top,
              per_user=arrays, seconds=round(sum(p.seconds for p, _ in pieces), 3), complete=complete,
              overrides=overrides, config=config or {})
    run.summary = summarise(run, data)
    return run


def _users(data: EvalData) -> tuple[NDArray[np.int32], pl.DataFrame]:
    """The evaluated users ascending, and their table in that order."""
    table = data.users
    users = table["user"].to_numpy()
    if len(users) > 1 and not np.all(users[1:] > users[:-1]):
        table = table.sort("user")
        users = table["user"].to_numpy()
    return users, table


def summarise(run: Run, data: EvalData, users: NDArray[np.bool_] | None = None) -> dict[str, float]:
    """Means over the run's users (or the subset `users`) of every per-user metric, the catalog metrics of
    the registry, pool recall and the mean pool size."""
    pick = (lambda a: a) if users is None else (lambda a: a[users])
    s = metrics.summarise({k: pick(v) for k, v in run.per_user.items()})
    top = pick(run.top)
    s |= metrics.catalog_metrics(top, data.popularity_share)
    index, table = _users(data)
    pos = np.searchsorted(index, pick(run.users))
    for key, column in (("pool_recall", "pool_recall"), ("mean_cand", "pool_size")):
        s[key] = float(table[column].to_numpy()[pos].astype(np.float64).mean()) if len(pos) else 0.0
    s["users_eval"] = float(len(top))
    return s


def user_slices(users: NDArray[np.int32], data: EvalData) -> NDArray[np.str_]:
    """The slice label of each user (all must be evaluated users)."""
    index, table = _users(data)
    return table["slice"].to_numpy()[np.searchsorted(index, users)]


def slice_summaries(run: Run, data: EvalData) -> list[dict[str, Any]]:
    """The run's summary on each slice (users, then every summary value); computed once per run."""
    if run.slice_rows is None:
        labels = user_slices(run.users, data)
        run.slice_rows = [{"slice": name, "users": int((labels == name).sum()), **summarise(run, data, labels == name)}
                          for name in SLICES]
    return run.slice_rows


def common_users(runs: list[Run]) -> NDArray[np.int32]:
    """Users every run finished (comparisons are only ever made on these)."""
    if not runs:
        return np.zeros(0, np.int32)
    users = runs[0].users
    for r in runs[1:]:
        if r.users is not users and not np.array_equal(r.users, users):  # most runs share their users
            users = np.intersect1d(users, r.users)
    return users


def on_users(run: Run, users: NDArray[np.int32], metric: str) -> NDArray[np.float64]:
    """The run's per-user `metric` for `users` (all of them must be the run's users)."""
    return run.per_user[metric][np.searchsorted(run.users, users)]


def restrict(run: Run, users: NDArray[np.int32], data: EvalData) -> Run:
    """The run on `users` only (all of them its users), summaries recomputed."""
    pos = np.searchsorted(run.users, users)
    out = Run(role=run.role, pieces=run.pieces, users=run.users[pos], top=run.top[pos],
              per_user={k: v[pos] for k, v in run.per_user.items()}, seconds=run.seconds, complete=run.complete,
              overrides=run.overrides, config=run.config, cold_from_config=run.cold_from_config)
    out.summary = summarise(out, data)
    return out

