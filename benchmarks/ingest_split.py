"""Ingest and split at MovieLens-32M scale: generation, reading a 32M-row ratings.csv, splitting.

    python benchmarks/ingest_split.py [--preset ml32m] [--workdir /tmp/recopt-bench-ingest]

Each step runs in its own process (so peak RSS is the step's own) and prints wall time and peak RSS:
1. synthetic generation + ingest (data.preset)
2. the same tables written as a MovieLens CSV folder (ratings.csv, movies.csv, tags.csv; not timed)
3. ingest of that folder (data=movielens): read + validate + write parquet
4. split of the ingested ratings
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TO_CSV = """
import sys, polars as pl
src, dst = sys.argv[1], sys.argv[2]
pl.read_parquet(src + "/ratings.parquet").write_csv(dst + "/ratings.csv")
m = pl.read_parquet(src + "/movies.parquet")
m.select("movieId", "title", pl.col("genres").list.join("|")).write_csv(dst + "/movies.csv")
pl.read_parquet(src + "/tags.parquet").write_csv(dst + "/tags.csv")
"""


def step(label: str, cmd: list[str]) -> None:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{label} failed:\n{err[-3000:]}")
    print(f"| {label} | {time.perf_counter() - start:.1f} | {usage.ru_utime + usage.ru_stime:.1f} | "
          f"{usage.ru_maxrss / 2**20:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="ml32m")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recopt-bench-ingest"))
    a = ap.parse_args()
    w = a.workdir.resolve()
    csv = w / "movielens-csv"
    csv.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    paths = [f"paths.{k}={w}/{k}" for k in ("ingest", "split", "downloads")]
    print("| step | wall s | CPU s | peak RSS GB |\n|---|---:|---:|---:|")
    step(f"generate + ingest (synthetic {a.preset})", [*py, "stages.ingest", f"data.preset={a.preset}", *paths])
    subprocess.run([sys.executable, "-c", TO_CSV, str(w / "ingest"), str(csv)], check=True)
    rows = sum(1 for _ in open(csv / "ratings.csv")) - 1
    movielens = ["data=movielens", f"data.path={csv}"]
    step(f"ingest MovieLens CSV ({rows:,} ratings)", [*py, "stages.ingest", *movielens, *paths])
    step("split (temporal_user, 5% cold)", [*py, "stages.split", *movielens, *paths])


if __name__ == "__main__":
    main()
