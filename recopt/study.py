"""The evaluate stage's study: the tune fold makes every choice, the test fold reports on it.

* ``evaluate@tune`` (validation): the alpha grid (``evaluate.alphas`` plus ``alpha``), both
  endpoints, the cold-start grid (content/prior rules ``cold_betas`` x ``cold_priors`` and
  the fold-in hybrid at each grid alpha, each at every ``cold_mmr_lambdas``), the
  baselines and the reference grids, in one pass. It chooses the cold rule, then alpha*
  (searching past an inner edge of the grid, recopt.selection.next_alphas), one alpha per
  slice, the best baseline, the cold-slice comparator and each reference's setting, and
  measures how stable each choice is over resampled validation users.
* ``evaluate@test``: reads that selection -- nothing is chosen on test -- and evaluates every
  alpha tried on validation (information), alpha*, adaptive alpha, both endpoints, the cold
  rule and the seed's rule, the baselines and the chosen references, then compares them
  (recopt.comparisons: intervals against alpha*, the gates).

A pass that hits ``evaluate.time_limit_total_s`` is partial: its checkpoints are kept
and the stage stops with an error saying so (re-running resumes), because a choice or
a gate on part of the users is not the study's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from recopt import comparisons
from recopt.artifacts import ArtifactError, open_artifact
from recopt.baselines import check_names
from recopt.comparisons import Comparison, Gates
from recopt.config import SLICES, Config
from recopt.errors import RecoptError
from recopt.evaluate import EvalData, PartResult, PassResult, evaluate_parts, load_eval_data
from recopt.gates import enforce
from recopt.methods import Part, PartKind
from recopt.rng import stage_rng
from recopt.runlog import log
from recopt.runs import Run, common_users, join, summarise, user_slices
from recopt.selection import (KEY, AlphaSearch, ColdRule, ReferenceChoice, Role, Selection, Stability, choose, edge,
                              next_alphas)

ENDPOINTS = (0.0, 1.0)
COMPARATORS = ("content_only", "popularity")  # gate 2's candidates, on the cold slice


@dataclass
class FoldOutcome:
    """Everything a fold's evaluation produced, for recopt.publish to write."""

    fold: str
    data: EvalData
    passes: list[PassResult]
    runs: list[Run]
    selection: Selection
    started: float
    finished: float
    gates: Gates | None = None
    intervals: list[tuple[Run, dict[str, Comparison]]] = field(default_factory=list)

    def find(self, *roles: Role) -> list[Run]:
        return [r for r in self.runs if r.role in roles]

    @property
    def star(self) -> Run:
        return self.find(Role.ALPHA_STAR)[0]

    @property
    def checkpoints(self) -> dict[Part, object]:
        return {part: path for p in self.passes for part, path in p.checkpoints.items()}


def preflight(cfg: Config) -> None:
    """What the evaluate stage checks before any work: the baselines named exist (ConfigError), and a
    candidate cap below the list length is said, with the numbers (lists are then shorter)."""
    check_names(cfg.evaluate.baselines)
    if cfg.candidates.c_max < cfg.rerank.k_final:
        log.warning("candidates.c_max=%d is below rerank.k_final=%d: every pool-ranked list holds at most %d "
                    "items (raise candidates.c_max to get lists of %d)", cfg.candidates.c_max, cfg.rerank.k_final,
                    cfg.candidates.c_max, cfg.rerank.k_final)


def grid(cfg: Config) -> list[float]:
    """The user's alpha grid: evaluate.alphas with `alpha`."""
    return sorted(set(cfg.evaluate.alphas) | {cfg.alpha})


def cold_parts(cfg: Config) -> tuple[list[Part], list[Part]]:
    """The cold-start grid: content/prior rules and fold-in hybrids, each at every cold MMR weight."""
    v = cfg.evaluate
    rules = [Part(PartKind.COLD, b, prior, lam) for lam in v.cold_mmr_lambdas for b in sorted(v.cold_betas)
             for prior in (v.cold_priors[:1] if b == 0 else v.cold_priors)]  # beta = 0 ignores the prior
    foldin = [Part(PartKind.FOLDIN, a, mmr=lam) for lam in v.cold_mmr_lambdas
              for a in sorted(set(grid(cfg)) | set(ENDPOINTS))]
    return rules, foldin


def tune_parts(cfg: Config) -> tuple[Part, ...]:
    v = cfg.evaluate
    rules, foldin = cold_parts(cfg)
    refs = [Part(PartKind.REFERENCE, lam, "ease", sampled=True) for lam in v.ease_lambdas if "ease" in v.references]
    refs += [Part(PartKind.REFERENCE, float(k), "itemknn", sampled=True) for k in v.knn_ks
             if "itemknn" in v.references]
    return (*[Part(PartKind.ALPHA, a) for a in sorted(set(grid(cfg)) | set(ENDPOINTS))], *rules, *foldin,
            *[Part(PartKind.BASELINE, method=b) for b in v.baselines], *refs)


def _pass(cfg: Config, data: EvalData, parts: tuple[Part, ...], deadline: float, what: str) -> PassResult:
    result = evaluate_parts(cfg, data, parts, deadline=deadline, desc=f"evaluate@{data.fold} {what}")
    if not result.complete:
        raise RecoptError(
            f"evaluate@{data.fold}: stopped at evaluate.time_limit_total_s={cfg.evaluate.time_limit_total_s} after "
            f"{len(result.done)} of {len(result.batches)} user batches; a choice or a gate on part of the users "
            f"is not the study's answer, so nothing was written. The finished batches are checkpointed under "
            f"{cfg.paths.checkpoints}: re-run to resume, or raise evaluate.time_limit_total_s.")
    return result


def served(role: Role, data: EvalData, parts: dict[Part, PartResult], alpha: float, cold: ColdRule) -> Run:
    """The served ranking at `alpha`: its alpha part for users with a factor from the fit, the cold
    rule for the others."""
    return join(role, [(parts[Part(PartKind.ALPHA, alpha)], None), *[(parts[p], None) for p in cold.parts]], data)


def single(role: Role, data: EvalData, parts: dict[Part, PartResult], part: Part) -> Run:
    return join(role, [(parts[part], None)], data)


def _cold_choice(data: EvalData, parts: dict[Part, PartResult], rules: list[Part],
                 foldin: list[Part]) -> tuple[ColdRule, list[tuple[ColdRule, Run]]]:
    """The cold rule: the best content/prior rule, then every fold-in hybrid falling back to it for users
    without a folded-in factor; the best of all on the cold slice (content/prior rules listed first)."""
    plain = [(ColdRule((p,)), single(Role.COLD_GRID, data, parts, p)) for p in rules]
    base = choose([(rule, run.summary, True) for rule, run in plain]) or plain[0][0]
    hybrid = [ColdRule((f, *base.parts)) for f in foldin]
    candidates = plain + [(rule, join(Role.COLD_GRID, [(parts[p], None) for p in rule.parts], data))
                          for rule in hybrid]
    chosen = choose([(rule, run.summary, True) for rule, run in candidates]) or candidates[0][0]
    return chosen, candidates


def _adaptive(data: EvalData, parts: dict[Part, PartResult], alphas: list[float]) -> dict[str, float | None]:
    """One alpha per slice, chosen on that slice's users with a factor from the fit."""
    per_slice: dict[str, float | None] = {}
    for name in SLICES:
        stats = []
        for a in alphas:
            run = join(Role.GRID, [(parts[Part(PartKind.ALPHA, a)], name)], data)
            if len(run.users):
                stats.append((a, run.summary, True))
        per_slice[name] = choose(stats) if stats else None
    return per_slice


def adaptive_run(data: EvalData, parts: dict[Part, PartResult], per_slice: dict[str, float | None],
                 cold: ColdRule) -> Run:
    pieces = [(parts[Part(PartKind.ALPHA, a)], name) for name, a in per_slice.items() if a is not None]
    return join(Role.ADAPTIVE, [*pieces, *[(parts[p], None) for p in cold.parts]], data)


def _references(cfg: Config, data: EvalData, parts: dict[Part, PartResult]) -> dict[str, ReferenceChoice]:
    out = {}
    for method in cfg.evaluate.references:
        cands = [(p, single(Role.REFERENCE_GRID, data, parts, p)) for p in parts
                 if p.kind == PartKind.REFERENCE and p.method == method]
        if not cands:
            continue
        best = choose([(p, r.summary, True) for p, r in cands])
        covered = min(cfg.evaluate.ease_max_items, int((data.items["popularity"] > 0).sum())) \
            if method == "ease" else None
        out[method] = ReferenceChoice(part=Part(PartKind.REFERENCE, best.value, method),
                                      users=int(cands[0][1].summary["users_eval"]),
                                      recall={float(p.value or 0): r.summary[KEY] for p, r in cands},
                                      items_covered=covered)
    return out


def _stability(cfg: Config, alpha_runs: dict[float, Run], base_runs: dict[str, Run],
               cold: list[tuple[ColdRule, Run]]) -> Stability:
    n = cfg.evaluate.bootstrap_samples
    rng = stage_rng(cfg.seed, "evaluate/stability")
    alphas = sorted(alpha_runs)
    a_shares, won = comparisons.stability([(a, alpha_runs[a]) for a in alphas],
                                          common_users(list(alpha_runs.values())), n, rng)
    values = np.asarray(alphas)[won] if len(won) else np.zeros(1)
    b_shares, _ = comparisons.stability(list(base_runs.items()), common_users(list(base_runs.values())), n, rng)
    c_shares, _ = comparisons.stability(cold, common_users([r for _, r in cold]), n, rng)
    return Stability(samples=n, alpha=tuple(a_shares),
                     alpha_range=(float(np.quantile(values, 0.05, method="lower")),
                                  float(np.quantile(values, 0.95, method="higher"))),
                     baseline=tuple(b_shares), cold=tuple(c_shares))


def run_tune(cfg: Config) -> FoldOutcome:
    """Evaluate everything on validation and make every choice.

    Args:
        cfg: the run's config; its candidates@tune, split@tune, embed_load@tune and cf_load@tune are read
            (verified, and refused when built with other values).
    Returns:
        The fold's outcome: every run with its role, the Selection (alpha search, adaptive alpha, cold
        rule, baselines, references, stability) and the passes behind them.
    Raises:
        RecoptError when an input is missing or stale, or the time limit left the pass partial.
    """
    started = time.time()
    deadline = time.perf_counter() + cfg.evaluate.time_limit_total_s
    data = load_eval_data(cfg, "tune", reader="evaluate@tune")
    passes = [_pass(cfg, data, tune_parts(cfg), deadline, "grid")]
    parts = dict(passes[0].parts)
    rules, foldin = cold_parts(cfg)
    cold, cold_candidates = _cold_choice(data, parts, rules, foldin)

    user_grid = grid(cfg)
    tried = list(user_grid)
    alpha_runs = {a: served(Role.GRID, data, parts, a, cold) for a in tried}
    chosen = choose([(a, alpha_runs[a].summary, True) for a in tried])
    added: list[float] = []
    limit = cfg.evaluate.alpha_search_points
    # the search steps by evaluate.alphas' spacing: setting `alpha` (an experiment's value) never refines it
    while points := next_alphas(tried, chosen, cfg.evaluate.alphas, limit - len(added)):
        new = tuple(Part(PartKind.ALPHA, a) for a in points if Part(PartKind.ALPHA, a) not in parts)
        if new:
            passes.append(_pass(cfg, data, new, deadline, f"alpha search {', '.join(map(repr, points))}"))
            parts |= passes[-1].parts
        added += points
        tried = sorted(tried + points)
        alpha_runs |= {a: served(Role.SEARCH, data, parts, a, cold) for a in points}
        chosen = choose([(a, alpha_runs[a].summary, True) for a in tried])

    base_runs = {b: single(Role.BASELINE, data, parts, Part(PartKind.BASELINE, method=b))
                 for b in cfg.evaluate.baselines}
    best_base = choose([(b, r.summary, True) for b, r in base_runs.items()])
    cold_slice = {b: summarise(r, data, user_slices(r.users, data) == "cold") for b, r in base_runs.items()
                  if b in COMPARATORS}
    comparator = choose([(b, s, True) for b, s in cold_slice.items() if s["users_eval"] > 0])
    selection = Selection(
        alpha=AlphaSearch(chosen=chosen, grid=tuple(user_grid), tried=tuple(tried), added=tuple(added),
                          recall={a: alpha_runs[a].summary[KEY] for a in tried}, edge=edge(tried, chosen),
                          limit=limit),
        adaptive=_adaptive(data, parts, tried), cold=cold,
        cold_users=int(len(cold_candidates[0][1].users)),
        cold_recall=tuple((rule, run.summary[KEY]) for rule, run in cold_candidates),
        baseline=best_base, baseline_recall={b: r.summary[KEY] for b, r in base_runs.items()},
        cold_comparator=comparator, references=_references(cfg, data, parts),
        stability=_stability(cfg, alpha_runs, base_runs, cold_candidates))
    runs = _report_runs(data, parts, selection, alpha_runs, base_runs, cold_candidates, seed_rule(cfg))
    return FoldOutcome("tune", data, passes, runs, selection, started, time.time())


def _report_runs(data: EvalData, parts: dict[Part, PartResult], sel: Selection, alpha_runs: dict[float, Run],
                 base_runs: dict[str, Run], cold: list[tuple[ColdRule, Run]], seed: ColdRule) -> list[Run]:
    """Every row of a fold's table, each with the role that says how it was chosen."""
    a = sel.alpha
    runs = [_as(r, Role.ALPHA_STAR if x == a.chosen else Role.SEARCH if x in a.added else Role.GRID)
            for x, r in sorted(alpha_runs.items())]
    runs.append(adaptive_run(data, parts, sel.adaptive, sel.cold))
    runs += [served(Role.ENDPOINT, data, parts, x, sel.cold) for x in ENDPOINTS if x not in alpha_runs]
    runs += [_as(r, Role.COLD_CHOSEN if rule == sel.cold else Role.COLD_SEED if rule == seed else Role.COLD_GRID)
             for rule, r in cold]
    runs += [_as(r, Role.BASELINE_BEST if b == sel.baseline else Role.BASELINE) for b, r in base_runs.items()]
    chosen_refs = {r.part for r in sel.references.values()}
    runs += [single(Role.REFERENCE_CHOSEN if _unsampled(p) in chosen_refs else Role.REFERENCE_GRID, data, parts, p)
             for p in parts if p.kind == PartKind.REFERENCE]
    return runs


def _as(run: Run, role: Role) -> Run:
    run.role = role
    return run


def _unsampled(p: Part) -> Part:
    return Part(p.kind, p.value, p.method, p.mmr)


def seed_rule(cfg: Config) -> ColdRule:
    """The seed's cold rule: content only (beta = 0) at the warm users' MMR weight."""
    return ColdRule((Part(PartKind.COLD, 0.0, cfg.evaluate.cold_priors[0], cfg.rerank.mmr_lambda),))


def read_selection(cfg: Config, reader: str, *, ignore: tuple[str, ...] = ()) -> Selection:
    """evaluate@tune's selection, verified current for `cfg` (keys in `ignore` may differ)."""
    tune = open_artifact(cfg.paths, "evaluate", "tune", reader=reader, config=cfg, ignore=ignore)
    try:
        return Selection.from_json(tune.json("selection"))
    except (KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"{reader}: {tune.path('selection')} is not a selection this version reads ({err}) — "
                            "re-run `dvc repro evaluate@tune`") from None


def test_parts(cfg: Config, sel: Selection) -> tuple[Part, ...]:
    alphas = sorted(set(grid(cfg)) | set(sel.alpha.tried) | set(ENDPOINTS)
                    | {a for a in sel.adaptive.values() if a is not None})
    cold = tuple(dict.fromkeys((*sel.cold.parts, *seed_rule(cfg).parts)))  # the seed's rule, for information
    refs = tuple(r.part for r in sel.references.values())
    return (*[Part(PartKind.ALPHA, a) for a in alphas], *cold,
            *[Part(PartKind.BASELINE, method=b) for b in cfg.evaluate.baselines], *refs)


def run_test(cfg: Config) -> FoldOutcome:
    """Evaluate the validation choices (and, for information, every alpha tried there) on test.

    Args:
        cfg: the run's config; evaluate@tune's selection must be current for it.
    Returns:
        The fold's outcome with the intervals against alpha* and both gates (recopt.comparisons).
    Raises:
        RecoptError when the selection or an input is missing, stale or partial.
    """
    started = time.time()
    sel = read_selection(cfg, "evaluate@test")
    deadline = time.perf_counter() + cfg.evaluate.time_limit_total_s
    data = load_eval_data(cfg, "test", reader="evaluate@test")
    result = _pass(cfg, data, test_parts(cfg, sel), deadline, "report")
    parts = result.parts
    alphas = sorted(set(grid(cfg)) | set(sel.alpha.tried))
    alpha_runs = {a: served(Role.GRID, data, parts, a, sel.cold) for a in alphas}
    base_runs = {b: single(Role.BASELINE, data, parts, Part(PartKind.BASELINE, method=b))
                 for b in cfg.evaluate.baselines}
    seed = seed_rule(cfg)
    cold = [(rule, join(Role.COLD_GRID, [(parts[p], None) for p in rule.parts], data))
            for rule in dict.fromkeys((sel.cold, seed))]
    runs = _report_runs(data, parts, sel, alpha_runs, base_runs, cold, seed)
    outcome = FoldOutcome("test", data, [result], runs, sel, started, time.time())
    n, rng = cfg.evaluate.bootstrap_samples, stage_rng(cfg.seed, "evaluate/bootstrap")
    star = outcome.star
    best = outcome.find(Role.BASELINE_BEST)[0]
    comparator = base_runs.get(sel.cold_comparator or "")
    outcome.intervals = comparisons.intervals(star, runs, n, rng)
    g1 = comparisons.gate1(star, best, data, cfg.evaluate.gate_min_lift, n, rng)
    g2 = comparisons.gate2(star, comparator, data, n, rng)
    outcome.gates = Gates(g1, g2, enforce([g1.verdict, g2.verdict], cfg.evaluate.enforce_inconclusive))
    outcome.finished = time.time()
    return outcome
