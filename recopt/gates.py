"""Paired-bootstrap intervals and the acceptance gates.

Intervals: a paired bootstrap over evaluated users -- every compared run is measured
on the same users (those all of them finished), and every sample resamples those
users once for all runs and metrics (:func:`bootstrap_means`). Interval ends are the
2.5% ("lower") and 97.5% ("higher") order statistics of the samples.

Gates (on the test fold; every choice behind them was made on validation):

* Gate 1: alpha* against the best baseline on Recall@10. PASS when the relative lift
  is >= ``evaluate.gate_min_lift`` AND its 95% interval lies above 0; INCONCLUSIVE
  when the lift is large enough but its interval reaches 0; FAIL otherwise.
* Gate 2: the served cold-start ranking against the stronger (on validation) of
  content-only and popularity, on the cold slice. PASS when the difference is >= 0;
  INCONCLUSIVE when it is below 0 but its interval reaches 0 (a regression that is
  not significant); FAIL when the interval lies below 0 (a significant regression).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Bounds the (samples x users) count block of bootstrap_means.
_CHUNK_BYTES = 64 * 2**20
PASS, INCONCLUSIVE, FAIL = "PASS", "INCONCLUSIVE", "FAIL"


@dataclass(frozen=True)
class BootstrapResult:
    """Paired-bootstrap 95% percentile intervals for mean(a) - mean(b) and mean(a)/mean(b) - 1."""

    diff: float
    diff_lo: float
    diff_hi: float
    rel: float
    rel_lo: float
    rel_hi: float


def _relative(mean_a: NDArray, mean_b: NDArray) -> NDArray[np.float64]:
    """mean_a / mean_b - 1; when mean_b == 0: 0.0 if mean_a == 0, else +-inf (never NaN)."""
    mean_a, mean_b = np.asarray(mean_a, dtype=np.float64), np.asarray(mean_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = mean_a / mean_b - 1.0
    return np.where(mean_b != 0, rel, np.where(mean_a == 0, 0.0, np.copysign(np.inf, mean_a)))


def bootstrap_means(values: NDArray[np.float64], n_samples: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Column means of `values` (n_users, m) under `n_samples` resamplings of the users.

    Every column sees the same resampled users (a paired bootstrap for all columns at
    once): each sample draws n user indices with replacement, counts them, and takes
    the count-weighted means. Returns (n_samples, m). Deterministic for a given `rng`
    state and input shape.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    out = np.empty((n_samples, values.shape[1]))
    chunk = max(1, _CHUNK_BYTES // (16 * max(n, 1)))
    for start in range(0, n_samples, chunk):  # chunks of bootstrap samples
        c = min(chunk, n_samples - start)
        idx = rng.integers(0, n, size=(c, n)) + (np.arange(c) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
        out[start:start + c] = counts @ values / n
    return out


def paired_bootstrap(
    a: NDArray[np.float64], b: NDArray[np.float64], n_samples: int, rng: np.random.Generator
) -> BootstrapResult:
    """Paired bootstrap over users of mean(a) - mean(b) (a, b per-user metrics, same users).

    Each sample resamples users with replacement and applies the same indices to a and
    b. Interval ends are the 2.5% ("lower") and 97.5% ("higher") order statistics, so
    they never interpolate between infinities; ``rel`` follows :func:`_relative`'s rule.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"a and b must be non-empty 1-D arrays of equal shape, got {a.shape} and {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite (a NaN metric would poison every sample)")
    n_samples = operator.index(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    means = bootstrap_means(np.column_stack([a, b]), n_samples, rng)
    return interval(a.mean(), b.mean(), means[:, 0], means[:, 1])


def interval(mean_a: float, mean_b: float, samples_a: NDArray[np.float64],
             samples_b: NDArray[np.float64]) -> BootstrapResult:
    """The difference and relative lift of mean_a over mean_b with their 95% percentile intervals."""
    diffs, rels = samples_a - samples_b, _relative(samples_a, samples_b)
    return BootstrapResult(
        diff=float(mean_a - mean_b),
        diff_lo=float(np.quantile(diffs, 0.025, method="lower")),
        diff_hi=float(np.quantile(diffs, 0.975, method="higher")),
        rel=float(_relative(mean_a, mean_b)),
        rel_lo=float(np.quantile(rels, 0.025, method="lower")),
        rel_hi=float(np.quantile(rels, 0.975, method="higher")),
    )


def gate1_verdict(lift: float, lift_lo: float, min_lift: float) -> str:
    """PASS / INCONCLUSIVE / FAIL for a relative lift and the lower end of its interval."""
    if lift >= min_lift and lift_lo > 0:
        return PASS
    return INCONCLUSIVE if lift >= min_lift else FAIL


def gate2_verdict(diff: float, diff_hi: float) -> str:
    """PASS when no regression, INCONCLUSIVE for a non-significant one, FAIL for a significant one."""
    if diff >= 0:
        return PASS
    return INCONCLUSIVE if diff_hi >= 0 else FAIL


def enforce(verdicts: list[str], inconclusive_fails: bool) -> bool:
    """Whether the gates, as enforced, hold."""
    bad = {FAIL, INCONCLUSIVE} if inconclusive_fails else {FAIL}
    return not any(v in bad for v in verdicts)
