"""The evaluate stage: the tune fold makes every choice, the test fold reports on it.

* ``evaluate@tune`` (validation): the alpha grid (``evaluate.alphas`` plus ``alpha``),
  alpha = 0 and 1 through the full re-rank, the cold-start grid (``cold_betas`` x
  ``cold_priors``), the baselines and the reference grids, in one pass. It chooses
  alpha*, one alpha per slice (adaptive), beta* and the prior, the best baseline, the
  stronger cold-start comparator and each reference's setting (recopt.runs.choose),
  adds ``refine`` points around alpha* when asked, and writes ``selection.json``.
* ``evaluate@test``: reads that selection -- nothing is chosen on test -- and evaluates
  the grid (for information), alpha*, adaptive alpha, both endpoints, the baselines and
  the chosen references on test, with paired-bootstrap intervals against alpha* and
  the gates (recopt.gates).

A pass that hits ``evaluate.time_limit_total_s`` is partial: its checkpoints are kept
and the stage stops with an error saying so (re-running resumes), because a choice or
a gate on part of the users is not the study's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from recopt.artifacts import open_artifact
from recopt.config import Config
from recopt.errors import RecoptError
from recopt.evaluate import EvalData, PassResult, evaluate_parts, load_eval_data
from recopt.methods import ALPHA, BASELINE, COLD, REFERENCE, Part
from recopt.runs import SLICES, Run, choose, edge, join, refine_points, summarise, user_slices

ENDPOINTS = (0.0, 1.0)


@dataclass
class FoldResult:
    fold: str
    data: EvalData
    passes: list[PassResult]
    runs: list[Run]
    selection: dict[str, Any]
    started: float
    finished: float


def grid(cfg: Config) -> list[float]:
    return sorted(set(cfg.evaluate.alphas) | {cfg.alpha})


def tune_parts(cfg: Config) -> tuple[Part, ...]:
    v = cfg.evaluate
    alphas = sorted(set(grid(cfg)) | set(ENDPOINTS))
    cold = [Part(COLD, b, prior, lam) for lam in v.cold_mmr_lambdas for b in sorted(v.cold_betas)
            for prior in (v.cold_priors[:1] if b == 0 else v.cold_priors)]  # beta = 0 ignores the prior
    refs = [Part(REFERENCE, lam, "ease", sampled=True) for lam in v.ease_lambdas if "ease" in v.references]
    refs += [Part(REFERENCE, float(k), "itemknn", sampled=True) for k in v.knn_ks if "itemknn" in v.references]
    return (*[Part(ALPHA, a) for a in alphas], *cold, *[Part(BASELINE, method=b) for b in v.baselines], *refs)


def _pass(cfg: Config, data: EvalData, parts: tuple[Part, ...], deadline: float, what: str) -> PassResult:
    result = evaluate_parts(cfg, data, parts, deadline=deadline, desc=f"evaluate@{data.fold} {what}")
    if not result.complete:
        raise RecoptError(
            f"evaluate@{data.fold}: stopped at evaluate.time_limit_total_s={cfg.evaluate.time_limit_total_s} after "
            f"{len(result.done)} of {len(result.batches)} user batches; a choice or a gate on part of the users "
            f"is not the study's answer, so nothing was written. The finished batches are checkpointed under "
            f"{cfg.paths.checkpoints}: re-run to resume, or raise evaluate.time_limit_total_s.")
    return result


def cold_part(sel: dict[str, Any]) -> Part:
    """The cold-start part chosen on validation."""
    cs = sel["cold_start"]
    return Part(COLD, float(cs["beta"]), cs["prior"], cs["mmr_lambda"])


def alpha_run(data: EvalData, parts: dict[str, Any], alpha: float, cold: Any, kind: str = ALPHA) -> Run:
    """The served ranking at `alpha`: its alpha part for users with a factor, `cold` for the others."""
    name = f"alpha={alpha!r}" if kind == ALPHA else f"alpha={alpha!r} (full re-rank)"
    return join(name, kind, [(parts[Part(ALPHA, alpha).name], None), (cold, None)], data, alpha=alpha)


def adaptive_run(data: EvalData, parts: dict[str, Any], per_slice: dict[str, float | None], cold: Any) -> Run:
    pieces = [(parts[Part(ALPHA, a).name], name) for name, a in per_slice.items() if a is not None]
    pieces.append((cold, None))
    label = ", ".join(f"{s}={a!r}" for s, a in per_slice.items() if a is not None)
    return join(f"adaptive ({label})", "adaptive", pieces, data)


def single_runs(data: EvalData, parts: dict[str, Any], kinds: tuple[str, ...]) -> list[Run]:
    return [join(p.part.name, p.part.kind, [(p, None)], data) for p in parts.values() if p.part.kind in kinds]


def _select(cfg: Config, data: EvalData, parts: dict[str, Any], alphas: list[float]) -> dict[str, Any]:
    """Every choice, on validation, with the values behind it."""
    cold_parts = [p for p in parts.values() if p.part.kind == COLD]
    cold_runs = [join(p.part.name, COLD, [(p, None)], data) for p in cold_parts]
    # no user without a CF factor: nothing to choose, the seed's beta = 0 is kept
    best_cold = choose([(r, r.summary, True) for r in cold_runs]) if any(len(r.users) for r in cold_runs) \
        else cold_runs[0]
    chosen_part = cold_parts[cold_runs.index(best_cold)].part
    cold = parts[chosen_part.name]
    runs = {a: alpha_run(data, parts, a, cold) for a in alphas}
    alpha_star = choose([(a, r.summary, r.complete) for a, r in runs.items()])
    per_slice: dict[str, float | None] = {}
    for name in SLICES:
        stats = []
        for a in alphas:
            part = join(f"alpha={a!r}", ALPHA, [(parts[Part(ALPHA, a).name], name)], data)
            if len(part.users):
                stats.append((a, part.summary, True))
        per_slice[name] = choose(stats) if stats else None
    base = {r.name: r for r in single_runs(data, parts, (BASELINE,))}
    best_base = choose([(n, r.summary, True) for n, r in base.items()])
    cold_users = {n: r for n, r in base.items() if n in ("baseline=content_only", "baseline=popularity")}
    comparator = None
    if cold_users:
        stats = []
        for n, r in cold_users.items():
            mask = user_slices(r.users, data) == "cold"
            if mask.any():
                stats.append((n, summarise(r, data, mask), True))
        comparator = choose(stats) if stats else None
    refs: dict[str, Any] = {}
    for method, param in (("ease", "lambda"), ("itemknn", "k")):
        cands = [(p.part.value, join(p.part.name, REFERENCE, [(p, None)], data)) for p in parts.values()
                 if p.part.kind == REFERENCE and p.part.method == method]
        if cands:
            chosen = choose([(val, r.summary, True) for val, r in cands])
            refs[method] = {param: chosen if method == "ease" else int(chosen),
                            "users": int(cands[0][1].summary["users_eval"]),
                            "recall@10": {repr(val): r.summary["recall@10"] for val, r in cands}}
            if method == "ease":
                covered = min(cfg.evaluate.ease_max_items, int((data.items["popularity"] > 0).sum()))
                refs[method]["items_covered"] = covered
    return {
        "rule": "argmax of validation recall@10; ties: higher ndcg@10, then the first listed (smallest value)",
        "alpha": {"chosen": alpha_star, "grid": alphas, "edge": edge(alphas, alpha_star) if alpha_star is not None
                  else None, "recall@10": {repr(a): r.summary["recall@10"] for a, r in runs.items()}},
        "adaptive": per_slice,
        "cold_start": {"beta": chosen_part.value, "prior": chosen_part.method, "mmr_lambda": chosen_part.mmr,
                       "users": int(len(best_cold.users)) if best_cold is not None else 0,
                       "recall@10": {r.name: r.summary["recall@10"] for r in cold_runs}},
        "baseline": {"chosen": best_base, "recall@10": {n: r.summary["recall@10"] for n, r in base.items()}},
        "cold_comparator": comparator,
        "references": refs,
    }


def run_tune(cfg: Config) -> FoldResult:
    """Evaluate everything on validation and make every choice."""
    started = time.time()
    deadline = time.perf_counter() + cfg.evaluate.time_limit_total_s
    data = load_eval_data(cfg, "tune", reader="evaluate@tune")
    parts = tune_parts(cfg)
    first = _pass(cfg, data, parts, deadline, "grid")
    all_parts = dict(first.parts)
    alphas = grid(cfg)
    selection = _select(cfg, data, all_parts, alphas)
    passes = [first]
    if cfg.evaluate.refine and selection["alpha"]["chosen"] is not None:
        extra = [a for a in refine_points(alphas, selection["alpha"]["chosen"]) if Part(ALPHA, a).name not in all_parts]
        if extra:
            second = _pass(cfg, data, tuple(Part(ALPHA, a) for a in extra), deadline, "refine")
            passes.append(second)
            all_parts |= second.parts
            alphas = sorted(alphas + extra)
            selection = _select(cfg, data, all_parts, alphas)
            selection["alpha"]["refined"] = extra
    cold = all_parts[cold_part(selection).name]
    runs = [alpha_run(data, all_parts, a, cold) for a in alphas]
    runs += [alpha_run(data, all_parts, a, cold, kind="endpoint") for a in ENDPOINTS]
    runs += [join(p.part.name, COLD, [(p, None)], data) for p in all_parts.values() if p.part.kind == COLD]
    runs += single_runs(data, all_parts, (BASELINE, REFERENCE))
    _mark(runs, selection)
    return FoldResult("tune", data, passes, runs, selection, started, time.time())


def test_parts(cfg: Config, sel: dict[str, Any]) -> tuple[Part, ...]:
    alphas = sorted(set(grid(cfg)) | set(ENDPOINTS) | {sel["alpha"]["chosen"]}
                    | {a for a in sel["adaptive"].values() if a is not None})
    cold = {cold_part(sel), Part(COLD, 0.0, cfg.evaluate.cold_priors[0], cfg.rerank.mmr_lambda)}  # + the seed rule
    refs = [Part(REFERENCE, float(sel["references"]["ease"]["lambda"]), "ease")] if "ease" in sel["references"] else []
    refs += [Part(REFERENCE, float(sel["references"]["itemknn"]["k"]), "itemknn")] if "itemknn" in sel["references"] else []
    return (*[Part(ALPHA, a) for a in alphas], *sorted(cold, key=lambda p: p.value or 0.0),
            *[Part(BASELINE, method=b) for b in cfg.evaluate.baselines], *refs)


def read_selection(cfg: Config) -> dict[str, Any]:
    tune = open_artifact(cfg.paths, "evaluate", "tune", reader="evaluate@test", config=cfg)
    sel = tune.json("selection")
    if sel["alpha"]["chosen"] is None:
        raise RecoptError(f"evaluate@test: {tune.path('selection')} chose no alpha (no complete validation run) — "
                          "re-run `dvc repro evaluate@tune`")
    return sel


def run_test(cfg: Config) -> FoldResult:
    """Evaluate the validation choices (and, for information, the grid) on test."""
    started = time.time()
    sel = read_selection(cfg)
    deadline = time.perf_counter() + cfg.evaluate.time_limit_total_s
    data = load_eval_data(cfg, "test", reader="evaluate@test")
    result = _pass(cfg, data, test_parts(cfg, sel), deadline, "report")
    parts = result.parts
    cold = parts[cold_part(sel).name]
    alphas = sorted(set(grid(cfg)) | {sel["alpha"]["chosen"]})
    runs = [alpha_run(data, parts, a, cold) for a in alphas]
    runs.append(adaptive_run(data, parts, sel["adaptive"], cold))
    runs += [alpha_run(data, parts, a, cold, kind="endpoint") for a in ENDPOINTS]
    runs += [join(p.part.name, COLD, [(p, None)], data) for p in parts.values() if p.part.kind == COLD]
    runs += single_runs(data, parts, (BASELINE, REFERENCE))
    _mark(runs, sel)
    return FoldResult("test", data, [result], runs, sel, started, time.time())


def _mark(runs: list[Run], sel: dict[str, Any]) -> None:
    """Say how each row was chosen (on validation) or that it is information only."""
    a = sel["alpha"]["chosen"]
    refs = sel["references"]
    everyone = max(r.summary["users_eval"] for r in runs)
    for r in runs:
        if r.kind == ALPHA:
            r.chosen = "alpha* (validation)" if r.alpha == a else "grid (information)"
        elif r.kind == "adaptive":
            r.chosen = "alpha per slice (validation)"
        elif r.kind == "endpoint":
            r.chosen = "endpoint (information)"
        elif r.kind == COLD:
            chosen = r.name == cold_part(sel).name
            r.chosen = "beta* (validation)" if chosen else "cold-start grid (information)"
        elif r.kind == BASELINE:
            best = r.name == sel["baseline"]["chosen"]
            r.chosen = "best baseline (validation)" if best else "baseline"
        elif r.kind == REFERENCE:
            method = r.name.split("=", 1)[1].split(":")[0]
            value = next(iter(refs.get(method, {}).values()), None)
            if r.name.endswith(f"={value!r}") and value is not None:
                r.chosen = "reference, setting chosen on validation"
            else:
                r.chosen = "reference grid (information)"
            if r.summary["users_eval"] < everyone:
                r.chosen += f" (the {int(r.summary['users_eval'])}-user tuning sample)"


def find(runs: list[Run], chosen: str) -> Run | None:
    return next((r for r in runs if r.chosen == chosen), None)


def alpha_star(runs: list[Run]) -> Run:
    run = find(runs, "alpha* (validation)")
    if run is None:
        raise RecoptError("no alpha* run: the selection chose no alpha")
    return run
