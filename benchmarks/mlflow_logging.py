"""How long recopt's MLflow logging takes for one evaluation, on a fresh temporary SQLite store.

    python benchmarks/mlflow_logging.py [--children 40] [--metrics 200] [--repeat 3]

A synthetic family like an evaluation's: a parent with the report's files and `--children` child
runs, each with `--metrics` metrics, the flattened config as params, a few tags, the input
dataset and two small files (slices.csv, per_user.parquet). Prints the time to create the store
(first call) and the wall and CPU time of each `log_family` call on the existing store. On a busy
machine the wall time varies by 2x from run to run; the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recopt import tracking  # noqa: E402
from recopt.config import load_config  # noqa: E402
from stages._entry import compose  # noqa: E402


def family(root: Path, children: int, metrics: int, cfg) -> tuple[tracking.RunRecord, list[tracking.RunRecord]]:
    params = tracking.config_params(cfg)
    now = int(time.time() * 1000)
    kids = []
    for i in range(children):
        folder = root / f"child-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "slices.csv").write_text("slice,users,recall@10\nall,1000,0.25\ncold,100,0.1\n")
        (folder / "per_user.parquet").write_bytes(b"x" * 20_000)
        kids.append(tracking.RunRecord(
            name=f"bench · α={i / children:.3f} · validation", start_ms=now - 60_000 + i * 1000, end_ms=now - 59_000 + i * 1000,
            params={**params, "alpha": i / children, "run.kind": "alpha", "fold": "tune"},
            metrics={f"metric_{m}": m / metrics + i for m in range(metrics)},
            tags={tracking.SWEEP_TAG: "bench", "recopt.run": f"alpha={i}", "recopt.fold": "tune", "recopt.chosen": ""},
            artifacts=[folder / "slices.csv", folder / "per_user.parquet"]))
    report = root / "report"
    report.mkdir(exist_ok=True)
    files = []
    for name in ("report.md", "tuning_results.csv", "selection.json", "alpha_curve.png", "slices.csv"):
        files.append(report / name)
        files[-1].write_bytes(b"y" * 50_000)
    parent = tracking.RunRecord(name="bench · dvc · validation", start_ms=now - 61_000, end_ms=now,
                                params={**params, "alpha": 0.5, "fold": "tune"},
                                metrics={f"metric_{m}": m / metrics for m in range(20)},
                                tags={tracking.SWEEP_TAG: "bench", "recopt.fold": "tune", "recopt.kind": "dvc"},
                                artifacts=files)
    return parent, kids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=40)
    parser.add_argument("--metrics", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config(compose([f"paths.mlflow_uri=sqlite:///{root}/mlruns/mlflow.db",
                                   f"paths.mlflow_artifacts={root}/mlruns/artifacts", f"paths.runs={root}/runs"]))
        parent, kids = family(root / "files", args.children, args.metrics, cfg)
        print(f"family: 1 parent + {len(kids)} children x {args.metrics} metrics, "
              f"{len(kids[0].params)} params, {len(kids[0].artifacts)} files each")
        start = time.perf_counter()
        tracking.log_family(cfg, tracking.RunRecord("warm-up", 1, 2), [], None)
        print(f"store creation + one empty run: {time.perf_counter() - start:.2f} s")
        ds = tracking.DatasetInfo(name="bench", source="data/split", digest="0123456789abcdef" * 4)
        for i in range(args.repeat):
            start, cpu = time.perf_counter(), time.process_time()
            tracking.log_family(cfg, parent, kids, ds)
            print(f"log_family #{i + 1}: {time.perf_counter() - start:.2f} s wall, "
                  f"{time.process_time() - cpu:.2f} s CPU", flush=True)


if __name__ == "__main__":
    main()
