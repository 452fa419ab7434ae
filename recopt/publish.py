"""Writing a fold's outcome: the evaluate artifact, the DVC metrics files, MLflow (through
recopt.tracking) and the console.

The artifact (``evaluate@<fold>``): runs.csv, tuning_results.csv, slices.csv,
selection.json, report.md, alpha_curve.png; on test also gates.json, intervals.csv,
lists/ (every run's lists, one parquet part per run, streamed from the checkpoints; a part
the artifact in place already holds is linked, not written again) and per_user.parquet.
``metrics/<fold>.json`` holds the headline figures a person compares across DVC
experiments: the run of the configured ``alpha`` next to alpha*'s, so experiments that
differ in alpha differ in ``dvc exp show``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recopt import metrics, report, tracking
from recopt.artifacts import Output, add_run_facts, hash_state, open_artifact
from recopt.config import HELDOUT, Config
from recopt.evaluate import EvalData, load_part
from recopt.layout import MANIFEST, checkpoint_file, dump_json, metrics_path, mlflow_scratch, write_text_atomic
from recopt.runlog import Progress
from recopt.comparisons import Comparison
from recopt.methods import PartKind
from recopt.runs import Run, combine, slice_summaries
from recopt.selection import ALPHA_ROLES, KEY, Role, part_label, role_label, run_label
from recopt.study import FoldOutcome


def dataset_info(data: EvalData) -> tracking.DatasetInfo:
    """Name, source and digest of the evaluated data (the ingest source and the fold's split)."""
    source = data.split.summary.get("source") or "unknown"
    kind, _, where = source.partition(":")
    name = Path(where).name if kind == "movielens" else f"synthetic-{where}"
    return tracking.DatasetInfo(name=name, source=source, digest=data.split.digest)


def lists_key(run: Run, outcome: FoldOutcome) -> str:
    """What a run's lists part holds, as a key: its label, and for each piece its checkpoint folder (keyed
    by the store, the split, the factors, the part, the config and the code) and slice, over the batches.
    Two evaluations that give a run the same key write the same bytes for it."""
    dirs = outcome.checkpoints
    doc = {"run": run_label(run), "pieces": [[dirs[p.part].name, p.slice] for p in run.pieces],
           "batches": outcome.passes[0].done, "format": 1}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _reuse(out: Output, rel: str, paths: object) -> bool:
    """Hard-link part `rel` of the artifact in place into the staging folder when that artifact's manifest
    vouches for its bytes (the same key means the same content; the bytes are checked against the manifest
    through recopt.hashstate, so an unchanged file is not read again); False when there is none to reuse."""
    old = out.root / rel
    try:
        entry = json.loads((out.root / MANIFEST).read_text())["files"].get(rel)
        st = old.stat()
        if entry is None or st.st_size != entry["bytes"] or hash_state(paths).digest(old, st) != entry["sha256"]:
            return False
        os.link(old, out.staging / rel)
    except (OSError, ValueError, KeyError):
        return False
    out.known[rel] = entry["sha256"]
    return True


def _lists(out: Output, outcome: FoldOutcome) -> dict[str, int]:
    """lists/<key>.parquet, one part per run (userId, run, rank, movieId, score), streamed batch by batch
    from the checkpoints; each run's rows assembled as its summaries were (recopt.runs.combine). A part
    whose key the artifact in place already holds is linked, not written again: a new alpha writes one
    part. Returns how many parts were written and reused."""
    data, dirs = outcome.data, outcome.checkpoints
    movie_ids = data.items["movieId"].to_numpy()
    users = data.users.sort("user")
    uid_sorted, uid_vals = users["user"].to_numpy(), users["userId"].to_numpy()
    todo: dict[int, tuple[Run, Path]] = {}
    for r in outcome.runs:
        path = out.part("lists", lists_key(r, outcome))
        if not _reuse(out, str(path.relative_to(out.staging)), out.cfg.paths):
            todo[id(r)] = (r, path)
    writers: dict[int, pq.ParquetWriter] = {}
    with Progress(len(outcome.passes[0].done), f"evaluate@{outcome.fold} lists ({len(todo)} runs)", "batches") as bar:
        for b in outcome.passes[0].done:
            chunk: dict = {}
            for key, (r, path) in todo.items():
                for piece in r.pieces:
                    if piece.part not in chunk:
                        chunk[piece.part] = load_part(checkpoint_file(dirs[piece.part], b))
                ids, arrays = combine([(chunk[p.part].users, {"lists": chunk[p.part].lists,
                                                              "scores": chunk[p.part].scores}, p.slice)
                                       for p in r.pieces], data)
                ok = arrays["lists"] >= 0
                rows, ranks = np.nonzero(ok)
                table = pa.table({
                    "userId": uid_vals[np.searchsorted(uid_sorted, ids)][rows].astype(np.int32),
                    "run": pa.DictionaryArray.from_arrays(np.zeros(len(rows), np.int32), [run_label(r)]),
                    "rank": (ranks + 1).astype(np.int16), "movieId": movie_ids[arrays["lists"][ok]].astype(np.int32),
                    "score": arrays["scores"][ok]})
                if key not in writers:
                    writers[key] = pq.ParquetWriter(path, table.schema, compression="zstd")
                writers[key].write_table(table)
            bar.update()
    for w in writers.values():
        w.close()
    return {"lists_parts_written": len(todo), "lists_parts_reused": len(outcome.runs) - len(todo)}


def per_user_frame(runs: list[Run], data: EvalData) -> pl.DataFrame:
    """Every run's per-user metrics, with userId, slice and the run's label."""
    users = data.users.sort("user")
    frames = []
    for r in runs:
        pos = np.searchsorted(users["user"].to_numpy(), r.users)
        frames.append(pl.DataFrame({"userId": users["userId"].to_numpy()[pos], "slice": users["slice"].to_numpy()[pos],
                                    "run": pl.Series([run_label(r)] * len(pos), dtype=pl.String), **r.per_user}))
    return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()


def _curve(outcome: FoldOutcome) -> pl.DataFrame:
    rows = [{"alpha": r.alpha, **{m: r.summary[m] for m in metrics.shown_in(metrics.HEADLINE)}}
            for r in outcome.find(*ALPHA_ROLES)]
    return pl.DataFrame(rows).sort("alpha")


def write_artifact(out: Output, cfg: Config, outcome: FoldOutcome) -> dict[str, pl.DataFrame]:
    """Every file of the evaluate artifact of `outcome`'s fold.

    Args:
        out: the evaluate artifact being written (its staging folder).
        cfg: the run's config.
        outcome: what recopt.study computed for the fold.
    Returns:
        The tables it wrote (runs, tuning_results, slices), by name.
    """
    data, runs, sel = outcome.data, outcome.runs, outcome.selection
    ks = sorted(set(cfg.evaluate.ks))
    skipped = sum(data.skipped.values())
    out.uses(data.candidates, data.split, data.cf)
    tables = {"runs": report.runs_table(runs, skipped, ks), "tuning_results": report.tuning_table(runs, skipped, ks),
              "slices": report.slices_table(runs, data)}
    for name, table in tables.items():
        table.write_csv(out.path(name))
    out.json("selection", sel.to_json())
    curves = {HELDOUT[outcome.fold]: _curve(outcome)}
    intervals, parts = None, {}
    if outcome.fold == "test":
        tune = open_artifact(cfg.paths, "evaluate", "tune", reader="evaluate@test", config=cfg)
        out.uses(tune)
        curves = {"validation": pl.read_csv(tune.path("tuning_results")).select(curves["test"].columns).sort("alpha"),
                  "test": curves["test"]}
        out.json("gates", report.gates_json(outcome.gates, cfg.evaluate.gate_min_lift))
        intervals = report.intervals_table(outcome.intervals, outcome.star)
        intervals.write_csv(out.path("intervals"))
        parts = _lists(out, outcome)
        out.parquet("per_user", per_user_frame(runs, data))
    base = {run_label(r): r.summary[KEY] for r in outcome.find(Role.BASELINE_BEST, Role.BASELINE)} \
        if outcome.fold == "test" else {}
    report.plot_alpha_curve(curves, base, sel.alpha.chosen, out.path("plot"))
    cold = report.cold_table(runs, data)
    out.text("report", report.report_markdown(outcome.fold, tables["runs"], tables["slices"], cold, sel,
                                              outcome.gates, intervals, data.skipped, cfg.evaluate.gate_min_lift))
    out.summary = {"selection": sel.to_json(), "runs": len(runs), "users_eval": int(outcome.star.summary["users_eval"])}
    out.timings = {f"pass{i}": p.seconds for i, p in enumerate(outcome.passes)} | \
        {f"fit:{k}": v for p in outcome.passes for k, v in p.fit_seconds.items()} | \
        {f"alpha_time_sec:{run_label(r)}": r.seconds for r in runs} | parts
    return tables


def _headline(run: Run) -> dict[str, Any]:
    return {m: round(run.summary[m], 6) for m in metrics.shown_in(metrics.HEADLINE)}


# each fold's figures under a name of its own, so every key is unique across the two files and `dvc exp show`
# titles a column by the key alone (`test.alpha.recall@10`, not `metrics/test.json:alpha.recall@10`)
METRICS_ROOT = {"tune": "val", "test": "test"}


def write_dvc_metrics(cfg: Config, outcome: FoldOutcome) -> None:
    """metrics/<fold>.json and metrics/<fold>_alpha_curve.csv: small, git-tracked, compared by `dvc exp show`,
    `dvc metrics diff`, `dvc plots diff`. The json holds the headline figures only: the run of the configured
    `alpha` (so experiments that differ in alpha differ here), alpha*'s run with the share of resamples it
    wins, its cold-slice recall, and on test the gate verdicts and gate 1's lift."""
    sel, star = outcome.selection, outcome.star
    mine = next(r for r in outcome.find(*ALPHA_ROLES) if r.alpha == cfg.alpha)
    cold = [s for s in slice_summaries(star, outcome.data) if s["slice"] == "cold"][0]
    block: dict[str, Any] = {"alpha": _headline(mine),
                             "star": {"alpha": sel.alpha.chosen, "share": round(sel.alpha_star_share, 4),
                                      **_headline(star), f"cold_{KEY}": round(cold[KEY], 6)}}
    if outcome.fold == "tune":
        block["star"]["at_edge"] = sel.alpha.edge is not None
    if outcome.gates is not None:
        g1, g2 = outcome.gates.gate1, outcome.gates.gate2
        block["gate1"] = g1.verdict
        block["gate1_lift"] = round(g1.comparisons[KEY].lift, 6) if KEY in g1.comparisons else None
        block["gate2"] = g2.verdict
    write_text_atomic(metrics_path(cfg.paths, "metrics", outcome.fold), dump_json({METRICS_ROOT[outcome.fold]: block}),
                      "paths.metrics")
    write_text_atomic(metrics_path(cfg.paths, "curve", outcome.fold), _curve(outcome).write_csv(), "paths.metrics")


def _child(cfg: Config, data: EvalData, r: Run, intervals: dict[int, dict[str, Comparison | None]], family: str,
           start_ms: int, ds: tracking.DatasetInfo) -> tracking.RunRecord:
    label = run_label(r)
    files = [mlflow_scratch(cfg.paths, family, label, "slices")]
    files[0].parent.mkdir(parents=True, exist_ok=True)
    rows = slice_summaries(r, data)
    pl.DataFrame(rows).write_csv(files[0])
    m: dict[str, float] = dict(r.summary) | {"alpha_time_sec": r.seconds, "fallback_users": r.fallback_users}
    for row in rows:
        m |= {f"{row['slice']}.{k}": row[k] for k in metrics.shown_in(metrics.SLICE)} | {f"{row['slice']}.users": row["users"]}
    for metric_name, c in intervals.get(id(r), {}).items():
        m |= {f"vs_alpha_star.{metric_name}.{k}": (getattr(c, k) if c is not None else 0.0)  # alpha* itself: 0
              for k in ("diff", "diff_lo", "diff_hi")}
    cold = [p.part for p in r.pieces[1:]] if r.main.kind == PartKind.ALPHA else []
    # the config is the parent's (a sweep job's own, which may differ between jobs, is the child's)
    params = {**r.config, "alpha": r.alpha if r.alpha is not None else "none",
              "role": r.role.value, "parts": ", ".join(part_label(p.part) for p in r.pieces),
              "cold_rule": " | else ".join(part_label(p) for p in cold) or "none", "fold": data.fold}
    return tracking.RunRecord(
        name=f"{ds.name} · {label.replace('alpha=', 'α=')} · {HELDOUT[data.fold]}", start_ms=start_ms,
        end_ms=start_ms + max(1, round(r.seconds * 1000)), params=params, metrics=m,
        tags={tracking.SWEEP_TAG: family, "recopt.run": label, "recopt.fold": data.fold,
              "recopt.chosen": role_label(r.role), "recopt.duration": "the compute time of the run's parts"},
        artifacts=files)


def track(cfg: Config, data: EvalData, runs: list[Run], *, root: Path, kind: str, started: float, finished: float,
          chosen_alpha: float | None, family: str | None = None,
          intervals: list[tuple[Run, dict[str, Comparison]]] = (),  # type: ignore[assignment]
          facts: tuple[dict[str, float], dict[str, str]] = ({}, {})) -> tuple[float, str]:
    """Log an evaluation to MLflow: a parent (`<dataset> · <kind> · <held-out>`, the config, the chosen run's
    headline metrics, the report, plot and tables under `root`, and `facts`: more (metrics, tags) of the
    parent, e.g. the stability of the choices and the gates) with a child per run -- but for the cold-start
    grid's information rows, which are in the parent's runs.csv. Returns the seconds it took and the
    link that opens the parent as a training run."""
    t = time.perf_counter()
    ds = dataset_info(data)
    family = family or f"dvc-{data.fold}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    start_ms = int(started * 1000)
    against: dict[int, dict[str, Comparison | None]] = {id(x): dict(c) for x, c in intervals}
    if intervals:
        against |= {id(r): dict.fromkeys(intervals[0][1]) for r in runs if r.role == Role.ALPHA_STAR}
    children = [_child(cfg, data, r, against, family, start_ms, ds) for r in runs if r.role != Role.COLD_GRID]
    chosen = [r for r in runs if r.role in (Role.ALPHA_STAR, Role.SWEEP_BEST)]
    parent = tracking.RunRecord(
        name=f"{ds.name} · {kind} · {HELDOUT[data.fold]}", start_ms=start_ms, end_ms=int(finished * 1000),
        params={**tracking.config_params(cfg), "alpha": chosen_alpha if chosen_alpha is not None else "none",
                "fold": data.fold},
        metrics=(dict(chosen[0].summary) if chosen else {}) | facts[0],
        tags={tracking.SWEEP_TAG: family, "recopt.fold": data.fold, "recopt.kind": kind} | facts[1],
        artifacts=[p for p in sorted(root.iterdir()) if p.suffix in (".md", ".png", ".csv", ".json")])
    logged = tracking.log_family(cfg, parent, children, ds)
    return round(time.perf_counter() - t, 3), tracking.run_url(logged.experiment_id, logged.parent_id)


def print_summary(cfg: Config, outcome: FoldOutcome, report_path: Path, parent_url: str) -> None:
    heldout = HELDOUT[outcome.fold]
    sel = outcome.selection
    print(f"\nevaluate@{outcome.fold} — runs on {heldout}, every evaluated user "
          f"({int(outcome.star.summary['users_eval'])}); * = alpha* chosen on validation")
    print(report.console_table(outcome.runs, outcome.star))
    print(report.stability_line(sel))
    for r in outcome.find(Role.BASELINE_BEST, Role.BASELINE):
        if r.fallback_users:
            print(f"{run_label(r)}: {r.fallback_users} user(s) it cannot score took the popularity fallback.")
    for w in report.warnings(sel):
        print(f"warning: {w}")
    if outcome.gates is not None:
        for line in report.gate_lines(outcome.gates, cfg.evaluate.gate_min_lift):
            print(line)
    print(f"report: {report_path}")
    print_mlflow_links(cfg, parent_url)


def print_mlflow_links(cfg: Config, parent_url: str) -> None:
    print(f"MLflow: `mlflow ui --backend-store-uri {cfg.paths.mlflow_uri}`, then {tracking.ui_url(cfg)}\n"
          f"        this evaluation: {parent_url}\n", flush=True)


def parent_facts(outcome: FoldOutcome) -> tuple[dict[str, float], dict[str, str]]:
    """What the MLflow parent of a fold carries besides alpha*'s metrics: how stable each choice is, and on
    test every gate's verdict and lift, overall and per slice."""
    sel = outcome.selection
    st = sel.stability
    metrics_ = {"alpha_star_share": sel.alpha_star_share, "alpha_star_range_lo": st.alpha_range[0],
                "alpha_star_range_hi": st.alpha_range[1], "alphas_tried": float(len(sel.alpha.tried)),
                "baseline_share": dict(st.baseline).get(sel.baseline, 0.0), "cold_rule_share": dict(st.cold).get(sel.cold, 0.0)}
    tags = {"recopt.alpha_star_at_edge": str(sel.alpha.edge is not None)}
    if outcome.gates is not None:
        for name, g in (("gate1", outcome.gates.gate1), ("gate2", outcome.gates.gate2)):
            tags[f"recopt.{name}"] = g.verdict
            if KEY in g.comparisons:
                c = g.comparisons[KEY]
                metrics_ |= {f"{name}.lift": c.lift, f"{name}.lift_lo": c.lift_lo, f"{name}.lift_hi": c.lift_hi,
                             f"{name}.diff": c.diff, f"{name}.diff_lo": c.diff_lo, f"{name}.diff_hi": c.diff_hi}
        for slice_name, (verdict, c) in outcome.gates.gate1.per_slice.items():
            tags[f"recopt.gate1.{slice_name}"] = verdict
            metrics_ |= {f"gate1.{slice_name}.lift": c.lift, f"gate1.{slice_name}.lift_lo": c.lift_lo,
                         f"gate1.{slice_name}.lift_hi": c.lift_hi}
    return {k: v for k, v in metrics_.items() if math.isfinite(v)}, tags


def publish_fold(cfg: Config, outcome: FoldOutcome, out: Output) -> None:
    """After the artifact is committed: the DVC metrics files, MLflow, the run facts, the console."""
    write_dvc_metrics(cfg, outcome)
    seconds, url = track(cfg, outcome.data, outcome.runs, root=out.root, kind="dvc", started=outcome.started,
                         finished=outcome.finished, chosen_alpha=outcome.selection.alpha.chosen,
                         intervals=outcome.intervals, facts=parent_facts(outcome))
    add_run_facts(out, mlflow_s=seconds)
    print_summary(cfg, outcome, out.root / "report.md", url)
