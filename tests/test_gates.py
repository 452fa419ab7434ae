"""Tests for recopt.gates: the verdict rules on hand-made lifts and differences, and enforcement."""

from __future__ import annotations

import pytest

from recopt import gates as g
from recopt.gates import FAIL, INCONCLUSIVE, PASS

# --------------------------------------------------------------------------- gate 1


@pytest.mark.parametrize(("lift", "lift_lo", "verdict"), [
    (0.10, 0.02, PASS),           # large enough and significant
    (0.05, 1e-9, PASS),           # exactly the minimum lift, interval just above 0
    (0.08, -0.01, INCONCLUSIVE),  # large enough, interval reaches below 0
    (0.08, 0.0, INCONCLUSIVE),    # an interval ending at 0 does not lie above it
    (0.03, 0.01, FAIL),           # significant but too small
    (0.049, 0.02, FAIL),
    (-0.10, -0.20, FAIL),
])
def test_gate1_verdicts(lift, lift_lo, verdict):
    assert g.gate1_verdict(lift, lift_lo, 0.05) == verdict


# --------------------------------------------------------------------------- gate 2


@pytest.mark.parametrize(("diff", "diff_hi", "verdict"), [
    (0.01, 0.03, PASS),
    (0.0, 0.02, PASS),             # no regression
    (-0.01, 0.005, INCONCLUSIVE),  # a regression that is not significant
    (-0.01, 0.0, INCONCLUSIVE),
    (-0.01, -0.001, FAIL),         # a significant regression
])
def test_gate2_verdicts(diff, diff_hi, verdict):
    assert g.gate2_verdict(diff, diff_hi) == verdict


# --------------------------------------------------------------------------- enforce


@pytest.mark.parametrize(("verdicts", "strict", "holds"), [
    ([PASS, PASS], False, True),
    ([PASS, PASS], True, True),
    ([PASS, INCONCLUSIVE], False, True),
    ([PASS, INCONCLUSIVE], True, False),
    ([FAIL, PASS], False, False),
    ([INCONCLUSIVE, FAIL], False, False),
    ([], True, True),
])
def test_enforce(verdicts, strict, holds):
    assert g.enforce(verdicts, inconclusive_fails=strict) is holds
