"""Whole-pipeline benchmark: the real `dvc repro`, stage by stage, in a scratch copy of the repo.

    python benchmarks/pipeline.py                          # synthetic ml32m preset, both folds
    python benchmarks/pipeline.py --preset small           # quick look
    python benchmarks/pipeline.py --movielens /data/ml-32m # a MovieLens-format folder, unchanged otherwise
    python benchmarks/pipeline.py --ray                    # also candidates@test and evaluate@test on
                                                           # engine=ray (local Ray, 2 CPUs), compared

Prints, from one run: per stage wall time, CPU time (and CPU/wall), peak RSS and output size; the
totals per fold and overall; the anchors measured in the same run on the same data -- implicit's
ALS fit alone vs cf-load, faiss exact top-800 for every user alone vs candidates -- as ratios; the
pool store per fold; evaluate's passes, the compute seconds of one alpha and the MLflow logging time;
a re-run after changing only `alpha` (`dvc exp run -S alpha=x` re-runs evaluate alone); a sweep of
three new alphas; evaluate resumed wholly from its checkpoints, per fold; the targets of the study
(issue "interactive speed") met or missed by the measured amount; and with --ray the engine=ray /
engine=local ratios, the peak RSS of the driver and of the Ray workers, and whether every output file
is identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FOLD_STAGES = ["embed-load", "cf-load", "candidates", "evaluate"]
STAGES = ["ingest", "split", *[f"{s}@{f}" for f in ("tune", "test") for s in FOLD_STAGES]]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


class RaySampler(threading.Thread):
    """Peak summed RSS of the Ray worker processes ("ray::" in their command line) while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_gb, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ray::" in cmd or "default_worker.py" in cmd:
                    total += p.info["memory_info"].rss if p.info["memory_info"] else 0
            self.peak_gb = max(self.peak_gb, total / 2**30)
            time.sleep(0.5)


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; wall seconds, CPU seconds and peak RSS (GiB) of it and its waited-for children."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out[-5000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "output": out}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def digests(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def copy_repo(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


ANCHOR_ALS = """
import sys, time, numpy as np, polars as pl, scipy.sparse as sp
from threadpoolctl import threadpool_limits
from implicit.cpu.als import AlternatingLeastSquares
from recopt.config import read_params
cfg = read_params("params.yaml"); c = cfg.cf_load
train = pl.read_parquet(cfg.paths.split + "/test/train.parquet")
users = np.unique(train["userId"].to_numpy(), return_inverse=True)[1]
items = np.unique(train["movieId"].to_numpy(), return_inverse=True)[1]
conf = 1.0 + c.confidence_scale * train["rating"].to_numpy() / 5.0
m = sp.csr_matrix((conf.astype(np.float32), (users, items)))
model = AlternatingLeastSquares(factors=c.factors, regularization=c.regularization, iterations=c.iterations,
                                random_state=0)
t = time.perf_counter()
with threadpool_limits(1, "blas"):
    model.fit(m, show_progress=False)
print(time.perf_counter() - t)
"""

ANCHOR_FAISS = """
import time, numpy as np, faiss
from recopt.config import read_params
cfg = read_params("params.yaml"); d = cfg.paths.cf_load + "/test"
U = np.load(d + "/user_factors.npy")[np.load(d + "/user_has_cf.npy")]
V = np.load(d + "/item_factors.npy")[np.load(d + "/item_has_cf.npy")]
index = faiss.IndexFlatIP(V.shape[1]); index.add(np.ascontiguousarray(V))
t = time.perf_counter()
for s in range(0, len(U), 8192):
    index.search(np.ascontiguousarray(U[s:s + 8192]), cfg.candidates.n_cf_seed)
print(time.perf_counter() - t)
"""


def anchor(code: str, repo: Path) -> dict:
    r = measure([sys.executable, "-c", code], repo)
    r["core_s"] = float(r["output"].strip().splitlines()[-1])
    return r


def facts(repo: Path, label: str) -> dict:
    path = repo / "data/runs" / f"{label.replace('-', '_')}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def ray_compare(repo: Path, data: list[str]) -> dict:
    """candidates@test and evaluate@test again on engine=ray; ratios and identity with engine=local."""
    out = {}
    for stage, folder in (("candidates@test", "candidates/test"), ("evaluate@test", "evaluate/test")):
        local = digests(repo / "data" / folder)
        shutil.rmtree(repo / "data/checkpoints", ignore_errors=True)  # compute, as the local run did
        measure([sys.executable, "-m", "stages.compose", *data, "engine=ray"], repo)
        sampler = RaySampler()
        sampler.start()
        r = measure(["dvc", "repro", "--single-item", "--force", stage], repo)
        sampler.stop.set()
        sampler.join()
        out[stage] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "driver_peak_rss_gb": r["peak_rss_gb"],
                      "workers_peak_rss_gb": sampler.peak_gb,
                      "identical": digests(repo / "data" / folder) == local}
        measure([sys.executable, "-m", "stages.compose", *data], repo)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ml32m", help="synthetic preset (tiny, small, ml32m)")
    ap.add_argument("--movielens", type=Path, help="a MovieLens folder instead of the synthetic generator")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recopt-bench"))
    ap.add_argument("--ray", action="store_true", help="also compare engine=ray with engine=local")
    args = ap.parse_args()
    repo = copy_repo(args.workdir / "repo")
    data = (["data=movielens", f"data.path={args.movielens.resolve()}"] if args.movielens
            else [f"data.preset={args.preset}"])
    measure([sys.executable, "-m", "stages.compose", *data], repo)
    rows = []
    for stage in STAGES:
        r = measure(["dvc", "repro", "--single-item", stage], repo)
        name, _, fold = stage.partition("@")
        r |= {"stage": stage, "out_mb": du(repo / "data" / name.replace("-", "_") / fold) / 2**20}
        rows.append(r)
        print(f"{stage}: {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak {r['peak_rss_gb']:.2f} GB", flush=True)
    first = {fold: facts(repo, f"evaluate@{fold}") for fold in ("tune", "test")}  # later runs overwrite the facts
    als = anchor(ANCHOR_ALS, repo)
    knn = anchor(ANCHOR_FAISS, repo)
    run_cmd = [sys.executable, "-m", "stages.compose", *data]
    measure([*run_cmd, "alpha=0.8"], repo)
    rerun = measure(["dvc", "repro"], repo)
    ran = [s for s in STAGES if f"Running stage '{s}'" in rerun["output"]]
    measure(run_cmd, repo)
    measure(["dvc", "repro"], repo)  # back to the committed config (evaluate resumes from checkpoints)
    sweep = measure([sys.executable, "-m", "stages.evaluate", "-m", "alpha=0.3,0.45,0.6", *data], repo)
    resumed = {fold: measure(["dvc", "repro", "--single-item", "--force", f"evaluate@{fold}"], repo)
               for fold in ("tune", "test")}
    rays = ray_compare(repo, data) if args.ray else {}

    print(f"\nrecopt pipeline benchmark — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()}, {os.cpu_count()} cores, data: {' '.join(data)}\n")
    print("| stage | wall s | CPU s | CPU/wall | peak RSS GB | output MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / r['wall_s']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['out_mb']:.0f} |")
    for fold in ("tune", "test"):
        sel = [r for r in rows if r["stage"].endswith(f"@{fold}")]
        print(f"| fold {fold} ({len(sel)} stages) | {sum(r['wall_s'] for r in sel):.1f} | "
              f"{sum(r['cpu_s'] for r in sel):.1f} | | {max(r['peak_rss_gb'] for r in sel):.2f} | |")
    tot = {k: sum(r[k] for r in rows) for k in ("wall_s", "cpu_s", "out_mb")}
    peak = max(r["peak_rss_gb"] for r in rows)
    print(f"| **total** | **{tot['wall_s']:.1f}** | {tot['cpu_s']:.1f} | {tot['cpu_s'] / tot['wall_s']:.2f} | "
          f"{peak:.2f} (max) | {tot['out_mb']:.0f} |")
    by = {r["stage"]: r for r in rows}
    cf, cand = by["cf-load@test"], by["candidates@test"]
    print("\n| anchor (same data, same run) | anchor s | recopt stage s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| implicit ALS fit alone vs cf-load@test | {als['core_s']:.1f} | {cf['wall_s']:.1f} | "
          f"{cf['wall_s'] / als['core_s']:.2f}x |")
    print(f"| faiss flat IP top-800 for every user vs candidates@test | {knn['core_s']:.1f} | {cand['wall_s']:.1f} | "
          f"{cand['wall_s'] / knn['core_s']:.2f}x |")
    one_alpha, mlflow_s = {}, {}
    for fold in ("tune", "test"):
        store = du(repo / "data/candidates" / fold / "pools") / 2**30
        ev = first[fold]
        steps = ev.get("steps_s", {})
        one = [v for k, v in steps.items() if k.startswith("alpha_time_sec:alpha=") and "full" not in k]
        one_alpha[fold] = (sum(one) / len(one)) if one else float("nan")
        mlflow_s[fold] = ev.get("mlflow_s", float("nan"))
        print(f"\n{fold}: pool store {store:.2f} GB; evaluate passes "
              f"{', '.join(f'{k} {v:.1f} s' for k, v in steps.items() if k.startswith('pass'))}; reference fits "
              f"{sum(v for k, v in steps.items() if k.startswith('fit:')):.1f} s; one alpha (compute, whole fold) "
              f"{one_alpha[fold]:.1f} s; MLflow logging {mlflow_s[fold]:.1f} s")
    print(f"\nre-run after changing only alpha: {rerun['wall_s']:.1f} s, stages re-run: {', '.join(ran) or 'none'}")
    total = sum(r["wall_s"] for r in rows)
    anchors = 2 * (als["core_s"] + knn["core_s"])
    stores = [du(repo / "data/candidates" / f / "pools") / 2**30 for f in ("tune", "test")]
    targets = [
        ("whole two-fold pipeline / (2 x (ALS fit + faiss top-800))", total / anchors, 2.5, "x",
         f"{total:.0f} s / {anchors:.0f} s"),
        ("cf-load@test / implicit ALS fit alone", cf["wall_s"] / als["core_s"], 1.1, "x", ""),
        ("candidates@test / faiss flat-IP top-800", cand["wall_s"] / knn["core_s"], 3.0, "x", ""),
        *[(f"one alpha over all users, compute, {f} / faiss anchor", one_alpha[f] / knn["core_s"], 0.15, "x",
           f"{one_alpha[f]:.1f} s") for f in ("tune", "test")],
        ("dvc exp run -S alpha=x (evaluate@tune and @test re-run)", rerun["wall_s"], 20, " s", ""),
        ("a sweep of three new alphas (baselines from checkpoints)", sweep["wall_s"], 60, " s", ""),
        *[(f"evaluate@{f} resumed wholly from checkpoints", resumed[f]["wall_s"], 8, " s", "") for f in ("tune", "test")],
        *[(f"pool store, {f}", g, 1.0, " GB", "") for f, g in zip(("tune", "test"), stores)],
        *[(f"MLflow logging, evaluate@{f} (inside the stage's time)", mlflow_s[f], 5, " s", "") for f in ("tune", "test")],
        ("peak RSS, any stage", peak, 8, " GB", ""),
    ]
    print("\n| figure | measured | target | |")
    print("|---|---:|---:|---|")
    for name, value, target, unit, note in targets:
        verdict = "met" if value <= target else f"missed by {value - target:.2f}{unit} ({value / target:.1f}x)"
        print(f"| {name} | {value:.2f}{unit}{f' ({note})' if note else ''} | <= {target}{unit} | {verdict} |")
    report = {"rows": [{k: v for k, v in r.items() if k != "output"} for r in rows], "anchor_als_s": als["core_s"],
              "anchor_faiss_s": knn["core_s"], "rerun_alpha_s": rerun["wall_s"], "rerun_stages": ran, "ray": rays,
              "sweep_s": sweep["wall_s"], "resumed_s": {f: r["wall_s"] for f, r in resumed.items()},
              "one_alpha_s": one_alpha, "mlflow_s": mlflow_s, "data": data,
              "targets": [{"figure": n, "measured": v, "target": t} for n, v, t, _, _ in targets]}
    (args.workdir / "benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
