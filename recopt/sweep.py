"""Writing an evaluation: the evaluate artifacts of a fold, the DVC metrics files, MLflow and the
console; and the Hydra sweep (one alpha per job, the comparison when the sweep ends)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recopt import tracking
from recopt.artifacts import HELDOUT, Output, dump_json, metrics_path, open_artifact, output, write_text_atomic
from recopt.config import Config
from recopt.evaluate import EvalData, batch_path, evaluate_parts, load_eval_data, load_part
from recopt.methods import ALPHA, BASELINE, COLD, Part
from recopt.report import (acceptance_gates, console_table, gate_lines, intervals, plot_alpha_curve, runs_table,
                           slices_table, to_markdown, tuning_table, write_report)
from recopt.rng import stage_rng
from recopt.errors import RecoptError
from recopt.runs import Run, choose, common_users, join, load_run, restrict, save_run, user_slices
from recopt.study import FoldResult, alpha_run, run_test, run_tune


def dataset_info(cfg: Config, data: EvalData) -> tracking.DatasetInfo:
    """Name, source and digest of the evaluated data (the ingest source and the fold's split)."""
    source = data.split.summary.get("source") or "unknown"
    kind, _, where = source.partition(":")
    name = Path(where).name if kind == "movielens" else f"synthetic-{where}"
    return tracking.DatasetInfo(name=name, source=source, digest=data.split.digest)


def _lists_writer(out: Output, fold: FoldResult, runs: list[Run]) -> None:
    """lists.parquet (userId, run, rank, movieId, score), streamed batch by batch from the checkpoints."""
    data = fold.data
    movie_ids = data.items["movieId"].to_numpy()
    user_ids = data.users.sort("user")
    uid_sorted, uid_vals = user_ids["user"].to_numpy(), user_ids["userId"].to_numpy()
    writer = None
    dirs = {name: path for p in fold.passes for name, path in p.checkpoints.items()}
    names = pa.array([r.name for r in runs])  # one dictionary for every batch's run column
    for b in fold.passes[0].done:
        chunk: dict[str, Any] = {}
        frames = []
        for index, r in enumerate(runs):
            for name, _ in r.pieces:
                if name not in chunk:
                    chunk[name] = load_part(batch_path(dirs[name], b))
            pieces = []
            for name, keep in r.pieces:
                pb = chunk[name]
                mask = np.ones(len(pb.users), bool) if keep is None else user_slices(pb.users, data) == keep
                pieces.append((pb.users[mask], pb.lists[mask], pb.scores[mask]))
            users = np.concatenate([x[0] for x in pieces])
            lists = np.concatenate([x[1] for x in pieces])
            scores = np.concatenate([x[2] for x in pieces])
            order = np.argsort(users, kind="stable")
            users, lists, scores = users[order], lists[order], scores[order]
            ok = lists >= 0
            rows, ranks = np.nonzero(ok)
            frames.append(pa.table({
                "userId": uid_vals[np.searchsorted(uid_sorted, users)][rows].astype(np.int32),
                "run": pa.DictionaryArray.from_arrays(np.full(len(rows), index, np.int32), names),
                "rank": (ranks + 1).astype(np.int16), "movieId": movie_ids[lists[ok]].astype(np.int32),
                "score": scores[ok]}))
        if not frames:
            continue
        table = pa.concat_tables(frames).combine_chunks()
        if writer is None:
            writer = pq.ParquetWriter(out.path("lists"), table.schema, compression="zstd")
        writer.write_table(table.cast(writer.schema))
    if writer is not None:
        writer.close()


def _per_user(runs: list[Run], data: EvalData) -> pl.DataFrame:
    users = data.users.sort("user")
    frames = []
    for r in runs:
        pos = np.searchsorted(users["user"].to_numpy(), r.users)
        frames.append(pl.DataFrame({"userId": users["userId"].to_numpy()[pos], "slice": users["slice"].to_numpy()[pos],
                                    "run": np.full(len(pos), r.name), **r.per_user}))
    return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()


def _curve(table: pl.DataFrame) -> pl.DataFrame:
    return table.filter(pl.col("chosen").is_in(["alpha* (validation)", "grid (information)"])).sort("alpha")


def evaluate_fold(cfg: Config, fold: str) -> dict[str, Any]:
    """The evaluate stage for `fold`: every output, the MLflow runs, the console summary."""
    reader = f"evaluate@{fold}"
    with output(cfg, "evaluate", fold) as out:  # open from the start: its run facts time the whole stage
        result = run_tune(cfg) if fold == "tune" else run_test(cfg)
        data, runs, sel = result.data, result.runs, result.selection
        table = runs_table(runs, sum(data.skipped.values()))
        gates, interval_table = None, None
        star = next((r for r in runs if r.chosen == "alpha* (validation)"), None)
        out.uses(data.candidates, data.split)
        table.write_csv(out.path("runs"))
        tuning_table(table).write_csv(out.path("tuning_results"))
        slices = slices_table(runs, data)
        slices.write_csv(out.path("slices"))
        out.json("selection", sel)
        curves = {HELDOUT[fold]: _curve(table)}
        if fold == "test":
            tune = open_artifact(cfg.paths, "evaluate", "tune", reader=reader, config=cfg)
            out.uses(tune)
            curves = {"validation": _curve(pl.read_csv(tune.path("runs"))), "test": curves["test"]}
            rng = stage_rng(cfg.seed, "evaluate/bootstrap")
            gates = acceptance_gates(runs, sel, data, cfg, rng)
            interval_table = intervals(star, runs, cfg, rng) if star is not None else pl.DataFrame()
            out.json("gates", gates)
            interval_table.write_csv(out.path("intervals"))
            _lists_writer(out, result, runs)
            out.parquet("per_user", _per_user(runs, data))
        base = {r.name: r.summary["recall@10"] for r in runs if r.kind == BASELINE} if fold == "test" else {}
        plot_alpha_curve(curves, base, sel["alpha"]["chosen"], out.path("plot"))
        notes = [] if fold == "test" else ["Every choice below is made here, on validation; the test fold only "
                                           "reports on it."]
        write_report(out, fold, table, slices, sel, gates, interval_table, data.skipped, notes)
        out.summary = {"selection": sel, "runs": len(runs),
                       "users_eval": int(star.summary["users_eval"]) if star is not None else 0}
        out.timings = {f"pass{i}": p.seconds for i, p in enumerate(result.passes)} | \
            {f"fit:{k}": v for p in result.passes for k, v in p.fit_seconds.items()} | \
            {f"alpha_time_sec:{r.name}": r.seconds for r in runs}
    _write_dvc_metrics(cfg, fold, table, gates, sel)
    _track(cfg, result, table, slices, gates, interval_table, out.root, kind="dvc")
    _print_summary(cfg, fold, table, star, gates, out.root / "report.md")
    return gates or {}


def _write_dvc_metrics(cfg: Config, fold: str, table: pl.DataFrame, gates: dict[str, Any] | None,
                       sel: dict[str, Any]) -> None:
    """metrics/<fold>.json (alpha* on this fold) and metrics/<fold>_alpha_curve.csv: small, git-tracked,
    compared across experiments by `dvc exp show`, `dvc metrics diff`, `dvc plots diff`."""
    star = table.filter(pl.col("chosen") == "alpha* (validation)").row(0, named=True)
    doc: dict[str, Any] = {"alpha_star": sel["alpha"]["chosen"],
                           **{k: round(star[k], 6) for k in ("recall@10", "map@10", "ndcg@10", "coverage@10",
                                                             "novelty@10")}}
    if fold == "tune":
        doc |= {"beta_star": sel["cold_start"]["beta"], "alpha_star_at_edge": sel["alpha"]["edge"] is not None}
    if gates:
        g1 = gates.get("gate1", {})
        doc |= {"gate1": g1.get("verdict"), "gate1_lift": round(g1.get("recall@10", {}).get("lift", float("nan")), 6),
                "gate2": gates.get("gate2", {}).get("verdict")}
    write_text_atomic(metrics_path(cfg, "metrics", fold), dump_json(doc))
    curve = _curve(table).select("alpha", "recall@10", "ndcg@10", "map@10", "coverage@10")
    write_text_atomic(metrics_path(cfg, "curve", fold), curve.write_csv())


def _track(cfg: Config, result: FoldResult, table: pl.DataFrame, slices: pl.DataFrame, gates: dict[str, Any] | None,
           interval_table: pl.DataFrame | None, root: Path, kind: str, sweep: str | None = None) -> None:
    data = result.data
    ds = dataset_info(cfg, data)
    start, end = int(result.started * 1000), int(result.finished * 1000)
    heldout = HELDOUT[data.fold]
    sweep_id = sweep or f"dvc-{data.fold}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    children = []
    scratch = Path(cfg.paths.runs) / "mlflow" / sweep_id
    for r in result.runs:
        files = []
        safe = "".join(c if c.isalnum() or c in "=.-_" else "_" for c in r.name)
        sl = slices.filter(pl.col("run") == r.name)
        files.append(scratch / safe / "slices.csv")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        sl.write_csv(files[-1])
        files.append(scratch / safe / "per_user.parquet")
        _per_user([r], data).write_parquet(files[-1])
        metrics = dict(r.summary) | {"alpha_time_sec": r.seconds}
        for row in sl.iter_rows(named=True):
            metrics |= {f"{row['slice']}.{m}": row[m] for m in ("recall@10", "map@10", "ndcg@10")}
            metrics[f"{row['slice']}.users"] = row["users"]
        if interval_table is not None and interval_table.height and r.kind != COLD:
            rows = interval_table.filter(pl.col("run") == r.name)
            for m in interval_table["metric"].unique(maintain_order=True):
                row = rows.filter(pl.col("metric") == m)
                for k in ("diff", "diff_lo", "diff_hi"):  # alpha* against itself: 0
                    metrics[f"vs_alpha_star.{m}.{k}"] = row[k][0] if row.height else 0.0
        label = r.name.replace("alpha=", "α=")
        children.append(tracking.RunRecord(
            name=f"{ds.name} · {label} · {heldout}", start_ms=start, end_ms=end,
            params={**(r.config or tracking.config_params(cfg)), "alpha": r.alpha if r.alpha is not None else "none",
                    "run.kind": r.kind, "run.chosen": r.chosen, "run.parts": ", ".join(n for n, _ in r.pieces),
                    "fold": data.fold},
            metrics=metrics, tags={tracking.SWEEP_TAG: sweep_id, "recopt.run": r.name, "recopt.fold": data.fold,
                                   "recopt.chosen": r.chosen}, artifacts=files))
    parent_metrics: dict[str, float] = {}
    star = next((r for r in result.runs if r.chosen == "alpha* (validation)"), None)
    if star is not None:
        parent_metrics = {k: v for k, v in star.summary.items()}
    parent = tracking.RunRecord(
        name=f"{ds.name} · {kind} · {heldout}", start_ms=start, end_ms=end,
        params={**tracking.config_params(cfg), "alpha": result.selection["alpha"]["chosen"], "fold": data.fold},
        metrics=parent_metrics, tags={tracking.SWEEP_TAG: sweep_id, "recopt.fold": data.fold, "recopt.kind": kind},
        artifacts=[p for p in sorted(root.iterdir()) if p.suffix in (".md", ".png", ".csv", ".json")])
    tracking.log_family(cfg, parent, children, ds)


def _print_summary(cfg: Config, fold: str, table: pl.DataFrame, star: Run | None, gates: dict[str, Any] | None,
                   report: Path) -> None:
    heldout = HELDOUT[fold]
    print(f"\nevaluate@{fold} — runs on {heldout} (* = alpha* chosen on validation)")
    print(console_table(table, star.name if star is not None else None))
    if gates is not None:
        for line in gate_lines(gates):
            print(line)
    print(f"report: {report}")
    print(f"MLflow: `mlflow ui --backend-store-uri {cfg.paths.mlflow_uri}`, then {tracking.ui_url(cfg)}\n",
          flush=True)


# --------------------------------------------------------------------------- Hydra sweeps


def job_name(alpha: float, overrides: tuple[str, ...]) -> str:
    """A sweep job's run name: its alpha, plus any other swept key (e.g. an Optuna search over
    rerank.mmr_lambda), so two jobs of the same alpha never share a name. Data overrides are
    the same for every job and are left out."""
    extra = sorted(o for o in overrides if not o.split("=")[0].lstrip("+").startswith(("alpha", "data")))
    return ", ".join([f"alpha={alpha!r}", *extra])


def evaluate_job(cfg: Config, fold: str, sweep_dir: Path | None, job_num: int | None,
                 overrides: tuple[str, ...] = ()) -> float:
    """One Hydra job: `alpha` (cold users: rerank.cold_beta / cold_prior) on `fold`.

    Writes the job's result (summary and per-user arrays) for the sweep's comparison and
    returns its Recall@10, the value an optimising sweeper maximises."""
    started = time.time()
    data = load_eval_data(cfg, fold, reader=f"evaluate@{fold} (sweep job)")
    r = cfg.rerank
    parts = (Part(ALPHA, cfg.alpha), Part(COLD, r.cold_beta, r.cold_prior,
                                          r.mmr_lambda if r.cold_mmr_lambda is None else r.cold_mmr_lambda))
    deadline = time.perf_counter() + cfg.evaluate.time_limit_alpha_s
    p = evaluate_parts(cfg, data, parts, deadline=deadline, desc=f"alpha={cfg.alpha!r}")
    run = alpha_run(data, p.parts, cfg.alpha, p.parts[parts[1].name])
    run.complete, run.name = p.complete, job_name(cfg.alpha, overrides)
    where = sweep_dir / str(job_num) if sweep_dir is not None else Path(cfg.paths.runs) / "jobs" / uuid.uuid4().hex
    save_run(run, where / "result.npz")
    write_text_atomic(where / "result.json", dump_json({
        "run": run.name, "alpha": cfg.alpha, "beta": cfg.rerank.cold_beta, "prior": cfg.rerank.cold_prior,
        "fold": fold, "complete": p.complete, "batches_done": len(p.done), "batches": len(p.batches),
        "seconds": p.seconds, "started": started, "finished": time.time(), "summary": run.summary,
        "config": tracking.config_params(cfg)}))
    state = "complete" if p.complete else f"PARTIAL ({len(p.done)} of {len(p.batches)} batches)"
    print(f"{run.name} on {HELDOUT[fold]}: recall@10 {run.summary['recall@10']:.4f}, map@10 "
          f"{run.summary['map@10']:.4f}, ndcg@10 {run.summary['ndcg@10']:.4f} — {state}", flush=True)
    return float(run.summary["recall@10"])


def compare_sweep(cfg: Config, sweep_dir: Path) -> pl.DataFrame:
    """After a Hydra multirun: the baselines on the same fold, then every job compared on the users
    all of them finished (a partial job is shown, never chosen); MLflow parent + children."""
    fold = cfg.evaluate.fold
    started = time.time()
    jobs = sorted(sweep_dir.glob("*/result.json"))
    if not jobs:
        raise RecoptError(f"{sweep_dir}: no job of the sweep wrote a result")
    data = load_eval_data(cfg, fold, reader=f"evaluate@{fold} (sweep)")
    runs = [load_run(p.with_suffix(".npz"), json.loads(p.read_text()), data) for p in jobs]
    base = evaluate_parts(cfg, data, tuple(Part(BASELINE, method=b) for b in cfg.evaluate.baselines),
                          deadline=time.perf_counter() + cfg.evaluate.time_limit_total_s, desc="baselines")
    runs += [join(x.part.name, BASELINE, [(x, None)], data, complete=base.complete) for x in base.parts.values()]
    users = common_users(runs)
    compared = [restrict(r, users, data) for r in runs]
    best = choose([(r.name, r.summary, r.complete) for r in compared if r.kind == ALPHA])
    for r in compared:
        r.chosen = "best (this sweep)" if r.name == best else "" if r.complete else "partial: never chosen"
    table = runs_table(compared, sum(data.skipped.values()), with_time=True).with_columns(
        users_compared=pl.lit(len(users)))
    table.write_csv(sweep_dir / "comparison.csv")
    (sweep_dir / "comparison.md").write_text(to_markdown(table) + "\n")
    best_alpha = next((r.alpha for r in compared if r.name == best), None)
    result = FoldResult(fold, data, [], compared, {"alpha": {"chosen": best_alpha}}, started, time.time())
    _track(cfg, result, table, slices_table(compared, data), None, None, sweep_dir, kind="sweep",
           sweep=f"hydra-{sweep_dir.name}")
    print(f"\nsweep on {HELDOUT[fold]} — compared on the {len(users)} users every run finished "
          "(* = best complete alpha)")
    print(console_table(table, best))
    print(f"comparison: {sweep_dir / 'comparison.csv'}")
    print(f"MLflow: `mlflow ui --backend-store-uri {cfg.paths.mlflow_uri}`, then {tracking.ui_url(cfg)}\n",
          flush=True)
    return table
