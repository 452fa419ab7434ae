"""Formatting a fold's outcome for people: tables, the markdown report, the console lines, the plot.

Nothing is computed or chosen here (recopt.study and recopt.comparisons do that) and no
number is typed by hand: every table is built from the evaluated runs. Labels come
from recopt.selection's table; metric columns from recopt.metrics' registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from recopt import metrics
from recopt.comparisons import Comparison, Gate, Gates
from recopt.config import HELDOUT
from recopt.runs import Run, slice_summaries
from recopt.selection import ALPHA_ROLES, COLD_ROLES, KEY, Role, Selection, part_label, role_label, run_label

# The study's columns first (the seed's tuning_results.csv). Its alpha_time_sec is a run fact: it lives in
# paths.runs/evaluate@<fold>.json and in MLflow, never in a DVC-tracked table (identical results hash alike).
USER_COLUMNS = ["alpha", "users_eval", "users_skipped", "mean_cand", "recall@10", "map@10", "alpha_timed_out"]
CONSOLE_COLD_ROWS = 3  # cold-rule rows the console shows besides the chosen one
PLOT_METRICS = tuple(metrics.shown_in(metrics.PLOT))  # the panels of alpha_curve.png (the registry's plot view)


def _row(r: Run, skipped: int, ks: list[int], with_time: bool) -> dict[str, Any]:
    s = r.summary
    return {"run": run_label(r), "chosen": role_label(r.role), "alpha": r.alpha, "users_eval": int(s["users_eval"]),
            "users_skipped": skipped, "fallback_users": r.fallback_users, "mean_cand": round(s["mean_cand"], 1),
            "alpha_timed_out": not r.complete,
            **{k: s.get(k, float("nan")) for k in metrics.shown_in(metrics.TUNING, ks)},
            **({"alpha_time_sec": r.seconds} if with_time else {})}


def runs_table(runs: list[Run], skipped: int, ks: list[int], with_time: bool = False) -> pl.DataFrame:
    """One row per run: its label, how it was chosen, its users (and how many took a fallback), every
    metric of the tuning view (and its compute seconds when `with_time`: only outside DVC's outputs)."""
    return pl.DataFrame([_row(r, skipped, ks, with_time) for r in runs], schema_overrides={"alpha": pl.Float64})


def tuning_table(runs: list[Run], skipped: int, ks: list[int]) -> pl.DataFrame:
    """The alpha curve (grid and search points) in the columns the study asked for first."""
    table = runs_table([r for r in runs if r.role in ALPHA_ROLES], skipped, ks)
    return table.select([*USER_COLUMNS, *[c for c in metrics.shown_in(metrics.TUNING, ks) if c not in USER_COLUMNS]]
                        ).sort("alpha")


def slices_table(runs: list[Run], data: Any) -> pl.DataFrame:
    return pl.DataFrame([{"run": run_label(r), **row} for r in runs for row in slice_summaries(r, data)])


def intervals_table(rows: list[tuple[Run, dict[str, Comparison]]], star: Run) -> pl.DataFrame:
    return pl.DataFrame([{"run": run_label(r), "vs": run_label(star), "metric": m, "users": c.users, "value": c.value,
                          "alpha_star": c.other, "diff": c.diff, "diff_lo": c.diff_lo, "diff_hi": c.diff_hi,
                          "lift": c.lift, "lift_lo": c.lift_lo, "lift_hi": c.lift_hi}
                         for r, by_metric in rows for m, c in by_metric.items()])


def gate_json(g: Gate) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": g.verdict, "users": g.scope}
    if g.run is not None:
        out["run"] = run_label(g.run)
    if g.against is not None:
        out["against"] = run_label(g.against)
    out |= {m: c.to_json() for m, c in g.comparisons.items()}
    if g.per_slice:
        out["per_slice"] = {s: {"verdict": v, **c.to_json()} for s, (v, c) in g.per_slice.items()}
    if g.reason:
        out["reason"] = g.reason
    return out


def gates_json(gates: Gates, min_lift: float) -> dict[str, Any]:
    return {"gate1": gate_json(gates.gate1) | {"required_lift": min_lift}, "gate2": gate_json(gates.gate2),
            "passed": gates.passed}


def to_markdown(df: pl.DataFrame, digits: int = 4) -> str:
    """A polars frame as a GitHub markdown table."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_table(runs: list[Run], star: Run | None, width: int = 44) -> str:
    """A compact plain-text table: runs x the console metrics, the chosen run marked. Cold-rule rows: the
    chosen one and the best few others (the rest are in the report)."""
    cols = metrics.shown_in(metrics.CONSOLE)
    head = f"  {'run':<{width}} " + " ".join(f"{c:>11}" for c in cols)
    lines = [head, "  " + "-" * (len(head) - 2)]
    cold = [r for r in runs if r.role in COLD_ROLES]
    shown = sorted(cold, key=lambda r: (r.role != Role.COLD_CHOSEN, r.role != Role.COLD_SEED, -r.summary[KEY]))
    keep = {id(r) for r in shown[:CONSOLE_COLD_ROWS + 1]}
    for r in runs:
        if r.role in COLD_ROLES and id(r) not in keep:
            continue
        name = run_label(r)
        name = name if len(name) <= width else name[:width - 1] + "…"
        mark = "*" if r is star else " "
        lines.append(f"{mark} {name:<{width}} " + " ".join(f"{r.summary.get(c, float('nan')):>11.4f}" for c in cols))
    if len(cold) > len(keep):
        lines.append(f"  ({len(cold) - len(keep)} more cold-start rules in the report and runs.csv)")
    return "\n".join(lines)


def _ci(c: Comparison, rel: bool) -> str:
    if rel:
        return f"{c.lift:+.2%} (95% CI {c.lift_lo:+.2%} .. {c.lift_hi:+.2%})"
    return f"{c.diff:+.4f} (95% CI {c.diff_lo:+.4f} .. {c.diff_hi:+.4f})"


def gate_lines(gates: Gates, min_lift: float) -> list[str]:
    """The two gate verdicts as sentences, each saying which users it covers; gate 1 per slice."""
    g1, g2 = gates.gate1, gates.gate2
    lines = []
    if KEY in g1.comparisons:
        r = g1.comparisons[KEY]
        lines.append(f"Gate 1 {g1.verdict}: {run_label(g1.run)} vs {run_label(g1.against)} (best baseline on "
                     f"validation) on test Recall@10, {g1.scope}: {r.value:.4f} vs {r.other:.4f}, lift "
                     f"{_ci(r, True)}; required {min_lift:+.0%} with the interval above 0.")
        lines += [f"  {name} slice ({c.users} users): {c.value:.4f} vs {c.other:.4f}, lift {_ci(c, True)} -> {v}"
                  for name, (v, c) in g1.per_slice.items()]
    else:
        lines.append(f"Gate 1 {g1.verdict}: {g1.reason}")
    if KEY in g2.comparisons:
        c = g2.comparisons[KEY]
        lines.append(f"Gate 2 {g2.verdict}: {g2.scope}, the served cold rule vs {run_label(g2.against)}: "
                     f"{c.value:.4f} vs {c.other:.4f}, difference {_ci(c, False)}.")
    else:
        lines.append(f"Gate 2 {g2.verdict}: {g2.reason}")
    return lines


def stability_line(sel: Selection) -> str:
    st = sel.stability
    base = dict(st.baseline).get(sel.baseline, 0.0)
    cold = dict(st.cold).get(sel.cold, 0.0)
    return (f"Stability over {st.samples} resamples of the validation users: alpha*={sel.alpha.chosen!r} wins "
            f"{sel.alpha_star_share:.0%} (90% of the winners in {st.alpha_range[0]!r} .. {st.alpha_range[1]!r}); "
            f"best baseline {sel.baseline} wins {base:.0%}; the cold rule wins {cold:.0%}.")


def warnings(sel: Selection) -> list[str]:
    """What a reader must not miss: alpha* still at an edge, an unstable choice."""
    out = []
    a = sel.alpha
    if a.edge is not None:
        out.append(f"alpha*={a.chosen!r} is still at the {a.edge} edge of the {len(a.tried)} alphas tried after "
                   f"adding {len(a.added)} (evaluate.alpha_search_points={a.limit}): raise it or widen evaluate.alphas.")
    for what, share in (("alpha*", sel.alpha_star_share), (f"best baseline {sel.baseline}",
                                                            dict(sel.stability.baseline).get(sel.baseline, 0.0)),
                        ("the cold rule", dict(sel.stability.cold).get(sel.cold, 0.0))):
        if share < 0.5:
            out.append(f"{what} wins only {share:.0%} of the resampled validation sets: the choice is not stable.")
    return out


def selection_lines(sel: Selection) -> list[str]:
    a = sel.alpha
    lines = [f"- alpha* = {a.chosen!r} ({sel.rule}), over {len(a.tried)} alphas: the grid {list(a.grid)}"
             + (f" and {list(a.added)} added by the search (evaluate.alpha_search_points={a.limit})." if a.added
                else " (alpha* interior: no search needed)." if a.edge is None else ".")]
    lines.append("- adaptive alpha per slice: " + ", ".join(
        f"{s} = {v!r}" if v is not None else f"{s}: no user with a factor from the fit" for s, v in sel.adaptive.items()))
    lines.append(f"- cold start ({sel.cold_users} users without a factor from the fit): {sel.cold.label}.")
    lines.append(f"- best baseline: {sel.baseline}; cold-slice comparator: {sel.cold_comparator}.")
    for name, ref in sel.references.items():
        extra = (f"; EASE covers the {ref.items_covered} most interacted items only (evaluate.ease_max_items)"
                 if ref.items_covered is not None else "")
        lines.append(f"- reference {part_label(ref.part)}, chosen on {ref.users} validation users{extra}.")
    lines.append(f"- {stability_line(sel)}")
    return lines + [f"- **{w}**" for w in warnings(sel)]


def cold_table(runs: list[Run], data: Any) -> pl.DataFrame:
    """The cold slice: the served rule (alpha*'s run there) next to every baseline and reference."""
    rows = []
    for r in runs:
        if r.role in (Role.ALPHA_STAR, Role.BASELINE_BEST, Role.BASELINE, Role.REFERENCE_CHOSEN, Role.COLD_SEED):
            s = next(row for row in slice_summaries(r, data) if row["slice"] == "cold")
            rows.append({"run": run_label(r), "users": s["users"], "fallback_users": round(s["fallback"] * s["users"]),
                         **{m: s[m] for m in metrics.shown_in(metrics.SLICE)}})
    return pl.DataFrame(rows)


def report_markdown(fold: str, table: pl.DataFrame, slices: pl.DataFrame, cold: pl.DataFrame, sel: Selection,
                    gates: Gates | None, intervals: pl.DataFrame | None, skipped: dict[str, int],
                    min_lift: float) -> str:
    """The markdown report of one fold (validation: the choices; test: results, intervals, gates)."""
    heldout = HELDOUT[fold]
    lines = [f"# recopt evaluation — {fold} fold (scored on {heldout})", "",
             f"Evaluated users: {int(table['users_eval'].max() or 0)}; skipped: "
             + ", ".join(f"{k} = {v}" for k, v in skipped.items()) + ".", ""]
    if fold == "tune":
        lines += ["Every choice below is made here, on validation; the test fold only reports on it.", ""]
    lines += ["## Choices (made on validation)", "", *selection_lines(sel), "",
              f"## Runs on {heldout}", "",
              "Baselines serve every user: a user cf_only or content_only cannot score (no factor, no content "
              "profile) gets the popularity list (`fallback_users`).", "",
              to_markdown(table.drop("users_skipped")), "", "![metrics against alpha](alpha_curve.png)", ""]
    if gates is not None:
        lines += ["## Acceptance gates", "", *[f"- {line}" for line in gate_lines(gates, min_lift)], ""]
    if intervals is not None and intervals.height:
        lines += ["## Every row against alpha* (paired bootstrap, 95% intervals)", "",
                  to_markdown(intervals.drop("vs")), ""]
    lines += ["## The cold slice", "", "The served cold rule (alpha*'s row) against every baseline and reference "
              "on the users without a factor from the fit.", "", to_markdown(cold), "",
              "## Slices", "", to_markdown(slices), ""]
    return "\n".join(lines) + "\n"


def plot_alpha_curve(curves: dict[str, pl.DataFrame], baselines: dict[str, float], alpha_star: float | None,
                     path: Path, baselines_on: str = "test") -> None:
    """Recall@10, NDCG@10 and coverage@10 against alpha per held-out split; baselines (measured on
    `baselines_on`) as horizontal lines; alpha* marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(14, 4))
    for fold, t in curves.items():
        x = t["alpha"].to_numpy()
        style = "-" if fold == "validation" else "--"
        for ax, m in zip(axes, PLOT_METRICS):
            ax.plot(x, t[m].to_numpy(), style, marker="o", label=f"{fold}")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, value) in enumerate(baselines.items()):
        axes[0].axhline(value, color=colours[(i + 2) % len(colours)], linestyle=":", linewidth=1.2,
                        label=f"{name} ({baselines_on})")
    for ax, title in zip(axes, PLOT_METRICS):
        if alpha_star is not None:
            ax.axvline(alpha_star, color="grey", linewidth=1, label=role_label(Role.ALPHA_STAR) if ax is axes[0] else None)
        ax.set_title(title)
        ax.set_xlabel("alpha (content weight)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
