"""The candidates stage: build every evaluated user's pool and store them by batch.

Artifact candidates@<fold> (see recopt.artifacts for the file names):
    pools/part-NNNNN.parquet  one file per user batch, rows grouped by user (in the
                              users table's order) and by priority within a user:
                              item (catalog index), content (float32, NaN = missing),
                              provider (float32), source (uint8 flags)
    items.parquet             catalog-aligned item signals: movieId, quality,
                              recency, popularity, has_cf, has_content
    users.parquet             evaluated users: user (index), userId, slice, has_cf,
                              n_relevant, pool_size, relax_step, pool_recall, batch
    assembly.json             the aligned inputs: files, shapes, coverage counts

A pool file has no user column -- a batch's rows are its users' pools in order, and
users.parquet holds each pool's size (:func:`read_pool` restores the column) -- and no
collab column: it is recomputed from the cf-load factors (recopt.candidates.collab_scores),
which halves the store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from recopt import features
from recopt.artifacts import Output, Stored, open_artifact, output
from recopt.assembly import assembly_manifest, load_hybrid_inputs
from recopt.candidates import SOURCES, Batch, Context, build_batch, build_context, user_item_matrix
from recopt.config import Config
from recopt.engine import make_engine
from recopt.filters import step_labels
from recopt.keys import isin_sorted, pair_keys, row_keys
from recopt.runlog import log, timed
from recopt.split import relevant_items

POOL_COLUMNS = ("item", "content", "provider", "source")


def read_pool(store: Stored, batch: int, sizes: NDArray[np.int64], users: NDArray[np.int64]) -> dict[str, NDArray]:
    """Pool batch `batch` as flat arrays, with the `user` column restored from pool sizes."""
    path = store.part("pools", batch)
    table = pq.read_table(path)
    cols = {name: table[name].to_numpy() for name in POOL_COLUMNS}
    if int(np.sum(sizes)) != len(cols["item"]):
        raise RuntimeError(f"{path}: {len(cols['item'])} rows, users.parquet says {int(np.sum(sizes))}")
    cols["user"] = np.repeat(np.asarray(users, dtype=np.int32), sizes)
    return cols


def _write_batch(b: Batch, out: Output, batch: int) -> None:
    table = pa.table({"item": b.item, "content": b.content, "provider": b.provider, "source": b.source})
    pq.write_table(table, out.part("pools", batch), compression="zstd",
                   row_group_size=1 << 22, use_byte_stream_split=["content", "provider"])


def _pool_recall(b: Batch, users: NDArray[np.int64], relevant: Any) -> tuple[NDArray, NDArray]:
    """Per batch user: pool size and share of relevant held-out items in the pool."""
    rel = relevant[users]
    rows = np.searchsorted(users, b.user)
    n_items = rel.shape[1]
    hit = isin_sorted(pair_keys(rows, b.item.astype(np.int64), n_items), np.sort(row_keys(rel, n_items)))
    n_rel = np.diff(rel.indptr)
    hits = np.bincount(rows[hit], minlength=len(users))
    return np.bincount(rows, minlength=len(users)), np.where(n_rel > 0, hits / np.maximum(n_rel, 1), 0.0)


MIN_BATCHES, MIN_BATCH_USERS = 16, 256


def batch_size(n_users: int, batch_users: int) -> int:
    """Users per batch: candidates.batch_users, or fewer so a data set has at least MIN_BATCHES batches
    (progress that moves, both cores busy), never below MIN_BATCH_USERS (per-batch overhead)."""
    return int(min(batch_users, max(MIN_BATCH_USERS, -(-n_users // MIN_BATCHES))))


def _pool_task(ctx: Context, users: NDArray[np.int64]) -> Batch:
    return build_batch(ctx, users)


def run_candidates(cfg: Config, fold: str) -> dict[str, Any]:
    """Run the candidates stage for `fold`; returns the summary written to its manifest."""
    c = cfg.candidates
    reader = f"candidates@{fold}"
    ingest = open_artifact(cfg.paths, "ingest", reader=reader, config=cfg)
    split = open_artifact(cfg.paths, "split", fold, reader=reader, config=cfg)
    embed = open_artifact(cfg.paths, "embed_load", fold, reader=reader, config=cfg)
    cf = open_artifact(cfg.paths, "cf_load", fold, reader=reader, config=cfg)
    with output(cfg, "candidates", fold) as out:
        out.uses(ingest, split, embed, cf)
        t = out.timings
        with timed("load", t):
            inputs = load_hybrid_inputs(ingest, split, embed, cf)
            train = split.parquet("train")
            users = split.parquet("users")
            movies = ingest.parquet("movies")
        eval_users = np.flatnonzero(users["n_heldout"].to_numpy() > 0).astype(np.int64)
        with timed("context", t):
            ctx = build_context(inputs, train, movies, ingest.parquet("providers"),
                                ingest.parquet("user_providers"), eval_users, c, cfg.relevance_threshold)
        # the held-out split is read only to measure pool recall, after the pools exist
        relevant = user_item_matrix(relevant_items(split.parquet("heldout"), cfg.relevance_threshold),
                                    inputs.user_ids, inputs.item_ids)
        size = batch_size(len(eval_users), c.batch_users)
        batches = [eval_users[s:s + size] for s in range(0, len(eval_users), size)]
        sizes, recall, steps = [], [], []
        source_counts = dict.fromkeys(SOURCES, 0)
        engine = make_engine(cfg.engine)
        with timed("batches", t):
            results = engine.map(_pool_task, ctx, batches, desc=reader, total=len(batches))
            for b, (ub, batch) in enumerate(zip(batches, results)):
                _write_batch(batch, out, b)
                s, r = _pool_recall(batch, ub, relevant)
                sizes.append(s), recall.append(r), steps.append(batch.step)
                for name, flag in SOURCES.items():
                    source_counts[name] += int(np.count_nonzero(batch.source & flag))
        engine.close()
        sizes_a, recall_a, steps_a = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (sizes, recall, steps))
        labels = step_labels(c.relax_order)
        ev = users[eval_users.tolist()]
        table = pl.DataFrame({
            "user": eval_users.astype(np.int32), "userId": ev["userId"], "slice": ev["slice"],
            "has_cf": inputs.user_has_cf[eval_users], "n_relevant": ev["n_relevant"],
            "pool_size": sizes_a.astype(np.int32), "relax_step": [labels[s] for s in steps_a],
            "pool_recall": recall_a.astype(np.float32),
            "batch": (np.arange(len(eval_users)) // size).astype(np.int32),
        })
        out.parquet("users", table)
        out.parquet("items", pl.DataFrame({
            "movieId": inputs.item_ids,
            "quality": features.quality(train, inputs.item_ids, c.quality_prior),
            "recency": features.recency(movies["year"].cast(pl.Float64).fill_null(np.nan).to_numpy()),
            "popularity": features.popularity(train, inputs.item_ids),
            "has_cf": inputs.item_has_cf, "has_content": inputs.has_content,
        }))
        out.json("assembly", assembly_manifest(inputs))
        with_rel = table.filter(pl.col("n_relevant") > 0)
        total = int(sizes_a.sum())
        out.summary = {
            "n_users": len(eval_users), "n_batches": len(batches), "n_candidates": total,
            "pool_size": _distribution(sizes_a),
            "source_share": {k: round(v / max(total, 1), 4) for k, v in source_counts.items()},
            "relaxation_steps": {lab: int((steps_a == i).sum()) for i, lab in enumerate(labels)},
            "pool_recall": round(float(with_rel["pool_recall"].mean() or 0.0), 4),
            "pool_recall_by_slice": {s: round(float(v), 4) for s, v in with_rel.group_by("slice").agg(
                pl.col("pool_recall").mean()).sort("slice").iter_rows()},
            "store_bytes": sum(out.part("pools", b).stat().st_size for b in range(len(batches))),
        }
    log.info("candidates@%s: %d users, mean pool %.0f, pool recall %.3f", fold, len(eval_users),
             out.summary["pool_size"]["mean"], out.summary["pool_recall"])
    return out.summary


def _distribution(x: NDArray) -> dict[str, float]:
    if not len(x):
        return {"min": 0, "p10": 0, "median": 0, "p90": 0, "max": 0, "mean": 0.0}
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"min": int(x.min()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
            "max": int(x.max()), "mean": round(float(x.mean()), 2)}
