"""Whole-pipeline benchmark: the real `dvc repro`, stage by stage, in a scratch copy of the repo.

    python benchmarks/pipeline.py                          # synthetic ml32m preset
    python benchmarks/pipeline.py --preset small           # quick look
    python benchmarks/pipeline.py --movielens /data/ml-32m # a real MovieLens folder, unchanged otherwise

Prints one table: per stage wall time, CPU time, peak RSS and output size on disk, the totals,
then the anchors measured in the same run on the same data — implicit's ALS fit alone vs
cf-load, faiss exact top-800 for every user alone vs candidates — as ratios, and finally a
re-run after changing only `alpha` (DVC must re-run evaluate alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "split", "embed-load", "cf-load", "candidates", "evaluate"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


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
train = pl.read_parquet(cfg.paths.split + "/train.parquet")
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
cfg = read_params("params.yaml"); d = cfg.paths.cf_load
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ml32m", help="synthetic preset (tiny, small, ml32m)")
    ap.add_argument("--movielens", type=Path, help="a MovieLens folder instead of the synthetic generator")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recopt-bench"))
    args = ap.parse_args()
    repo = copy_repo(args.workdir / "repo")
    data = (["data=movielens", f"data.path={args.movielens.resolve()}"] if args.movielens
            else [f"data.preset={args.preset}"])
    measure([sys.executable, "-m", "stages.compose", *data], repo)
    rows = []
    for stage in STAGES:
        r = measure(["dvc", "repro", "--single-item", stage], repo)
        r["stage"] = stage
        r["out_mb"] = du(repo / "data" / stage.replace("-", "_")) / 2**20
        rows.append(r)
        print(f"{stage}: {r['wall_s']:.1f} s", flush=True)
    als = anchor(ANCHOR_ALS, repo)
    knn = anchor(ANCHOR_FAISS, repo)
    measure([sys.executable, "-m", "stages.compose", *data, "alpha=0.8"], repo)
    rerun = measure(["dvc", "repro"], repo)
    ran = [s for s in STAGES if f"Running stage '{s}'" in rerun["output"]]

    print(f"\nrecopt pipeline benchmark — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()}, {os.cpu_count()} cores, data: {' '.join(data)}\n")
    print("| stage | wall s | CPU s | peak RSS GB | output MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['out_mb']:.0f} |")
    tot = {k: sum(r[k] for r in rows) for k in ("wall_s", "cpu_s", "out_mb")}
    peak = max(r["peak_rss_gb"] for r in rows)
    print(f"| **total** | **{tot['wall_s']:.1f}** | {tot['cpu_s']:.1f} | {peak:.2f} (max) | {tot['out_mb']:.0f} |")
    by = {r["stage"]: r for r in rows}
    print("\n| anchor (same data, same run) | anchor s | recopt stage s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| implicit ALS fit alone vs cf-load | {als['core_s']:.1f} | {by['cf-load']['wall_s']:.1f} | "
          f"{by['cf-load']['wall_s'] / als['core_s']:.2f}x |")
    print(f"| faiss flat IP top-{800} for all users vs candidates | {knn['core_s']:.1f} | "
          f"{by['candidates']['wall_s']:.1f} | {by['candidates']['wall_s'] / knn['core_s']:.2f}x |")
    print(f"\nre-run after changing only alpha: {rerun['wall_s']:.1f} s, stages re-run: {', '.join(ran) or 'none'}")
    report = {"rows": [{k: v for k, v in r.items() if k != "output"} for r in rows], "anchor_als_s": als["core_s"],
              "anchor_faiss_s": knn["core_s"], "rerun_alpha_s": rerun["wall_s"], "rerun_stages": ran,
              "data": data}
    (args.workdir / "benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
