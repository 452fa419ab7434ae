"""The verdict rules of the acceptance gates (the comparisons behind them: recopt.comparisons).

* Gate 1: alpha* against the best baseline (chosen on validation) on test Recall@10.
  PASS when the relative lift is >= ``evaluate.gate_min_lift`` AND the lower end of
  its 95 % interval is above 0; INCONCLUSIVE when the lift is large enough but its
  interval reaches 0; FAIL otherwise. The same rule is applied per slice.
* Gate 2: the served cold-start ranking against the stronger (on validation) of
  content-only and popularity, on the cold slice. PASS when the difference is >= 0;
  INCONCLUSIVE when it is below 0 but the upper end of its interval reaches 0 (a
  regression that is not significant); FAIL when the interval lies below 0.
"""

from __future__ import annotations

PASS, INCONCLUSIVE, FAIL, NOT_EVALUATED = "PASS", "INCONCLUSIVE", "FAIL", "NOT EVALUATED"


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
