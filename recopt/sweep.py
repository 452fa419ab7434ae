"""Alpha sweeps: the DVC grid (all alphas + baselines + every output), one Hydra job
(one alpha), and the comparison written when a Hydra multirun ends."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt import tracking
from recopt.config import Config
from recopt.evaluate import EvalData, RunResult, RunSpec, evaluate_run, load_eval_data
from recopt.io import log, read_json, write_json, write_parquet
from recopt.report import (acceptance_gates, plot_alpha_curve, results_table, slices_table, to_markdown,
                           write_report)
from recopt.rng import stage_rng


def _fingerprint(cfg: Config, data: EvalData) -> str:
    ingest = read_json(Path(cfg.paths.ingest) / "manifest.json").get("fingerprint", "")[:16]
    return f"ingest:{ingest}/candidates:{data.fingerprint}"


def _log(cfg: Config, r: RunResult, data: EvalData, sweep_id: str, slices: pl.DataFrame | None = None) -> None:
    slice_metrics = {}
    if slices is not None:
        for row in slices.filter(pl.col("run") == r.spec.name).iter_rows(named=True):
            slice_metrics.update({f"{row['slice']}.{k}": row[k] for k in ("recall@10", "ndcg@10", "map@10")
                                  if row[k] == row[k]})
            slice_metrics[f"{row['slice']}.users"] = row["users"]
    summary = {**r.summary, "alpha_time_sec": r.seconds, "alpha_timed_out": float(r.timed_out),
               "users_skipped": float(sum(data.skipped.values()))}
    tracking.log_run(cfg, r.spec.name, summary, sweep_id=sweep_id, data_fingerprint=_fingerprint(cfg, data),
                     extra_params={"run.kind": r.spec.kind, "run.alpha": r.spec.alpha},
                     slice_metrics=slice_metrics)


def _long_lists(results: list[RunResult], data: EvalData) -> pl.DataFrame:
    user_ids = data.users.sort("user")
    uid = dict(zip(user_ids["user"].to_list(), user_ids["userId"].to_list()))
    movie_ids = data.items["movieId"].to_numpy()
    frames = []
    for r in results:
        ok = r.lists >= 0
        rows, ranks = np.nonzero(ok)
        frames.append(pl.DataFrame({
            "userId": np.array([uid[u] for u in r.users.tolist()], dtype=np.int32)[rows],
            "run": np.full(len(rows), r.spec.name), "rank": (ranks + 1).astype(np.int16),
            "movieId": movie_ids[r.lists[ok]], "score": r.scores[ok],
        }))
    return pl.concat(frames) if frames else pl.DataFrame()


def _per_user(results: list[RunResult], data: EvalData) -> pl.DataFrame:
    frames = []
    for r in results:
        base = data.users.filter(pl.col("user").is_in(pl.Series(r.users).implode())).sort("user")
        frames.append(base.select("userId", "slice").with_columns(run=pl.lit(r.spec.name))
                      .hstack(pl.DataFrame({k: v for k, v in r.per_user.items()})))
    return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()


def evaluate_grid(cfg: Config) -> dict[str, Any]:
    """The DVC evaluate stage: the alpha grid (plus `alpha`) and the baselines, every output."""
    started = time.perf_counter()
    sweep_id = "dvc-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    timings: dict[str, float] = {}
    data = load_eval_data(cfg)
    timings["load"] = round(time.perf_counter() - started, 3)
    deadline = started + cfg.evaluate.time_limit_total_s
    alphas = sorted(set(cfg.evaluate.alphas) | {cfg.alpha})
    specs = [RunSpec("alpha", a) for a in alphas] + [RunSpec(b) for b in cfg.evaluate.baselines]
    results = []
    for spec in specs:
        r = evaluate_run(spec, cfg, data, deadline)
        timings[spec.name] = r.seconds
        log.info("%s: recall@10 %.4f ndcg@10 %.4f users %d (%.1f s%s)", spec.name, r.summary["recall@10"],
                 r.summary["ndcg@10"], len(r.users), r.seconds, ", TIMED OUT" if r.timed_out else "")
        results.append(r)
    alpha_runs = [r for r in results if r.spec.kind == "alpha"]
    base_runs = [r for r in results if r.spec.kind != "alpha"]
    out = Path(cfg.paths.evaluate) / "results"
    table = results_table(results, data)
    tuning = table.filter(pl.col("alpha").is_not_null() & pl.col("run").str.starts_with("alpha="))
    baselines = table.filter(pl.col("run").str.starts_with("baseline="))
    slices = slices_table(results, data)
    gates = acceptance_gates(alpha_runs, base_runs, data, cfg, stage_rng(cfg.seed, "evaluate/bootstrap"))
    out.mkdir(parents=True, exist_ok=True)
    tuning.drop("run").write_csv(out / "tuning_results.csv")
    baselines.write_csv(out / "baselines.csv")
    slices.write_csv(out / "slices.csv")
    write_parquet(_long_lists(results, data), out / "lists.parquet")
    write_parquet(_per_user(results, data), out / "per_user.parquet")
    write_json(out / "gates.json", gates)
    plot_alpha_curve(table, out / "alpha_curve.png")
    timings["total"] = round(time.perf_counter() - started, 3)
    write_report(out / "report.md", tuning.drop("run"), baselines, slices, gates, data, timings, "alpha_curve.png")
    tuning.select("alpha", "recall@10", "ndcg@10", "map@10", "coverage@10", "novelty@10").write_csv(
        Path(cfg.paths.evaluate) / "alpha_curve.csv")
    best = tuning.sort("recall@10", descending=True).row(0, named=True) if tuning.height else {}
    write_json(Path(cfg.paths.evaluate) / "metrics.json", {
        "best_alpha": best.get("alpha"), "best": {k: best.get(k) for k in ("recall@10", "map@10", "ndcg@10",
                                                                              "coverage@10", "novelty@10")},
        "gates_passed": gates.get("passed", False),
        "gate1_lift": gates.get("gate1", {}).get("lift"), "gate2_passed": gates.get("gate2", {}).get("passed"),
    })
    for r in results:
        _log(cfg, r, data, sweep_id, slices)
    tracking.log_run(cfg, f"sweep={sweep_id}", {"gates_passed": float(gates.get("passed", False))},
                     sweep_id=sweep_id, data_fingerprint=_fingerprint(cfg, data),
                     artifacts=[out / n for n in ("report.md", "alpha_curve.png", "tuning_results.csv",
                                                  "baselines.csv", "slices.csv", "gates.json")])
    print(to_markdown(table))
    return gates


def _comparison_row(r: RunResult) -> dict[str, Any]:
    """One run's row of the sweep comparison table."""
    return {**r.summary, "run": r.spec.name, "alpha": r.spec.alpha, "users_eval": len(r.users),
            "alpha_time_sec": r.seconds, "alpha_timed_out": r.timed_out}


def evaluate_one(cfg: Config, sweep_dir: Path | None, job_num: int | None) -> RunResult:
    """One Hydra job: evaluate `cfg.alpha`, log one MLflow run, leave result.json for the sweep table."""
    data = load_eval_data(cfg)
    r = evaluate_run(RunSpec("alpha", cfg.alpha), cfg, data)
    sweep_id = f"hydra-{sweep_dir.name}" if sweep_dir else "single"
    _log(cfg, r, data, sweep_id)
    if sweep_dir is not None:
        write_json(sweep_dir / str(job_num) / "result.json", _comparison_row(r))
    return r


def compare_sweep(cfg: Config, sweep_dir: Path) -> pl.DataFrame:
    """After a Hydra multirun: baselines (also MLflow runs), then the table of every alpha and baseline."""
    data = load_eval_data(cfg)
    sweep_id = f"hydra-{sweep_dir.name}"
    rows = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/result.json"))]
    for kind in cfg.evaluate.baselines:
        r = evaluate_run(RunSpec(kind), cfg, data)
        _log(cfg, r, data, sweep_id)
        rows.append(_comparison_row(r))
    cols = ["run", "alpha", "users_eval", "recall@5", "recall@10", "recall@20", "map@10", "ndcg@10",
            "coverage@10", "novelty@10", "diversity@10", "pool_recall", "alpha_time_sec", "alpha_timed_out"]
    table = pl.DataFrame(rows).select(cols)
    table.write_csv(sweep_dir / "comparison.csv")
    (sweep_dir / "comparison.md").write_text(to_markdown(table) + "\n")
    print(to_markdown(table))
    return table
