"""The candidates stage: build every evaluated user's pool and store them by batch.

Store layout under paths.candidates:
    pools/part-NNNNN.parquet  one file per user batch: user, item (indexes),
                              collab, content (float32, NaN = missing),
                              provider (float32), source (uint8 flags)
    items.parquet             catalog-aligned item signals: movieId, quality,
                              recency, popularity, has_cf, has_content
    users.parquet             evaluated users: user (index), userId, slice,
                              n_relevant, pool_size, relax_step, pool_recall, batch
    assembly.json, manifest.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recopt import features
from recopt.assembly import assembly_manifest, load_hybrid_inputs
from recopt.candidates import SOURCES, Batch, build_batch, build_context, user_item_matrix
from recopt.config import Config
from recopt.filters import step_labels
from recopt.io import log, run_stats, timed, write_json, write_parquet
from recopt.metrics import mark_hits
from recopt.rerank import pad_by_user
from recopt.split import read_relevant

def pool_path(root: Path, batch: int) -> Path:
    return Path(root) / "pools" / f"part-{batch:05d}.parquet"


def read_pool(root: Path, batch: int) -> pa.Table:
    return pq.read_table(pool_path(root, batch))


def _write_batch(b: Batch, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user": b.user, "item": b.item, "collab": b.collab, "content": b.content,
                      "provider": b.provider, "source": b.source})
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 22)


def _pool_recall(b: Batch, users: np.ndarray, relevant) -> tuple[np.ndarray, np.ndarray]:
    """Per batch user: pool size and share of relevant test items in the pool."""
    present, pools, _ = pad_by_user(b.user, b.item, -1)
    ranked = np.full((len(users), max(pools.shape[1], 1)), -1, dtype=np.int32)
    ranked[np.searchsorted(users, present), :pools.shape[1]] = pools
    hits = mark_hits(ranked, relevant[users])
    n_rel = np.diff(relevant[users].indptr)
    return (ranked >= 0).sum(axis=1), np.where(n_rel > 0, hits.sum(axis=1) / np.maximum(n_rel, 1), 0.0)


def run_candidates(cfg: Config) -> dict[str, Any]:
    """Run the candidates stage; returns its manifest."""
    started, timings = time.perf_counter(), {}
    p, c = cfg.paths, cfg.candidates
    out = Path(p.candidates)
    with timed("load", timings):
        inputs = load_hybrid_inputs(cfg)
        ingest, split = Path(p.ingest), Path(p.split)
        train = pl.read_parquet(split / "train.parquet")
        users = pl.read_parquet(split / "users.parquet")
        movies = pl.read_parquet(ingest / "movies.parquet")
        providers = pl.read_parquet(ingest / "providers.parquet")
        user_providers = pl.read_parquet(ingest / "user_providers.parquet")
    eval_users = np.flatnonzero(users["n_test"].to_numpy() > 0).astype(np.int64)
    with timed("context", timings):
        ctx = build_context(inputs, train, movies, providers, user_providers, eval_users, c,
                            cfg.relevance_threshold)
    # the test split is read only to measure pool recall, after the pools exist
    relevant = user_item_matrix(read_relevant(split, cfg.relevance_threshold), inputs.user_ids, inputs.item_ids)

    n_batches = (len(eval_users) + c.batch_users - 1) // c.batch_users
    sizes, recall, steps, batch_of = [], [], [], []
    source_counts = dict.fromkeys(SOURCES, 0)
    with timed("batches", timings):
        for b in tqdm(range(n_batches), desc="candidates", unit="batch", mininterval=2):
            ub = eval_users[b * c.batch_users:(b + 1) * c.batch_users]
            batch = build_batch(ctx, c, ub)
            _write_batch(batch, pool_path(out, b))
            s, r = _pool_recall(batch, ub, relevant)
            sizes.append(s), recall.append(r), steps.append(batch.step)
            batch_of.append(np.full(len(ub), b, dtype=np.int32))
            for name, flag in SOURCES.items():
                source_counts[name] += int(np.count_nonzero(batch.source & flag))
    sizes_a, recall_a, steps_a = (np.concatenate(x) if x else np.zeros(0) for x in (sizes, recall, steps))
    labels = step_labels(c.relax_order)
    ev = users[eval_users.tolist()]
    table = pl.DataFrame({
        "user": eval_users.astype(np.int32), "userId": ev["userId"], "slice": ev["slice"],
        "n_relevant": ev["n_relevant"], "pool_size": sizes_a.astype(np.int32),
        "relax_step": [labels[s] for s in steps_a], "pool_recall": recall_a.astype(np.float32),
        "batch": np.concatenate(batch_of) if batch_of else np.zeros(0, np.int32),
    })
    write_parquet(table, out / "users.parquet")
    write_parquet(pl.DataFrame({
        "movieId": inputs.item_ids,
        "quality": features.quality(train, inputs.item_ids, c.quality_prior),
        "recency": features.recency(movies["year"].cast(pl.Float64).fill_null(np.nan).to_numpy()),
        "popularity": features.popularity(train, inputs.item_ids),
        "has_cf": inputs.item_has_cf, "has_content": inputs.has_content,
    }), out / "items.parquet")
    write_json(out / "assembly.json", assembly_manifest(inputs))

    with_rel = table.filter(pl.col("n_relevant") > 0)
    total = int(sizes_a.sum())
    manifest = {
        "n_users": len(eval_users), "n_batches": n_batches, "n_candidates": total,
        "pool_size": _distribution(sizes_a),
        "source_share": {k: round(v / max(total, 1), 4) for k, v in source_counts.items()},
        "relaxation_steps": {lab: int((steps_a == i).sum()) for i, lab in enumerate(labels)},
        "pool_recall": round(float(with_rel["pool_recall"].mean() or 0.0), 4),
        "pool_recall_by_slice": {s: round(float(v), 4) for s, v in
                                 with_rel.group_by("slice").agg(pl.col("pool_recall").mean()).sort("slice").iter_rows()},
        "store_bytes": sum(f.stat().st_size for f in (out / "pools").glob("*.parquet")),
        **run_stats(timings, started),
    }
    write_json(out / "manifest.json", manifest)
    log.info("candidates: %d users, mean pool %.0f, pool recall %.3f", len(eval_users),
             manifest["pool_size"]["mean"], manifest["pool_recall"])
    return manifest


def _distribution(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"min": 0, "p10": 0, "median": 0, "p90": 0, "max": 0, "mean": 0.0}
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"min": int(x.min()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
            "max": int(x.max()), "mean": round(float(x.mean()), 2)}
