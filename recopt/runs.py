"""Runs (what a table row is) joined from parts, their summaries, and the selection rules.

A run serves every evaluated user of the fold: an alpha run takes users with a CF
factor from its alpha part and the others from the cold-start part; the adaptive
run takes each user with a CF factor from the alpha part chosen for the user's
slice. Baselines and references are single parts.

Selection (made on the tune fold only, by :func:`choose`): the argmax of
validation Recall@10; ties (equal to 1e-12) go to the higher NDCG@10, then to the
candidate listed first (the smallest alpha or beta, the first baseline in the
config). A run that did not finish every user (a partial pass) is never selected.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt import metrics
from recopt.evaluate import EvalData, PartResult

KEY = "recall@10"
TIE = "ndcg@10"
SLICES = ("cold", "warm", "heavy")


@dataclass
class Run:
    """One row of a results table, over the users it served (ascending)."""

    name: str
    kind: str                        # alpha | adaptive | endpoint | cold | baseline | reference
    users: NDArray[np.int32]
    top: NDArray[np.int32]
    per_user: dict[str, NDArray[np.float64]]
    seconds: float
    alpha: float | None = None
    chosen: str = ""                 # how the row was chosen, e.g. "alpha* (validation)"
    pieces: list[tuple[str, str | None]] = field(default_factory=list)  # (part name, slice kept or None: all)
    complete: bool = True
    summary: dict[str, float] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)   # a sweep job's own flattened config


def join(name: str, kind: str, pieces: list[tuple[PartResult, str | None]], data: EvalData,
         *, alpha: float | None = None, complete: bool = True) -> Run:
    """A run made of parts, each restricted to one slice's users or taken whole; users ascending."""
    masks = [None if keep is None else user_slices(p.users, data) == keep for p, keep in pieces]
    take = lambda a, m: a if m is None else a[m]  # noqa: E731
    users = np.concatenate([take(p.users, m) for (p, _), m in zip(pieces, masks)])
    order = np.argsort(users, kind="stable")
    top = np.concatenate([take(p.top, m) for (p, _), m in zip(pieces, masks)])[order]
    names = pieces[0][0].per_user.keys() if pieces else []
    per_user = {k: np.concatenate([take(p.per_user[k], m) for (p, _), m in zip(pieces, masks)])[order]
                for k in names}
    run = Run(name=name, kind=kind, users=users[order], top=top, per_user=per_user, alpha=alpha,
              seconds=round(sum(p.seconds for p, _ in pieces), 3),
              pieces=[(p.part.name, keep) for p, keep in pieces], complete=complete)
    run.summary = summarise(run, data)
    return run


def summarise(run: Run, data: EvalData, users: NDArray[np.bool_] | None = None) -> dict[str, float]:
    """Means over the run's users (or the subset `users`), coverage@10, novelty@10, pool recall."""
    pick = (lambda a: a) if users is None else (lambda a: a[users])
    s = metrics.summarise({k: pick(v) for k, v in run.per_user.items()})
    top = pick(run.top)
    s["coverage@10"] = metrics.coverage_at_k(top, len(data.items), 10) if len(top) else 0.0
    s["novelty@10"] = metrics.novelty_at_k(top, data.popularity_share, 10) if len(top) else 0.0
    ev = data.users.filter(pl.col("user").is_in(pl.Series(pick(run.users)).implode()))
    s["pool_recall"] = float(ev["pool_recall"].mean() or 0.0)
    s["mean_cand"] = float(ev["pool_size"].mean() or 0.0)
    s["users_eval"] = float(len(top))
    return s


def user_slices(users: NDArray[np.int32], data: EvalData) -> NDArray[np.str_]:
    """The slice label of each user (all must be evaluated users)."""
    table = data.users.select("user", "slice").sort("user")
    pos = np.searchsorted(table["user"].to_numpy(), users)
    return table["slice"].to_numpy()[pos]


def slice_summaries(run: Run, data: EvalData) -> list[dict[str, Any]]:
    labels = user_slices(run.users, data)
    return [{"run": run.name, "slice": name, "users": int((labels == name).sum()),
             **summarise(run, data, labels == name)} for name in SLICES]


def choose(candidates: list[tuple[Any, dict[str, float], bool]]) -> Any:
    """The selection rule: argmax Recall@10, ties to the higher NDCG@10, then the first listed.

    `candidates` are (label, summary, complete); incomplete ones are never chosen.
    Returns None when no candidate is complete.
    """
    best, best_key = None, None
    for label, summary, complete in candidates:
        if not complete:
            continue
        key = (round(summary[KEY], 12), round(summary.get(TIE, 0.0), 12))
        if best_key is None or key > best_key:
            best, best_key = label, key
    return best


def edge(grid: list[float], chosen: float) -> str | None:
    """'lower' / 'upper' when `chosen` is the smallest / largest of a grid of 2+ values."""
    if len(grid) < 2:
        return None
    return "lower" if chosen == min(grid) else "upper" if chosen == max(grid) else None


def refine_points(grid: list[float], chosen: float) -> list[float]:
    """Points around `chosen`: midpoints to its grid neighbours; at an edge, half a step
    outward (clipped to [0, 1]). Rounded to 6 decimals; never a point already in the grid."""
    values = sorted(set(grid))
    i = values.index(chosen)
    step = min(np.diff(values)) if len(values) > 1 else 0.1
    below = (values[i - 1] + chosen) / 2 if i > 0 else chosen - step / 2
    above = (values[i + 1] + chosen) / 2 if i + 1 < len(values) else chosen + step / 2
    points = {float(round(min(max(x, 0.0), 1.0), 6)) for x in (below, above)}
    return sorted(p for p in points if p not in set(values))


def common_users(runs: list[Run]) -> NDArray[np.int32]:
    """Users every run finished (comparisons are only ever made on these)."""
    if not runs:
        return np.zeros(0, np.int32)
    users = runs[0].users
    for r in runs[1:]:
        users = np.intersect1d(users, r.users)
    return users


def on_users(run: Run, users: NDArray[np.int32], metric: str) -> NDArray[np.float64]:
    """The run's per-user `metric` for `users` (all of them must be the run's users)."""
    return run.per_user[metric][np.searchsorted(run.users, users)]


def restrict(run: Run, users: NDArray[np.int32], data: EvalData) -> Run:
    """The run on `users` only (all of them its users), summaries recomputed."""
    pos = np.searchsorted(run.users, users)
    out = Run(name=run.name, kind=run.kind, users=run.users[pos], top=run.top[pos],
              per_user={k: v[pos] for k, v in run.per_user.items()}, seconds=run.seconds, alpha=run.alpha,
              chosen=run.chosen, pieces=run.pieces, complete=run.complete, config=run.config)
    out.summary = summarise(out, data)
    return out


def save_run(run: Run, path: Path) -> None:
    """A run's per-user arrays (a sweep job's result), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npz")
    np.savez(tmp, users=run.users, top=run.top, **{f"m.{k}": v for k, v in run.per_user.items()})
    os.replace(tmp, path)


def load_run(path: Path, info: dict[str, Any], data: EvalData) -> Run:
    with np.load(path) as z:
        run = Run(name=info["run"], kind="alpha", users=z["users"], top=z["top"],
                  per_user={n[2:]: z[n] for n in z.files if n.startswith("m.")}, seconds=info["seconds"],
                  alpha=info["alpha"], complete=info["complete"], config=info.get("config", {}))
    run.summary = summarise(run, data)
    return run
