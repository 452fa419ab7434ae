"""Comparisons between runs: paired-bootstrap intervals, both gates, and how stable a choice is.

Every comparison is paired over users: the runs compared are measured on the same
users (those all of them finished, :func:`recopt.runs.common_users`), and every
bootstrap sample resamples those users once for all runs and metrics
(:func:`paired_bootstrap`, the one entry, which checks its input). Interval ends are
the 2.5 % ("lower") and 97.5 % ("higher") order statistics of the samples.

The verdict rules are recopt.gates'; what is compared is decided here:

* gate 1: alpha* against the best baseline (both chosen on validation) on every user,
  and the same comparison per slice, so a lift that lives in one slice shows;
* gate 2: the served ranking of the cold slice (alpha*'s run there is the cold rule)
  against the cold-slice comparator chosen on validation, on the cold slice only;
* stability: the validation users resampled (paired), each resample choosing by the
  selection rule (recopt.selection.winners): how often each candidate wins.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recopt import gates
from recopt.config import SLICES
from recopt.metrics import INTERVAL, shown_in
from recopt.runs import Run, common_users, on_users, user_slices
from recopt.selection import COLD_ROLES, KEY, TIE, winners

_CHUNK_BYTES = 64 * 2**20  # bounds the (samples x users) count block of one bootstrap chunk
GATE_METRICS = tuple(shown_in(INTERVAL))  # recall@10, map@10, ndcg@10 (recopt.metrics registry)


@dataclass(frozen=True)
class Comparison:
    """mean(a) against mean(b) on one metric over the same users, with 95 % paired-bootstrap intervals
    of the difference and of the relative lift mean(a) / mean(b) - 1."""

    metric: str
    users: int
    value: float
    other: float
    diff: float
    diff_lo: float
    diff_hi: float
    lift: float
    lift_lo: float
    lift_hi: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "other": self.other, "diff": self.diff, "diff_ci": [self.diff_lo, self.diff_hi],
                "lift": self.lift, "lift_ci": [self.lift_lo, self.lift_hi], "users": self.users}


@dataclass(frozen=True)
class Gate:
    """One gate's verdict, the runs it compared, over which users, and the numbers."""

    verdict: str
    scope: str                                   # which users, for people
    run: Run | None = None
    against: Run | None = None
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    per_slice: dict[str, tuple[str, Comparison]] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class Gates:
    gate1: Gate
    gate2: Gate
    passed: bool


def _relative(mean_a: NDArray, mean_b: NDArray) -> NDArray[np.float64]:
    """mean_a / mean_b - 1; when mean_b == 0: 0.0 if mean_a == 0, else +-inf (never NaN)."""
    mean_a, mean_b = np.asarray(mean_a, dtype=np.float64), np.asarray(mean_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = mean_a / mean_b - 1.0
    return np.where(mean_b != 0, rel, np.where(mean_a == 0, 0.0, np.copysign(np.inf, mean_a)))


def paired_bootstrap(values: NDArray[np.float64], n_samples: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Column means of `values` (n_users, m) under `n_samples` resamplings of the users.

    Every column sees the same resampled users (a paired bootstrap for all columns at once):
    each sample draws n user indices with replacement (int32 draws), counts them, and takes the
    count-weighted means. Returns (n_samples, m); deterministic for a given `rng` state and input shape.

    Raises ValueError for an input that is not 2-D, has no user, holds NaN or Inf (one NaN
    would poison every sample), or for fewer than one sample.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"values must be a non-empty (users, columns) array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite (a NaN metric would poison every sample)")
    n_samples = operator.index(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n = values.shape[0]
    out = np.empty((n_samples, values.shape[1]))
    chunk = max(1, _CHUNK_BYTES // (16 * n))
    for start in range(0, n_samples, chunk):  # chunks of bootstrap samples
        c = min(chunk, n_samples - start)
        idx = rng.integers(0, n, size=(c, n), dtype=np.int32)
        counts = np.empty((c, n), dtype=np.float64)
        for i in range(c):  # per sample: no (c * n)-sized offset array, a bincount in cache
            counts[i] = np.bincount(idx[i], minlength=n)
        out[start:start + c] = counts @ values / n
    return out


def interval(metric: str, users: int, mean_a: float, mean_b: float, samples_a: NDArray[np.float64],
             samples_b: NDArray[np.float64]) -> Comparison:
    """The difference and relative lift of mean_a over mean_b with their 95 % percentile intervals
    (order statistics, so they never interpolate between infinities)."""
    diffs, rels = samples_a - samples_b, _relative(samples_a, samples_b)
    return Comparison(
        metric=metric, users=users, value=float(mean_a), other=float(mean_b), diff=float(mean_a - mean_b),
        diff_lo=float(np.quantile(diffs, 0.025, method="lower")),
        diff_hi=float(np.quantile(diffs, 0.975, method="higher")),
        lift=float(_relative(mean_a, mean_b)),
        lift_lo=float(np.quantile(rels, 0.025, method="lower")),
        lift_hi=float(np.quantile(rels, 0.975, method="higher")))


def compare_many(reference: Run, others: list[Run], users: NDArray[np.int32], metrics: tuple[str, ...],
                 n_samples: int, rng: np.random.Generator) -> list[dict[str, Comparison]]:
    """Each of `others` against `reference` on `users` (all of them theirs), every metric, all from
    one set of paired resamples."""
    runs = [reference, *others]
    cols = np.column_stack([on_users(r, users, m) for r in runs for m in metrics])
    samples = paired_bootstrap(cols, n_samples, rng)
    means = cols.mean(axis=0)
    k = len(metrics)
    return [{m: interval(m, len(users), means[j * k + i], means[i], samples[:, j * k + i], samples[:, i])
             for i, m in enumerate(metrics)} for j in range(1, len(runs))]


def intervals(star: Run, runs: list[Run], n_samples: int,
              rng: np.random.Generator) -> list[tuple[Run, dict[str, Comparison]]]:
    """Every run that serves every user (not the cold-rule rows) against alpha* on the gate metrics,
    on the users all of them finished."""
    others = [r for r in runs if r is not star and r.role not in COLD_ROLES]
    users = common_users([star, *others])
    if not len(users) or not others:
        return []
    return list(zip(others, compare_many(star, others, users, GATE_METRICS, n_samples, rng)))


def gate1(star: Run, base: Run, data: Any, min_lift: float, n_samples: int, rng: np.random.Generator) -> Gate:
    """alpha* vs the best baseline on every common user and on each slice.

    Args:
        star: alpha*'s run; base: the best baseline's (both chosen on validation).
        data: the fold's evaluation data (its users table gives each user's slice).
        min_lift: evaluate.gate_min_lift; n_samples, rng: the paired bootstrap's.
    Returns:
        The verdict (recopt.gates.gate1_verdict on the lift and the LOWER end of its interval), the
        comparisons on recall@10, map@10 and ndcg@10, and the same verdict per slice.
    """
    users = common_users([star, base])
    if not len(users):
        return Gate(gates.NOT_EVALUATED, "no user both runs served", star, base, reason="no common user")
    overall = compare_many(base, [star], users, GATE_METRICS, n_samples, rng)[0]
    r = overall[KEY]
    labels = user_slices(users, data)
    per_slice = {}
    for name in SLICES:
        sub = users[labels == name]
        if len(sub):
            c = compare_many(base, [star], sub, (KEY,), n_samples, rng)[0][KEY]
            per_slice[name] = (gates.gate1_verdict(c.lift, c.lift_lo, min_lift), c)
    return Gate(gates.gate1_verdict(r.lift, r.lift_lo, min_lift), f"every evaluated user ({len(users)})", star,
                base, overall, per_slice)


def gate2(star: Run, comparator: Run | None, data: Any, n_samples: int, rng: np.random.Generator) -> Gate:
    """The served cold-slice ranking vs the comparator, on the cold slice only.

    Args:
        star: alpha*'s run (its cold-slice users are served by the cold rule).
        comparator: the cold slice's comparator chosen on validation (None: no such baseline).
        data, n_samples, rng: as for :func:`gate1`.
    Returns:
        PASS / INCONCLUSIVE / FAIL by recopt.gates.gate2_verdict, or NOT EVALUATED with the reason (no
        comparator, an empty cold slice).
    """
    if comparator is None:
        return Gate(gates.NOT_EVALUATED, "cold slice", star, None,
                    reason="no content_only or popularity baseline is configured (evaluate.baselines)")
    users = common_users([star, comparator])
    users = users[user_slices(users, data) == "cold"]
    if not len(users):
        return Gate(gates.NOT_EVALUATED, "cold slice (empty)", star, comparator,
                    reason="the cold slice is empty: no evaluated user is without a factor from the fit "
                           "(see split.cold_user_frac and split.cold_user_train_n)")
    c = compare_many(comparator, [star], users, GATE_METRICS, n_samples, rng)[0]
    return Gate(gates.gate2_verdict(c[KEY].diff, c[KEY].diff_hi), f"cold slice ({len(users)} users)",
                star, comparator, c)


def stability(candidates: list[tuple[Any, Run]], users: NDArray[np.int32], n_samples: int,
              rng: np.random.Generator) -> tuple[list[tuple[Any, float]], NDArray[np.int64]]:
    """How often each candidate wins (by the selection rule) over paired resamples of `users`;
    also the winning column of every resample."""
    if not candidates or not len(users):
        return [(c, 0.0) for c, _ in candidates], np.zeros(0, np.int64)
    cols = np.column_stack([on_users(r, users, m) for m in (KEY, TIE) for _, r in candidates])
    means = paired_bootstrap(cols, n_samples, rng)
    c = len(candidates)
    won = winners(means[:, :c], means[:, c:])
    shares = np.bincount(won, minlength=c) / len(won)
    return [(cand, float(s)) for (cand, _), s in zip(candidates, shares)], won
