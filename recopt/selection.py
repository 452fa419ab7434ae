"""What validation chose, how it searched and how stable the choice is -- as typed values -- and the
one table of labels people read.

Selection rule (every choice, on the tune fold only, :func:`choose`): the argmax of
validation Recall@10; ties (equal to 1e-12) go to the higher NDCG@10, then to the
candidate listed first (the smallest alpha or beta, the first baseline in the config).
A candidate that did not finish every user (a partial pass) is never chosen.

The alpha search (:func:`next_alphas`) never stops at an inner edge of the grid: while
alpha* is the lowest (highest) alpha tried and not 0 (1), it steps outward by the
grid's spacing (two points a pass, clamped to [0, 1]); once alpha* is interior it
refines with the midpoints to its neighbours. At most ``evaluate.alpha_search_points``
points are added, every one recorded; when that bound stops the search with alpha*
still at an edge, the selection says so (:attr:`AlphaSearch.edge`).

:class:`Selection` is written to ``selection.json`` by evaluate@tune and read back by
evaluate@test, sweeps and ``recommend`` (:meth:`Selection.from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from recopt.config import Config
from recopt.methods import Part, PartKind

if TYPE_CHECKING:
    from recopt.runs import Run

FORMAT = 3
RULE = "argmax of validation recall@10; ties: higher ndcg@10, then the first listed (smallest value)"
KEY, TIE = "recall@10", "ndcg@10"


class Role(Enum):
    """How a row of a results table came to be there."""

    ALPHA_STAR = "alpha_star"
    GRID = "grid"
    SEARCH = "search"
    ADAPTIVE = "adaptive"
    ENDPOINT = "endpoint"
    COLD_CHOSEN = "cold_chosen"
    COLD_GRID = "cold_grid"
    COLD_SEED = "cold_seed"
    BASELINE_BEST = "baseline_best"
    BASELINE = "baseline"
    REFERENCE_CHOSEN = "reference_chosen"
    REFERENCE_GRID = "reference_grid"
    SWEEP_BEST = "sweep_best"
    SWEEP_JOB = "sweep_job"
    SWEEP_PARTIAL = "sweep_partial"


# the one table of labels: how each role reads in tables, the console, the report and MLflow
ROLE_LABELS: dict[Role, str] = {
    Role.ALPHA_STAR: "alpha* (validation)",
    Role.GRID: "grid (information)",
    Role.SEARCH: "alpha search point (information)",
    Role.ADAPTIVE: "alpha per slice (validation)",
    Role.ENDPOINT: "endpoint (information)",
    Role.COLD_CHOSEN: "cold rule (validation)",
    Role.COLD_GRID: "cold-start grid (information)",
    Role.COLD_SEED: "the seed's cold rule, beta = 0 (information)",
    Role.BASELINE_BEST: "best baseline (validation)",
    Role.BASELINE: "baseline",
    Role.REFERENCE_CHOSEN: "reference, setting chosen on validation",
    Role.REFERENCE_GRID: "reference grid (information)",
    Role.SWEEP_BEST: "best (this sweep)",
    Role.SWEEP_JOB: "",
    Role.SWEEP_PARTIAL: "partial: never chosen",
}
ALPHA_ROLES = (Role.ALPHA_STAR, Role.GRID, Role.SEARCH)      # the alpha curve
COLD_ROLES = (Role.COLD_CHOSEN, Role.COLD_GRID, Role.COLD_SEED)
BASELINE_ROLES = (Role.BASELINE_BEST, Role.BASELINE)
REFERENCE_ROLES = (Role.REFERENCE_CHOSEN, Role.REFERENCE_GRID)


def part_label(part: Part) -> str:
    """A part as people read it: `alpha=0.35`, `cold: beta=0.75 popularity, mmr=0.0`."""
    mmr = "" if part.mmr is None else f", mmr={part.mmr!r}"
    if part.kind == PartKind.ALPHA:
        return f"alpha={part.value!r}"
    if part.kind == PartKind.COLD:
        return f"cold: beta={part.value!r} {part.method}{mmr}"
    if part.kind == PartKind.FOLDIN:
        return f"cold: fold-in alpha={part.value!r}{mmr}"
    if part.kind == PartKind.BASELINE:
        return f"baseline={part.method}"
    return f"reference={part.method}:{part.setting_name}={part.setting!r}"


def run_label(run: Run) -> str:
    """A run's name in every table, on the console and in MLflow: made here, never parsed back."""
    if run.role == Role.ADAPTIVE:
        chosen = ", ".join(f"{p.slice}={p.part.value!r}" for p in run.pieces if p.part.kind == PartKind.ALPHA)
        return f"adaptive ({chosen})"
    if run.role in COLD_ROLES:
        return " | else ".join(part_label(p.part) for p in run.pieces)
    label = part_label(run.main)
    if run.role == Role.ENDPOINT:
        return f"{label} (full re-rank)"
    cold = [f"{' | else '.join(part_label(p.part) for p in run.pieces[1:])} (from the config)"] \
        if run.cold_from_config else []
    return ", ".join([label, *run.overrides, *cold])


def role_label(role: Role) -> str:
    return ROLE_LABELS[role]


@dataclass(frozen=True)
class ColdRule:
    """How users without a factor from the fit are served: its parts in serving order -- a
    content/prior rule alone, or the fold-in hybrid with a content/prior rule for the users
    who have no folded-in factor."""

    parts: tuple[Part, ...]

    @property
    def label(self) -> str:
        return " | else ".join(part_label(p) for p in self.parts)

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.parts]

    @classmethod
    def from_json(cls, d: list[dict[str, Any]]) -> ColdRule:
        return cls(tuple(Part.from_json(p) for p in d))


def config_cold_rule(cfg: Config) -> ColdRule:
    """The cold rule the config states (rerank.cold_beta, cold_prior, cold_mmr_lambda, cold_alpha): where
    no rule chosen on validation applies."""
    r = cfg.rerank
    mmr = r.mmr_lambda if r.cold_mmr_lambda is None else r.cold_mmr_lambda
    base = Part(PartKind.COLD, r.cold_beta, r.cold_prior, mmr)
    return ColdRule((Part(PartKind.FOLDIN, r.cold_alpha, mmr=mmr), base) if r.cold_alpha is not None else (base,))


@dataclass(frozen=True)
class AlphaSearch:
    """The alpha choice and the search behind it (every point on validation)."""

    chosen: float
    grid: tuple[float, ...]           # evaluate.alphas with `alpha`, ascending
    tried: tuple[float, ...]          # every alpha the choice ranged over, ascending
    added: tuple[float, ...]          # what the search added, in evaluation order
    recall: dict[float, float]        # validation recall@10 of each tried alpha
    edge: str | None                  # 'lower' / 'upper': still at an inner edge when the search stopped
    limit: int                        # evaluate.alpha_search_points

    @property
    def limit_reached(self) -> bool:
        return self.edge is not None and len(self.added) >= self.limit


@dataclass(frozen=True)
class ReferenceChoice:
    """A reference's setting chosen on validation (on the seeded tuning sample of users)."""

    part: Part
    users: int
    recall: dict[float, float]        # validation recall@10 of each setting
    items_covered: int | None = None  # EASE: the items its dense matrix covers


@dataclass(frozen=True)
class Stability:
    """How often each candidate wins when the validation users are resampled (paired: the same
    resamples for every candidate of a choice)."""

    samples: int
    alpha: tuple[tuple[float, float], ...]       # (alpha, share of resamples it wins)
    alpha_range: tuple[float, float]             # 5 % .. 95 % quantiles of the winning alpha
    baseline: tuple[tuple[str, float], ...]
    cold: tuple[tuple[ColdRule, float], ...]

    @staticmethod
    def share_of(pairs: tuple[tuple[Any, float], ...], chosen: Any) -> float:
        return next((s for c, s in pairs if c == chosen), 0.0)


@dataclass(frozen=True)
class Selection:
    """Every choice made on validation, with the values behind it."""

    alpha: AlphaSearch
    adaptive: dict[str, float | None]            # slice -> alpha (None: no user of the slice has a factor)
    cold: ColdRule
    cold_users: int
    cold_recall: tuple[tuple[ColdRule, float], ...]
    baseline: str
    baseline_recall: dict[str, float]
    cold_comparator: str | None                  # the stronger of content_only / popularity on the cold slice
    references: dict[str, ReferenceChoice]
    stability: Stability
    rule: str = field(default=RULE)

    @property
    def alpha_star_share(self) -> float:
        return Stability.share_of(self.stability.alpha, self.alpha.chosen)

    def to_json(self) -> dict[str, Any]:
        a, st = self.alpha, self.stability
        return {
            "format": FORMAT, "rule": self.rule,
            "alpha": {"chosen": a.chosen, "grid": list(a.grid), "tried": list(a.tried), "added": list(a.added),
                      KEY: [[x, a.recall[x]] for x in a.tried], "edge": a.edge, "limit": a.limit},
            "adaptive": self.adaptive,
            "cold": {"rule": self.cold.to_json(), "users": self.cold_users,
                     KEY: [[r.to_json(), v] for r, v in self.cold_recall]},
            "baseline": {"chosen": self.baseline, KEY: self.baseline_recall},
            "cold_comparator": self.cold_comparator,
            "references": {n: {"part": r.part.to_json(), "users": r.users, "items_covered": r.items_covered,
                               KEY: [[v, x] for v, x in r.recall.items()]} for n, r in self.references.items()},
            "stability": {"samples": st.samples, "alpha": [list(p) for p in st.alpha],
                          "alpha_range": list(st.alpha_range), "baseline": [list(p) for p in st.baseline],
                          "cold": [[r.to_json(), s] for r, s in st.cold]},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Selection:
        """The selection written by :meth:`to_json`; KeyError / ValueError for another format."""
        if d.get("format") != FORMAT:
            raise ValueError(f"selection format {d.get('format')!r}, expected {FORMAT}")
        a, c, st = d["alpha"], d["cold"], d["stability"]
        return cls(
            alpha=AlphaSearch(chosen=a["chosen"], grid=tuple(a["grid"]), tried=tuple(a["tried"]),
                              added=tuple(a["added"]), recall={x: v for x, v in a[KEY]}, edge=a["edge"],
                              limit=a["limit"]),
            adaptive=dict(d["adaptive"]), cold=ColdRule.from_json(c["rule"]), cold_users=c["users"],
            cold_recall=tuple((ColdRule.from_json(r), v) for r, v in c[KEY]),
            baseline=d["baseline"]["chosen"], baseline_recall=dict(d["baseline"][KEY]),
            cold_comparator=d["cold_comparator"],
            references={n: ReferenceChoice(part=Part.from_json(r["part"]), users=r["users"],
                                           recall={v: x for v, x in r[KEY]},
                                           items_covered=r["items_covered"]) for n, r in d["references"].items()},
            stability=Stability(samples=st["samples"], alpha=tuple((x, s) for x, s in st["alpha"]),
                                alpha_range=(st["alpha_range"][0], st["alpha_range"][1]),
                                baseline=tuple((n, s) for n, s in st["baseline"]),
                                cold=tuple((ColdRule.from_json(r), s) for r, s in st["cold"])),
            rule=d["rule"])


def choose(candidates: list[tuple[Any, dict[str, float], bool]]) -> Any:
    """The selection rule: argmax Recall@10, ties to the higher NDCG@10, then the first listed.

    `candidates` are (what, summary, complete); incomplete ones are never chosen.
    Returns None when no candidate is complete.
    """
    best, best_key = None, None
    for what, summary, complete in candidates:
        if not complete:
            continue
        key = (round(summary[KEY], 12), round(summary.get(TIE, 0.0), 12))
        if best_key is None or key > best_key:
            best, best_key = what, key
    return best


def winners(recall: np.ndarray, ndcg: np.ndarray) -> np.ndarray:
    """The rule of :func:`choose` applied to each row of (samples, candidates) mean matrices: the
    column of the highest recall (to 1e-12), ties to the higher ndcg, then the first column."""
    r, n = np.round(recall, 12), np.round(ndcg, 12)
    best = r == r.max(axis=1, keepdims=True)
    n = np.where(best, n, -np.inf)
    return np.argmax(n == n.max(axis=1, keepdims=True), axis=1)


def edge(tried: tuple[float, ...] | list[float], chosen: float) -> str | None:
    """'lower' / 'upper' when `chosen` is the lowest / highest of 2+ tried values and not 0 / 1."""
    if len(tried) < 2:
        return None
    if chosen == min(tried) and chosen > 0.0:
        return "lower"
    if chosen == max(tried) and chosen < 1.0:
        return "upper"
    return None


def grid_step(grid: tuple[float, ...] | list[float]) -> float:
    """The spacing the search steps by: the grid's smallest gap (0.1 for a one-point grid)."""
    values = sorted(set(grid))
    return float(min(np.diff(values))) if len(values) > 1 else 0.1


def next_alphas(tried: tuple[float, ...] | list[float], chosen: float, grid: tuple[float, ...] | list[float],
                budget: int) -> list[float]:
    """The next points of the alpha search (empty: done), at most `budget` of them.

    At an inner edge: the next two points outward at the grid's spacing (clamped to [0, 1]).
    Interior: the midpoints to alpha*'s neighbours among the tried points, while they are at
    least a quarter of the grid's spacing apart. Rounded to 6 decimals; never a tried point.

    Args:
        tried: every alpha evaluated so far; chosen: the current alpha*; grid: the user's grid (its
            smallest gap is the step); budget: how many more points the search may add.
    Returns:
        The points to evaluate next, in order.
    """
    step, values = grid_step(grid), sorted(set(tried))
    side = edge(values, chosen)
    if side is not None:
        sign = -1.0 if side == "lower" else 1.0
        points = [min(max(chosen + sign * i * step, 0.0), 1.0) for i in (1, 2)]
    else:
        i = values.index(chosen)
        neighbours = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        points = [(chosen + n) / 2 for n in neighbours if abs(n - chosen) >= step / 2 - 1e-9]
    out = []
    for p in (float(round(p, 6)) for p in points):
        if p not in values and p not in out:
            out.append(p)
    return out[:max(budget, 0)]
