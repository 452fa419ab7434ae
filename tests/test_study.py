"""Tests for recopt.study's adaptive alpha (one alpha per slice, chosen on that slice's users) on a
constructed case and on the tiny pipeline's validation fold, whose best alpha differs by slice; and for
recopt.publish.write_dvc_metrics (the configured alpha's run next to alpha*'s)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from recopt.config import Config
from recopt.layout import metrics_path
from recopt.methods import Part, PartKind
from recopt.publish import write_dvc_metrics
from recopt.runs import slice_summaries
from recopt.selection import ALPHA_ROLES, ColdRule, Role, choose
from recopt.study import FoldOutcome, _adaptive, adaptive_run, run_tune
from tests.fakes import fake_data, ids, part_result

# --------------------------------------------------------------------------- a constructed case

# 10 warm and 5 heavy users with a factor from the fit, 3 cold ones without
DATA = fake_data(["warm"] * 10 + ["heavy"] * 5 + ["cold"] * 3)
SERVED = np.concatenate([ids(DATA, "warm"), ids(DATA, "heavy")])
COLD = Part(PartKind.COLD, 0.0, "popularity")


def _parts() -> dict[Part, object]:
    """alpha 0.3 is best on warm users (0.5 vs 0.4) and alpha 0.6 on heavy ones (0.9 vs 0.0); on all users
    together 0.6 wins (0.567 vs 0.333), so a choice on all users would give warm users 0.6."""
    recall = {0.3: [0.5] * 10 + [0.0] * 5, 0.6: [0.4] * 10 + [0.9] * 5}
    parts = {Part(PartKind.ALPHA, a): part_result(Part(PartKind.ALPHA, a), SERVED, {"recall@10": r, "ndcg@10": r})
             for a, r in recall.items()}
    parts[COLD] = part_result(COLD, ids(DATA, "cold"), {"recall@10": [0.2] * 3, "ndcg@10": [0.2] * 3})
    return parts


def test_adaptive_chooses_each_slices_alpha_on_that_slices_users():
    assert _adaptive(DATA, _parts(), [0.3, 0.6]) == {"cold": None, "warm": 0.3, "heavy": 0.6}


def test_the_adaptive_run_serves_each_slice_by_its_alpha_and_the_rest_by_the_cold_rule():
    parts = _parts()
    run = adaptive_run(DATA, parts, {"cold": None, "warm": 0.3, "heavy": 0.6}, ColdRule((COLD,)))
    np.testing.assert_array_equal(run.users, ids(DATA))
    np.testing.assert_array_equal(run.per_user["recall@10"], [0.5] * 10 + [0.9] * 5 + [0.2] * 3)
    assert run.summary["recall@10"] == pytest.approx((5 + 4.5 + 0.6) / 18)


# --------------------------------------------------------------------------- the tiny pipeline


@pytest.fixture(scope="module")
def tuned(tiny_built: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, FoldOutcome]:
    """evaluate@tune's outcome on the tiny data (its own checkpoints)."""
    cfg = dataclasses.replace(tiny_built, paths=dataclasses.replace(
        tiny_built.paths, checkpoints=str(tmp_path_factory.mktemp("checkpoints"))))
    return cfg, run_tune(cfg)


def _by_slice(run, data) -> dict[str, dict]:
    return {row["slice"]: row for row in slice_summaries(run, data)}


def test_the_best_alpha_differs_by_slice_and_adaptive_finds_each(tuned):
    _, out = tuned
    sel, data = out.selection, out.data
    chosen = {s: a for s, a in sel.adaptive.items() if a is not None}
    assert len(set(chosen.values())) > 1          # the case under test: slices disagree
    runs = {r.alpha: r for r in out.find(*ALPHA_ROLES)}
    assert set(runs) == set(sel.alpha.tried)
    for name, alpha in sel.adaptive.items():
        with_factor = data.users.filter((pl.col("slice") == name) & pl.col("has_cf")).height
        if not with_factor:
            assert alpha is None
            continue
        # the oracle: each served run measured on the slice (summarise over a mask, not a slice-restricted part)
        assert alpha == choose([(a, _by_slice(runs[a], data)[name], True) for a in sorted(runs)])


def test_on_validation_adaptive_is_at_least_every_single_alpha_on_each_slice(tuned):
    _, out = tuned
    adaptive = _by_slice(out.find(Role.ADAPTIVE)[0], out.data)
    singles = out.find(*ALPHA_ROLES, Role.ENDPOINT)
    assert len(singles) == len(out.selection.alpha.tried) + 2
    for run in singles:
        for name, row in _by_slice(run, out.data).items():
            assert adaptive[name]["users"] == row["users"]
            assert adaptive[name]["recall@10"] >= row["recall@10"] - 1e-12, (name, run.alpha)
    # and it is strictly better than alpha* somewhere (otherwise the slices would not disagree)
    star = _by_slice(out.star, out.data)
    assert any(adaptive[s]["recall@10"] > star[s]["recall@10"] for s in star)


# --------------------------------------------------------------------------- publish: metrics/<fold>.json


def _headline(run) -> dict[str, float]:
    return {"recall@10": run.per_user["recall@10"].mean(), "ndcg@10": run.per_user["ndcg@10"].mean(),
            "map@10": run.per_user["map@10"].mean()}


def test_dvc_metrics_hold_the_configured_alphas_run_next_to_alpha_stars(tuned, tmp_path):
    cfg, out = tuned
    docs = {}
    for alpha in (0.5, 0.65):  # two configs differing only in alpha (both on the grid)
        paths = dataclasses.replace(cfg.paths, metrics=str(tmp_path / str(alpha)))
        c = dataclasses.replace(cfg, alpha=alpha, paths=paths)
        write_dvc_metrics(c, out)
        doc = json.loads(metrics_path(c.paths, "metrics", "tune").read_text())
        assert list(doc) == ["val"]  # the fold's own root: keys unique across the folds' files
        docs[alpha] = doc["val"]
    assert out.selection.alpha.chosen not in docs  # alpha* is neither, so the blocks must differ
    for alpha, doc in docs.items():
        mine = [r for r in out.runs if r.role in ALPHA_ROLES and r.main == Part(PartKind.ALPHA, alpha)]
        assert len(mine) == 1
        for metric, value in _headline(mine[0]).items():
            assert doc["alpha"][metric] == pytest.approx(value, abs=1e-6)
        star = doc["star"]
        assert star["alpha"] == out.selection.alpha.chosen
        for metric, value in _headline(out.star).items():
            assert star[metric] == pytest.approx(value, abs=1e-6)
        cold = np.isin(out.star.users, out.data.users.filter(pl.col("slice") == "cold")["user"].to_numpy())
        assert cold.any() and star["cold_recall@10"] == pytest.approx(out.star.per_user["recall@10"][cold].mean(),
                                                                      abs=1e-6)
        assert star["share"] == pytest.approx(out.selection.alpha_star_share, abs=1e-4)
    assert docs[0.5]["alpha"] != docs[0.65]["alpha"] and docs[0.5]["star"] == docs[0.65]["star"]


def test_a_candidate_cap_below_the_list_length_is_said_with_the_numbers(tuned, caplog) -> None:
    from recopt.study import preflight

    cfg, _ = tuned
    small = dataclasses.replace(cfg, candidates=dataclasses.replace(cfg.candidates, c_max=7))
    with caplog.at_level("WARNING", logger="recopt"):
        preflight(small)
    assert "candidates.c_max=7 is below rerank.k_final=50: every pool-ranked list holds at most 7 items" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recopt"):
        preflight(cfg)
    assert "c_max" not in caplog.text
