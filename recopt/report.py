"""Tables, intervals, gates, the markdown report, the console summary and the plot -- all from runs.

No number here is typed by hand: every table is built from the evaluated runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt import gates
from recopt.config import Config
from recopt.runs import Run, common_users, on_users, slice_summaries, user_slices

# The study's columns first. Its alpha_time_sec is a run fact: it lives in paths.runs/evaluate@<fold>.json
# and in MLflow, never in a DVC-tracked table (identical results must hash identically).
USER_COLUMNS = ["alpha", "users_eval", "users_skipped", "mean_cand", "recall@10", "map@10", "alpha_timed_out"]
METRIC_COLUMNS = ["recall@5", "recall@20", "ndcg@10", "mrr@10", "hit_rate@10", "coverage@10", "novelty@10",
                  "diversity@10", "pool_recall", "cold_item_share@10"]
CONSOLE = ["recall@10", "map@10", "ndcg@10", "coverage@10", "novelty@10"]
INTERVAL_METRICS = ["recall@10", "map@10", "ndcg@10"]


def runs_table(runs: list[Run], skipped: int, with_time: bool = False) -> pl.DataFrame:
    """One row per run: how it was chosen, its users, every metric (and its compute seconds when
    `with_time`: only for tables outside DVC's outputs)."""
    rows = []
    for r in runs:
        s = r.summary
        rows.append({"run": r.name, "chosen": r.chosen, "alpha": r.alpha, "users_eval": int(s["users_eval"]),
                     "users_skipped": skipped, "mean_cand": round(s["mean_cand"], 1),
                     "alpha_timed_out": not r.complete, **{k: s.get(k, float("nan"))
                                                           for k in ["recall@10", "map@10", *METRIC_COLUMNS]},
                     **({"alpha_time_sec": r.seconds} if with_time else {})})
    return pl.DataFrame(rows, schema_overrides={"alpha": pl.Float64})


def tuning_table(table: pl.DataFrame) -> pl.DataFrame:
    """The alpha grid in the columns the study asked for first (`tuning_results.csv`)."""
    grid = table.filter(pl.col("chosen").is_in(["alpha* (validation)", "grid (information)"]))
    return grid.select([*USER_COLUMNS, *METRIC_COLUMNS]).sort("alpha")


def slices_table(runs: list[Run], data: Any) -> pl.DataFrame:
    return pl.DataFrame([row for r in runs for row in slice_summaries(r, data)])


def intervals(reference: Run, runs: list[Run], cfg: Config, rng: np.random.Generator) -> pl.DataFrame:
    """Every run serving all users against `reference` (alpha*) on Recall@10, MAP@10, NDCG@10: the
    difference and the relative lift with paired-bootstrap 95% intervals, on the users all of them
    finished. (Cold-start rows serve only users without a CF factor: gate 2 compares those.)"""
    others = [r for r in runs if r.name != reference.name and r.kind != "cold"]
    users = common_users([reference, *others])
    if not len(users) or not others:
        return pl.DataFrame()
    cols = [on_users(r, users, m) for r in [reference, *others] for m in INTERVAL_METRICS]
    samples = gates.bootstrap_means(np.column_stack(cols), cfg.evaluate.bootstrap_samples, rng)
    means = np.column_stack(cols).mean(axis=0)
    n_m = len(INTERVAL_METRICS)
    rows = []
    for j, r in enumerate(others, start=1):
        for i, m in enumerate(INTERVAL_METRICS):
            a, b = j * n_m + i, i  # the run against alpha*
            res = gates.interval(means[a], means[b], samples[:, a], samples[:, b])
            rows.append({"run": r.name, "vs": reference.name, "metric": m, "users": len(users), "value": means[a],
                         "alpha_star": means[b], "diff": res.diff, "diff_lo": res.diff_lo, "diff_hi": res.diff_hi,
                         "lift": res.rel, "lift_lo": res.rel_lo, "lift_hi": res.rel_hi})
    return pl.DataFrame(rows)


def _compare(a: Run, b: Run, data: Any, cfg: Config, rng: np.random.Generator, slice_name: str | None = None,
             metric_names: tuple[str, ...] = ("recall@10",)) -> dict[str, Any]:
    users = common_users([a, b])
    if slice_name is not None:
        users = users[user_slices(users, data) == slice_name]
    out: dict[str, Any] = {"users": int(len(users))}
    if not len(users):
        return out
    cols = [on_users(r, users, m) for m in metric_names for r in (a, b)]
    samples = gates.bootstrap_means(np.column_stack(cols), cfg.evaluate.bootstrap_samples, rng)
    for i, m in enumerate(metric_names):
        va, vb = cols[2 * i], cols[2 * i + 1]
        res = gates.interval(va.mean(), vb.mean(), samples[:, 2 * i], samples[:, 2 * i + 1])
        out[m] = {"value": float(va.mean()), "other": float(vb.mean()), "diff": res.diff,
                  "diff_ci": [res.diff_lo, res.diff_hi], "lift": res.rel, "lift_ci": [res.rel_lo, res.rel_hi]}
    return out


def acceptance_gates(runs: list[Run], sel: dict[str, Any], data: Any, cfg: Config,
                     rng: np.random.Generator) -> dict[str, Any]:
    """Gate 1 and gate 2 on test, for the runs chosen on validation (see recopt.gates)."""
    star = next((r for r in runs if r.chosen == "alpha* (validation)"), None)
    base = next((r for r in runs if r.name == sel["baseline"]["chosen"]), None)
    if star is None or base is None:
        return {"evaluated": False, "reason": "no alpha* or no baseline chosen on validation"}
    g1 = _compare(star, base, data, cfg, rng, metric_names=("recall@10", "map@10", "ndcg@10"))
    r10 = g1["recall@10"]
    g1 |= {"run": star.name, "baseline": base.name, "required_lift": cfg.evaluate.gate_min_lift,
           "verdict": gates.gate1_verdict(r10["lift"], r10["lift_ci"][0], cfg.evaluate.gate_min_lift)}
    comparator = next((r for r in runs if r.name == sel.get("cold_comparator")), None)
    if comparator is None:
        g2: dict[str, Any] = {"verdict": "NOT EVALUATED", "reason": "no content_only or popularity baseline"}
    else:
        g2 = _compare(star, comparator, data, cfg, rng, slice_name="cold")
        if g2["users"] == 0:
            g2 |= {"verdict": "NOT EVALUATED", "reason": "no cold-start user in the test fold"}
        else:
            g2 |= {"verdict": gates.gate2_verdict(g2["recall@10"]["diff"], g2["recall@10"]["diff_ci"][1])}
        g2 |= {"run": star.name, "comparator": comparator.name}
    verdicts = [g1["verdict"], g2["verdict"]]
    return {"evaluated": True, "gate1": g1, "gate2": g2,
            "passed": gates.enforce(verdicts, cfg.evaluate.enforce_inconclusive)}


def to_markdown(df: pl.DataFrame, digits: int = 4) -> str:
    """A polars frame as a GitHub markdown table."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_table(table: pl.DataFrame, best: str | None, width: int = 34) -> str:
    """A compact plain-text table: runs x Recall@10 / MAP@10 / NDCG@10 / coverage / novelty, best marked."""
    head = f"  {'run':<{width}} " + " ".join(f"{c:>11}" for c in CONSOLE)
    lines = [head, "  " + "-" * (len(head) - 2)]
    for row in table.iter_rows(named=True):
        name = row["run"] if len(row["run"]) <= width else row["run"][:width - 1] + "…"
        mark = "*" if row["run"] == best else " "
        lines.append(f"{mark} {name:<{width}} " + " ".join(f"{row[c]:>11.4f}" for c in CONSOLE))
    return "\n".join(lines)


def gate_lines(g: dict[str, Any]) -> list[str]:
    """The two gate verdicts as sentences."""
    if not g.get("evaluated"):
        return [f"Gates not evaluated: {g.get('reason')}"]
    g1, g2 = g["gate1"], g["gate2"]
    r = g1["recall@10"]
    lines = [f"Gate 1 {g1['verdict']}: {g1['run']} vs {g1['baseline']} on test Recall@10 over {g1['users']} users: "
             f"{r['value']:.4f} vs {r['other']:.4f}, lift {r['lift']:+.2%} (95% CI {r['lift_ci'][0]:+.2%} .. "
             f"{r['lift_ci'][1]:+.2%}), required {g1['required_lift']:+.0%} with the interval above 0."]
    if "recall@10" in g2:
        c = g2["recall@10"]
        lines.append(f"Gate 2 {g2['verdict']}: cold-start users ({g2['users']}), served ranking vs "
                     f"{g2['comparator']}: {c['value']:.4f} vs {c['other']:.4f}, difference {c['diff']:+.4f} "
                     f"(95% CI {c['diff_ci'][0]:+.4f} .. {c['diff_ci'][1]:+.4f}).")
    else:
        lines.append(f"Gate 2 {g2['verdict']}: {g2.get('reason')}")
    return lines


def plot_alpha_curve(curves: dict[str, pl.DataFrame], baselines: dict[str, float], alpha_star: float | None,
                     path: Path) -> None:
    """Recall@10 and NDCG@10 against alpha per fold; baselines as horizontal lines; alpha* marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for fold, t in curves.items():
        x = t["alpha"].to_numpy()
        style = "-" if fold == "validation" else "--"
        for ax, m in zip(axes, ("recall@10", "ndcg@10", "coverage@10")):
            ax.plot(x, t[m].to_numpy(), style, marker="o", label=f"{fold}")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, value) in enumerate(baselines.items()):
        axes[0].axhline(value, color=colours[(i + 2) % len(colours)], linestyle=":", linewidth=1.2,
                        label=f"{name} (test)")
    for ax, title in zip(axes, ("Recall@10", "NDCG@10", "coverage@10")):
        if alpha_star is not None:
            ax.axvline(alpha_star, color="grey", linewidth=1, label="alpha* (validation)" if ax is axes[0] else None)
        ax.set_title(title)
        ax.set_xlabel("alpha (content weight)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def selection_lines(sel: dict[str, Any]) -> list[str]:
    a = sel["alpha"]
    lines = [f"- alpha* = {a['chosen']!r} ({sel['rule']})."]
    if a.get("edge"):
        lines.append(f"- **alpha* is at the {a['edge']} edge of the grid {a['grid']}**: the best alpha may lie "
                     "outside it; widen evaluate.alphas or set evaluate.refine=true.")
    if a.get("refined"):
        lines.append(f"- refined with {a['refined']} around the first choice.")
    lines.append("- adaptive alpha per slice: " + ", ".join(
        f"{s} = {v!r}" if v is not None else f"{s}: no user with a CF factor" for s, v in sel["adaptive"].items()))
    cs = sel["cold_start"]
    lines.append(f"- cold start: beta* = {cs['beta']!r}, prior = {cs['prior']}, MMR weight {cs['mmr_lambda']!r} "
                 f"({cs['users']} users without a CF factor; beta = 0 is content only).")
    lines.append(f"- best baseline: {sel['baseline']['chosen']}; cold-slice comparator: {sel['cold_comparator']}.")
    for name, ref in sel["references"].items():
        param = "lambda" if name == "ease" else "k"
        extra = (f"; EASE covers the {ref['items_covered']} most interacted items only (evaluate.ease_max_items)"
                 if "items_covered" in ref else "")
        lines.append(f"- reference {name}: {param} = {ref[param]!r}, chosen on {ref['users']} validation users{extra}.")
    return lines


def write_report(text_out: Any, fold: str, table: pl.DataFrame, slices: pl.DataFrame, sel: dict[str, Any],
                 gate_info: dict[str, Any] | None, interval_table: pl.DataFrame | None, skipped: dict[str, int],
                 notes: list[str]) -> str:
    """The markdown report of one fold (validation: the choices; test: results, intervals, gates)."""
    heldout = "validation" if fold == "tune" else "test"
    lines = [f"# recopt evaluation — {fold} fold (scored on {heldout})", "",
             f"Evaluated users: {int(table['users_eval'].max() or 0)}; skipped: "
             + ", ".join(f"{k} = {v}" for k, v in skipped.items()) + ".", *[f"{n}" for n in notes], "",
             "## Choices (made on validation)", "", *selection_lines(sel), "",
             f"## Runs on {heldout}", "", to_markdown(table.drop("users_skipped")), "",
             "![metrics against alpha](alpha_curve.png)", ""]
    if gate_info is not None:
        lines += ["## Acceptance gates", "", *[f"- {line}" for line in gate_lines(gate_info)], ""]
    if interval_table is not None and interval_table.height:
        lines += ["## Every row against alpha* (paired bootstrap, 95% intervals)", "",
                  to_markdown(interval_table.drop("vs")), ""]
    lines += ["## Slices", "", to_markdown(slices), ""]
    text = "\n".join(lines) + "\n"
    text_out.text("report", text)
    return text


