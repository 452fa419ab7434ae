"""Tests for recopt.selection: the selection rule (choose, and winners row by row), the alpha search
(edge, next_alphas, and a simulated search on known recall curves), Selection's JSON round trip, and
the labels people read (every Role and PartKind)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recopt import selection as s
from recopt.methods import Part, PartKind
from recopt.runs import Piece, Run
from recopt.selection import (AlphaSearch, ColdRule, ReferenceChoice, Role, Selection, Stability, choose, edge,
                              next_alphas, winners)

GRID = (0.35, 0.5, 0.65)


def _s(recall: float, ndcg: float = 0.0) -> dict[str, float]:
    return {"recall@10": recall, "ndcg@10": ndcg}


# --------------------------------------------------------------------------- choose, winners


def test_choose_is_the_argmax_of_recall():
    assert choose([(0.2, _s(0.1), True), (0.5, _s(0.3), True), (0.8, _s(0.2), True)]) == 0.5


def test_choose_breaks_ties_by_ndcg_then_by_the_first_listed():
    assert choose([(0.2, _s(0.3, 0.1), True), (0.5, _s(0.3, 0.4), True), (0.8, _s(0.3, 0.2), True)]) == 0.5
    assert choose([(0.2, _s(0.3, 0.4), True), (0.5, _s(0.3, 0.4), True)]) == 0.2
    assert choose([(0.8, _s(0.3, 0.4), True), (0.2, _s(0.3, 0.4), True)]) == 0.8  # listed first, not smallest


def test_a_difference_below_1e_12_is_a_tie():
    # the higher recall by 1e-14 loses to the higher ndcg; by 1e-9 it wins
    assert choose([(0.2, _s(0.3 + 1e-14, 0.1), True), (0.5, _s(0.3, 0.4), True)]) == 0.5
    assert choose([(0.2, _s(0.3 + 1e-9, 0.1), True), (0.5, _s(0.3, 0.4), True)]) == 0.2


def test_choose_never_picks_a_partial_run_and_gives_none_when_nothing_is_complete():
    assert choose([(0.2, _s(0.9), False), (0.5, _s(0.3), True)]) == 0.5
    assert choose([(0.2, _s(0.9), False)]) is None
    assert choose([]) is None


# recall and ndcg drawn from a few values (ties are common), some nudged by less than 1e-12
_values = st.sampled_from([0.0, 0.1, 0.25, 0.25 + 1e-14, 0.5, 0.5 - 1e-13, 1.0])


_ndcg = st.sampled_from([0.0, 0.3, 0.3 + 1e-14, 0.7])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_winners_is_choose_applied_to_each_row(data):
    shape = data.draw(st.tuples(st.integers(1, 8), st.integers(1, 6)))
    recall, ndcg = data.draw(arrays(np.float64, shape, elements=_values)), data.draw(arrays(np.float64, shape,
                                                                                             elements=_ndcg))
    want = [choose([(j, _s(r[j], n[j]), True) for j in range(len(r))]) for r, n in zip(recall, ndcg)]
    np.testing.assert_array_equal(winners(recall, ndcg), want)


# --------------------------------------------------------------------------- edge


@pytest.mark.parametrize(("tried", "chosen", "expected"), [
    (GRID, 0.35, "lower"), (GRID, 0.65, "upper"), (GRID, 0.5, None),
    ((0.4,), 0.4, None),                          # one point has no inner edge
    ((0.0, 0.5), 0.0, None), ((0.5, 1.0), 1.0, None),  # 0 and 1 are never an inner edge
    ((0.0, 0.5), 0.5, "upper"), ((0.5, 1.0), 0.5, "lower")])
def test_edge(tried, chosen, expected):
    assert edge(tried, chosen) == expected


# --------------------------------------------------------------------------- next_alphas


@pytest.mark.parametrize(("tried", "chosen", "budget", "expected"), [
    (GRID, 0.35, 6, [0.2, 0.05]),                 # outward, two points at the grid's spacing
    (GRID, 0.65, 6, [0.8, 0.95]),
    ((0.1, 0.2, 0.3), 0.1, 6, [0.0]),             # clamped to 0; the two clamped points are one
    ((0.7, 0.8, 0.9), 0.9, 6, [1.0]),
    ((0.05, 0.2, 0.35, 0.5, 0.65), 0.05, 6, [0.0]),  # the second outward point would be -0.25
    (GRID, 0.5, 6, [0.425, 0.575]),               # interior: midpoints to both neighbours
    ((0.0, 0.35, 0.5, 0.65), 0.0, 6, [0.175]),    # at 0 (not an inner edge): the one neighbour's midpoint
    ((0.35, 0.425, 0.5, 0.65), 0.425, 6, [0.3875, 0.4625]),  # neighbours half a step away: still refined
    ((0.35, 0.3875, 0.425, 0.4625, 0.5, 0.65), 0.4625, 6, []),  # below half a step: the resolution, done
    (GRID, 0.35, 1, [0.2]), (GRID, 0.5, 1, [0.425]), (GRID, 0.35, 0, []), (GRID, 0.35, -2, []),  # budget
])
def test_next_alphas(tried, chosen, budget, expected):
    assert next_alphas(tried, chosen, GRID, budget) == expected


def test_next_alphas_never_return_a_tried_point_even_when_rounding_makes_one():
    # a grid finer than the 6-decimal rounding: both outward points round back to alpha* itself
    fine = (0.3, 0.3000001)
    assert next_alphas(fine, 0.3, fine, 6) == []
    assert next_alphas((0.0, 0.000001), 0.0, (0.0, 0.000001), 6) == []   # the midpoint rounds onto a tried one


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40).map(lambda i: i / 40), min_size=1, max_size=8, unique=True),
       st.data(), st.integers(0, 4))
def test_next_alphas_stay_in_the_unit_interval_never_repeat_and_keep_the_budget(tried, data, budget):
    chosen = data.draw(st.sampled_from(tried))
    out = next_alphas(tried, chosen, GRID, budget)
    assert all(0.0 <= a <= 1.0 for a in out)
    assert not set(out) & set(tried) and len(set(out)) == len(out)
    assert len(out) <= budget


def _search(recall, grid: tuple[float, ...] = GRID, limit: int = 6) -> tuple[float, list[float], list[float]]:
    """The search loop of recopt.study.run_tune on a known curve: (alpha*, tried, added)."""
    tried, added = list(grid), []
    best = lambda: choose([(a, _s(recall(a)), True) for a in tried])  # noqa: E731
    chosen = best()
    while points := next_alphas(tried, chosen, grid, limit - len(added)):
        added += points
        tried = sorted(tried + points)
        chosen = best()
    return chosen, tried, added


def test_a_search_on_a_concave_curve_ends_interior_at_the_best_point_within_its_budget():
    chosen, tried, added = _search(lambda a: -(a - 0.12) ** 2)
    assert len(added) <= 6 and len(tried) == 3 + len(added)
    assert edge(tried, chosen) is None            # it left the grid's lower edge
    assert chosen == min(tried, key=lambda a: abs(a - 0.12)) == 0.125
    lower, upper = max(a for a in tried if a < chosen), min(a for a in tried if a > chosen)
    assert lower < 0.12 < upper                   # the peak is bracketed by tried points


def test_a_search_on_a_curve_peaking_at_0_reaches_0():
    chosen, tried, added = _search(lambda a: -a * a)
    assert chosen == 0.0 and 0.0 in added and len(added) <= 6


def test_a_search_on_a_curve_peaking_past_1_reaches_1_and_a_budget_of_0_keeps_the_grid():
    assert _search(lambda a: a)[0] == 1.0
    assert _search(lambda a: -(a - 0.12) ** 2, limit=0) == (0.35, list(GRID), [])


# --------------------------------------------------------------------------- Selection JSON


def _selection() -> Selection:
    fold_in = ColdRule((Part(PartKind.FOLDIN, 0.35, mmr=0.0), Part(PartKind.COLD, 0.75, "popularity", 0.25)))
    plain = ColdRule((Part(PartKind.COLD, 0.0, "popularity", 0.25),))
    return Selection(
        alpha=AlphaSearch(chosen=0.275, grid=GRID, tried=(0.2, 0.275, 0.35, 0.5, 0.65), added=(0.2, 0.275),
                          recall={0.2: 0.31, 0.275: 0.32, 0.35: 0.3, 0.5: 0.29, 0.65: 0.2}, edge=None, limit=6),
        adaptive={"cold": None, "warm": 0.275, "heavy": 0.5}, cold=fold_in, cold_users=15,
        cold_recall=((plain, 0.1), (fold_in, 0.2)), baseline="cf_only",
        baseline_recall={"popularity": 0.2, "cf_only": 0.27}, cold_comparator="content_only",
        references={"ease": ReferenceChoice(Part(PartKind.REFERENCE, 200.0, "ease"), 278, {50.0: 0.25, 200.0: 0.27},
                                            items_covered=580),
                    "itemknn": ReferenceChoice(Part(PartKind.REFERENCE, 50.0, "itemknn"), 278,
                                               {20.0: 0.2, 50.0: 0.24})},
        stability=Stability(samples=1000, alpha=((0.2, 0.25), (0.275, 0.6), (0.35, 0.15)), alpha_range=(0.2, 0.35),
                            baseline=(("popularity", 0.1), ("cf_only", 0.9)), cold=((plain, 0.3), (fold_in, 0.7))))


def test_a_selection_survives_its_json_file():
    sel = _selection()
    again = Selection.from_json(json.loads(json.dumps(sel.to_json())))
    assert again == sel
    assert again.alpha_star_share == 0.6 and again.alpha.recall[0.275] == 0.32


@pytest.mark.parametrize("fmt", [2, None, "3"])
def test_a_selection_of_another_format_is_refused(fmt):
    d = _selection().to_json() | {"format": fmt}
    with pytest.raises(ValueError, match=f"selection format {fmt!r}, expected {s.FORMAT}"):
        Selection.from_json(d)


# --------------------------------------------------------------------------- labels


PARTS = {
    Part(PartKind.ALPHA, 0.125): "alpha=0.125",
    Part(PartKind.COLD, 0.75, "popularity"): "cold: beta=0.75 popularity",
    Part(PartKind.COLD, 0.75, "quality", 0.0): "cold: beta=0.75 quality, mmr=0.0",
    Part(PartKind.FOLDIN, 0.35, mmr=0.25): "cold: fold-in alpha=0.35, mmr=0.25",
    Part(PartKind.BASELINE, method="cf_only"): "baseline=cf_only",
    Part(PartKind.REFERENCE, 200.0, "ease"): "reference=ease:lambda=200.0",
    Part(PartKind.REFERENCE, 50.0, "itemknn"): "reference=itemknn:k=50",
}


def test_part_label_of_every_kind():
    assert {p.kind for p in PARTS} == set(PartKind)
    for part, label in PARTS.items():
        assert s.part_label(part) == label
    assert s.part_label(Part(PartKind.ALPHA, 0.12)) != s.part_label(Part(PartKind.ALPHA, 0.125))


def _run(role: Role, *pieces: Piece, overrides: tuple[str, ...] = (), from_config: bool = False) -> Run:
    return Run(role=role, pieces=pieces, users=np.zeros(0, np.int32), top=np.zeros((0, 10), np.int32),
               per_user={}, seconds=0.0, overrides=overrides, cold_from_config=from_config)


COLD = (Piece(Part(PartKind.FOLDIN, 0.35, mmr=0.25)), Piece(Part(PartKind.COLD, 0.0, "popularity")))
ALPHA = Piece(Part(PartKind.ALPHA, 0.3125))
LABELS = {
    Role.ADAPTIVE: ((Piece(Part(PartKind.ALPHA, 0.3125), "warm"), Piece(Part(PartKind.ALPHA, 0.5), "heavy"), *COLD),
                    "adaptive (warm=0.3125, heavy=0.5)"),
    Role.ENDPOINT: ((Piece(Part(PartKind.ALPHA, 0.0)), *COLD), "alpha=0.0 (full re-rank)"),
    **{r: (COLD, "cold: fold-in alpha=0.35, mmr=0.25 | else cold: beta=0.0 popularity") for r in s.COLD_ROLES},
    **{r: ((ALPHA, *COLD), "alpha=0.3125") for r in (Role.ALPHA_STAR, Role.GRID, Role.SEARCH, Role.SWEEP_BEST,
                                                      Role.SWEEP_JOB, Role.SWEEP_PARTIAL)},
    **{r: ((Piece(Part(PartKind.BASELINE, method="popularity")),), "baseline=popularity") for r in s.BASELINE_ROLES},
    **{r: ((Piece(Part(PartKind.REFERENCE, 20.0, "itemknn")),), "reference=itemknn:k=20") for r in s.REFERENCE_ROLES},
}


def test_run_label_of_every_role():
    assert set(LABELS) == set(Role)
    for role, (pieces, label) in LABELS.items():
        assert s.run_label(_run(role, *pieces)) == label, role


def test_a_sweep_job_label_carries_its_overrides_and_a_cold_rule_from_the_config():
    run = _run(Role.SWEEP_JOB, ALPHA, *COLD, overrides=("rerank.mmr_lambda=0.1",), from_config=True)
    assert s.run_label(run) == ("alpha=0.3125, rerank.mmr_lambda=0.1, cold: fold-in alpha=0.35, mmr=0.25 | else "
                                "cold: beta=0.0 popularity (from the config)")


def test_every_role_has_a_distinct_label_in_the_one_table(monkeypatch):
    assert set(s.ROLE_LABELS) == set(Role)
    shown = [s.ROLE_LABELS[r] for r in Role if r != Role.SWEEP_JOB]  # a plain sweep job has no mark
    assert all(shown) and len(set(shown)) == len(shown)
    for role in Role:  # role_label reads the table, nothing else
        monkeypatch.setitem(s.ROLE_LABELS, role, f"<{role.value}>")
        assert s.role_label(role) == f"<{role.value}>"
