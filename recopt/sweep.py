"""Hydra sweeps: one alpha per job, and the comparison when the sweep ends.

A job (:func:`evaluate_job`) serves users with a factor from the fit at its ``alpha`` and
the others by the cold rule chosen on validation when evaluate@tune's selection is
current for the job's config (any alpha), so the job's run is the very computation the
pipeline's run of that alpha is, and carries the same name. When no current selection
applies (no evaluate@tune yet, or the sweep overrides a key the choice depends on) the
job uses the config's rule (``rerank.cold_*``) and its name says so.

:func:`compare_sweep` adds the baselines, compares every job on the users all of them
finished (a partial job is shown, never chosen) and logs one MLflow parent with a child
per run. A single run (``python -m stages.evaluate alpha=0.5``) is a one-job sweep.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from recopt import tracking
from recopt.config import HELDOUT, Config
from recopt.errors import RecoptError
from recopt.evaluate import EvalData, evaluate_parts, load_eval_data
from recopt.layout import dump_json, job_file, save_arrays, sweep_file, sweep_jobs, write_text_atomic
from recopt.methods import Part, PartKind
from recopt.publish import print_mlflow_links, track
from recopt.metrics import INTERVAL, shown_in
from recopt.report import PLOT_METRICS, console_table, plot_alpha_curve, runs_table, to_markdown
from recopt.runs import Piece, Run, common_users, join, restrict, summarise
from recopt.selection import KEY, ColdRule, Role, choose, config_cold_rule, run_label
from recopt.study import read_selection


def job_cold_rule(cfg: Config) -> tuple[ColdRule, str | None]:
    """The rule chosen on validation when evaluate@tune's selection is current for `cfg` (any alpha);
    else the config's, with the reason."""
    try:
        return read_selection(cfg, "sweep job", ignore=("alpha",)).cold, None
    except RecoptError as err:
        return config_cold_rule(cfg), str(err)


def job_overrides(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """A job's swept keys other than alpha (e.g. an Optuna search over rerank.mmr_lambda), so two jobs of
    the same alpha never share a name. Data overrides are the same for every job and are left out."""
    return tuple(sorted(o for o in overrides if not o.split("=")[0].lstrip("+").startswith(("alpha", "data"))))


def evaluate_job(cfg: Config, fold: str, folder: Path, overrides: tuple[str, ...] = ()) -> float:
    """One Hydra job: `alpha` on `fold` (users without a factor from the fit: :func:`job_cold_rule`).

    Args:
        cfg: the job's composed config (its `alpha` is the job's).
        fold: the fold scored (evaluate.fold).
        folder: where the job's result goes (recopt.layout.job_dir).
        overrides: the job's Hydra overrides (the swept keys other than alpha name the run).
    Returns:
        Its Recall@10, the value an optimising sweeper maximises.
    """
    started = time.time()
    data = load_eval_data(cfg, fold, reader=f"evaluate@{fold} (sweep job)")
    cold, why = job_cold_rule(cfg)
    if why is not None:
        print(f"warning: no cold rule chosen on validation applies to this config, so cold users get the "
              f"config's ({cold.label}); the run's name says so. Why: {why}", flush=True)
    parts = (Part(PartKind.ALPHA, cfg.alpha), *cold.parts)
    p = evaluate_parts(cfg, data, parts, deadline=time.perf_counter() + cfg.evaluate.time_limit_alpha_s,
                       desc=f"alpha={cfg.alpha!r}")
    run = join(Role.SWEEP_JOB, [(p.parts[x], None) for x in parts], data, complete=p.complete,
               overrides=job_overrides(overrides), config=tracking.config_params(cfg))
    run.cold_from_config = why is not None
    save_arrays(job_file(folder, "arrays"), {"users": run.users, "top": run.top,
                                             **{f"m.{k}": v for k, v in run.per_user.items()}}, "hydra.sweep.dir")
    write_text_atomic(job_file(folder, "result"), dump_json({
        "alpha": cfg.alpha, "cold_rule": cold.to_json(), "cold_from_config": run.cold_from_config,
        "overrides": list(run.overrides), "fold": fold, "complete": p.complete, "batches_done": len(p.done),
        "batches": len(p.batches), "seconds": p.seconds, "started": started, "finished": time.time(),
        "summary": run.summary, "config": run.config}), "hydra.sweep.dir")
    state = "complete" if p.complete else f"PARTIAL ({len(p.done)} of {len(p.batches)} batches)"
    print(f"{run_label(run)} on {HELDOUT[fold]}: " + ", ".join(f"{m} {run.summary[m]:.4f}" for m in
                                                               shown_in(INTERVAL)) + f" — {state}", flush=True)
    return float(run.summary[KEY])


def load_job(folder: Path, data: EvalData) -> tuple[Run, dict]:
    """A job's run, rebuilt from its typed facts and arrays."""
    try:
        info = json.loads(job_file(folder, "result").read_text())
        cold = ColdRule.from_json(info["cold_rule"])
        with np.load(job_file(folder, "arrays")) as z:
            run = Run(role=Role.SWEEP_JOB,
                      pieces=tuple(Piece(p) for p in (Part(PartKind.ALPHA, info["alpha"]), *cold.parts)),
                      users=z["users"], top=z["top"], per_user={n[2:]: z[n] for n in z.files if n.startswith("m.")},
                      seconds=info["seconds"], complete=info["complete"], overrides=tuple(info["overrides"]),
                      config=info["config"], cold_from_config=info["cold_from_config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecoptError(f"{folder}: this job's result cannot be read ({type(err).__name__}: {err}) — it was not "
                          "written by this version of recopt or was damaged; re-run the sweep") from None
    run.summary = summarise(run, data)
    return run, info


def compare_sweep(cfg: Config, sweep_dir: Path, kind: str = "sweep") -> pl.DataFrame:
    """After a Hydra multirun (or a single run): the baselines on the same fold, then every job compared
    on the users all of them finished (a partial job is shown, never chosen); MLflow parent + children.

    Args:
        cfg: the sweep's composed config.
        sweep_dir: the sweep's folder (each job's result in a sub-folder).
        kind: "sweep" or "single", in the MLflow parent's name.
    Returns:
        The comparison table (also written to comparison.csv / .md in `sweep_dir`).
    Raises:
        RecoptError when no job wrote a result or one cannot be read.
    """
    fold = cfg.evaluate.fold
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        raise RecoptError(f"{sweep_dir}: no job of the sweep wrote a result")
    data = load_eval_data(cfg, fold, reader=f"evaluate@{fold} (sweep)")
    loaded = [load_job(j, data) for j in jobs]
    runs = [r for r, _ in loaded]
    base = evaluate_parts(cfg, data, tuple(Part(PartKind.BASELINE, method=b) for b in cfg.evaluate.baselines),
                          deadline=time.perf_counter() + cfg.evaluate.time_limit_total_s, desc="baselines")
    runs += [join(Role.BASELINE, [(x, None)], data, complete=base.complete) for x in base.parts.values()]
    users = common_users(runs)
    compared = [restrict(r, users, data) for r in runs]
    best = choose([(r, r.summary, r.complete) for r in compared if r.role == Role.SWEEP_JOB])
    for r in compared:
        if r.role == Role.SWEEP_JOB:
            r.role = Role.SWEEP_BEST if r is best else Role.SWEEP_JOB if r.complete else Role.SWEEP_PARTIAL
    table = runs_table(compared, sum(data.skipped.values()), sorted(set(cfg.evaluate.ks)), with_time=True
                       ).with_columns(users_compared=pl.lit(len(users)))
    write_text_atomic(sweep_file(sweep_dir, "comparison.csv"), table.write_csv(), "hydra.sweep.dir")
    write_text_atomic(sweep_file(sweep_dir, "comparison.md"), to_markdown(table) + "\n", "hydra.sweep.dir")
    jobs_done = [r for r in compared if r.role in (Role.SWEEP_BEST, Role.SWEEP_JOB)]
    if jobs_done:  # recall against alpha, for the MLflow parent (the compare view's chart)
        curve = pl.DataFrame([{"alpha": r.alpha, **{m: r.summary[m] for m in PLOT_METRICS}}
                              for r in jobs_done]).sort("alpha")
        plot_alpha_curve({HELDOUT[fold]: curve}, {run_label(r): r.summary[KEY] for r in compared
                                                  if r.role == Role.BASELINE}, best.alpha if best else None,
                         sweep_file(sweep_dir, "alpha_curve.png"), baselines_on=HELDOUT[fold])
    started = min(info["started"] for _, info in loaded)
    _, url = track(cfg, data, compared, root=sweep_dir, kind=kind, family=f"hydra-{sweep_dir.name}",
                   started=started, finished=time.time(), chosen_alpha=best.alpha if best is not None else None)
    print(f"\n{kind} on {HELDOUT[fold]} — compared on the {len(users)} users every run finished "
          "(* = best complete alpha)")
    print(console_table(compared, best))
    print(f"comparison: {sweep_file(sweep_dir, 'comparison.csv')}")
    print_mlflow_links(cfg, url)
    return table
