"""Tables, acceptance gates, the markdown report and the alpha plot — all from results.

No number here is typed by hand: every table is built from RunResults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recopt import metrics
from recopt.config import Config
from recopt.evaluate import EvalData, RunResult, summarise_run

USER_COLUMNS = ["alpha", "users_eval", "users_skipped", "mean_cand", "recall@10", "map@10",
                "alpha_time_sec", "alpha_timed_out"]
METRIC_COLUMNS = ["recall@5", "recall@20", "ndcg@10", "mrr@10", "hit_rate@10", "coverage@10", "novelty@10",
                  "diversity@10", "pool_recall", "cold_item_share@10"]


def results_row(r: RunResult, data: EvalData) -> dict[str, Any]:
    s = r.summary
    row: dict[str, Any] = {
        "run": r.spec.name, "alpha": r.spec.alpha, "users_eval": len(r.users),
        "users_skipped": sum(data.skipped.values()), "mean_cand": round(s["mean_cand"], 1),
        "alpha_time_sec": r.seconds, "alpha_timed_out": r.timed_out, "resumed_batches": r.resumed_batches,
    }
    for name in ["recall@10", "map@10", *METRIC_COLUMNS]:
        row[name] = s.get(name, float("nan"))
    return row


def results_table(results: list[RunResult], data: EvalData) -> pl.DataFrame:
    """One row per run, the user's columns first."""
    rows = [results_row(r, data) for r in results]
    return pl.DataFrame(rows).select(["run", *USER_COLUMNS, *METRIC_COLUMNS, "resumed_batches"])


def slices_table(results: list[RunResult], data: EvalData) -> pl.DataFrame:
    """Every metric per slice (cold, warm, heavy) for every run."""
    slice_of = dict(zip(data.users["user"].to_list(), data.users["slice"].to_list()))
    rows = []
    for r in results:
        labels = np.array([slice_of[u] for u in r.users.tolist()]) if len(r.users) else np.array([])
        for name in ("cold", "warm", "heavy"):
            mask = labels == name
            sub = RunResult(spec=r.spec, users=r.users[mask], lists=r.lists[mask], scores=r.scores[mask],
                            per_user={k: v[mask] for k, v in r.per_user.items()})
            s = summarise_run(sub, data)
            rows.append({"run": r.spec.name, "slice": name, "users": int(mask.sum()),
                         **{k: s.get(k, float("nan")) for k in ["recall@10", "map@10", *METRIC_COLUMNS]}})
    return pl.DataFrame(rows)


def _aligned(a: RunResult, b: RunResult, metric: str, users: np.ndarray | None = None):
    common = np.intersect1d(a.users, b.users)
    if users is not None:
        common = np.intersect1d(common, users)
    ia, ib = np.searchsorted(a.users, common), np.searchsorted(b.users, common)
    return a.per_user[metric][ia], b.per_user[metric][ib], len(common)


def acceptance_gates(alphas: list[RunResult], baselines: list[RunResult], data: EvalData,
                     cfg: Config, rng: np.random.Generator) -> dict[str, Any]:
    """Gate 1: best alpha beats the best baseline by >= gate_min_lift relative Recall@10
    (paired bootstrap 95% interval over users). Gate 2: on cold-start users the best
    alpha's Recall@10 is not below the content-only baseline's."""
    key = "recall@10"
    done = [r for r in alphas if len(r.users)]
    if not done or not baselines:
        return {"evaluated": False, "reason": "no finished alpha run or no baseline"}
    best = max(done, key=lambda r: r.summary[key])
    base = max(baselines, key=lambda r: r.summary[key])
    a, b, n = _aligned(best, base, key)
    bs = metrics.paired_bootstrap(a, b, cfg.evaluate.bootstrap_samples, rng)
    out: dict[str, Any] = {
        "evaluated": True, "best_alpha": best.spec.alpha, "best_baseline": base.spec.kind,
        "gate1": {"metric": key, "users": n, "alpha_value": float(a.mean()), "baseline_value": float(b.mean()),
                  "lift": bs.rel, "lift_ci": [bs.rel_lo, bs.rel_hi], "diff": bs.diff,
                  "diff_ci": [bs.diff_lo, bs.diff_hi], "required_lift": cfg.evaluate.gate_min_lift,
                  "significant": bool(bs.diff_lo > 0), "passed": bool(bs.rel >= cfg.evaluate.gate_min_lift)},
    }
    content = next((r for r in baselines if r.spec.kind == "content_only"), None)
    cold_users = data.users.filter(pl.col("slice") == "cold")["user"].to_numpy()
    if content is None or not len(cold_users):
        out["gate2"] = {"evaluated": False, "reason": "no content_only baseline or no cold users", "passed": True}
    else:
        a, b, n = _aligned(best, content, key, cold_users)
        bs2 = metrics.paired_bootstrap(a, b, cfg.evaluate.bootstrap_samples, rng) if n else None
        out["gate2"] = {"evaluated": bool(n), "metric": f"{key} (cold slice)", "users": n,
                        "alpha_value": float(a.mean()) if n else 0.0,
                        "content_only_value": float(b.mean()) if n else 0.0,
                        "diff": bs2.diff if bs2 else 0.0, "diff_ci": [bs2.diff_lo, bs2.diff_hi] if bs2 else [0, 0],
                        "passed": bool(n == 0 or a.mean() >= b.mean())}
    out["passed"] = bool(out["gate1"]["passed"] and out["gate2"]["passed"])
    return out


def to_markdown(df: pl.DataFrame, digits: int = 4) -> str:
    """A polars frame as a GitHub markdown table."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_alpha_curve(table: pl.DataFrame, path: Path) -> None:
    """Recall@10 / NDCG@10 against alpha, coverage and novelty alongside (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.filter(pl.col("alpha").is_not_null()).sort("alpha")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = t["alpha"].to_numpy()
    for name in ("recall@10", "ndcg@10", "map@10"):
        axes[0].plot(x, t[name].to_numpy(), marker="o", label=name)
    axes[0].set_title("accuracy vs alpha")
    axes[0].legend()
    axes[1].plot(x, t["coverage@10"].to_numpy(), marker="o", color="tab:green")
    axes[1].set_title("coverage@10")
    axes[2].plot(x, t["novelty@10"].to_numpy(), marker="o", color="tab:purple")
    axes[2].set_title("novelty@10 (bits)")
    for ax in axes:
        ax.set_xlabel("alpha (content weight)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: Path, tuning: pl.DataFrame, baselines: pl.DataFrame, slices: pl.DataFrame,
                 gates: dict[str, Any], data: EvalData, timings: dict[str, float], plot_name: str) -> None:
    """The markdown report: grid, baselines, slices, gates with intervals, timings."""
    g1, g2 = gates.get("gate1", {}), gates.get("gate2", {})
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines = [
        "# recopt evaluation report", "",
        f"Evaluated users: {int(tuning['users_eval'].max() or 0)}; skipped: "
        + ", ".join(f"{k} = {v}" for k, v in data.skipped.items()) + ".", "",
        "## Alpha grid", "", to_markdown(tuning), "",
        f"![metrics against alpha]({plot_name})", "",
        "## Baselines", "", to_markdown(baselines), "",
        "## Slices", "", to_markdown(slices), "",
        "## Acceptance gates", "",
    ]
    if gates.get("evaluated"):
        lines += [
            f"1. **{verdict(g1['passed'])}** — best alpha {gates['best_alpha']} vs best baseline "
            f"`{gates['best_baseline']}` on Recall@10 over {g1['users']} users: {g1['alpha_value']:.4f} vs "
            f"{g1['baseline_value']:.4f}, relative lift {g1['lift']:+.2%} (95% CI {g1['lift_ci'][0]:+.2%} .. "
            f"{g1['lift_ci'][1]:+.2%}); required {g1['required_lift']:+.0%}"
            + ("." if g1["significant"] else "; the interval includes no gain, so the lift is not significant."),
            f"2. **{verdict(g2['passed'])}** — cold-start Recall@10, best alpha vs content-only: "
            + (f"{g2['alpha_value']:.4f} vs {g2['content_only_value']:.4f} over {g2['users']} cold users "
               f"(difference {g2['diff']:+.4f}, 95% CI {g2['diff_ci'][0]:+.4f} .. {g2['diff_ci'][1]:+.4f})."
               if g2.get("evaluated") else g2.get("reason", "")),
        ]
    else:
        lines.append(f"Not evaluated: {gates.get('reason')}")
    lines += ["", "## Timings (seconds)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timings.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
