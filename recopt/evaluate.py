"""Evaluate one ranking run (an alpha, or a baseline) over every evaluated user.

The candidate pools are streamed batch by batch; each finished batch is
checkpointed, so a run that is killed and re-run resumes and gives results
identical to an uninterrupted run. A run past its time limit stops after the
current batch and reports the users it finished (`timed_out`).

Evaluated users: users with at least one relevant test item (rated >=
relevance_threshold). Others are skipped and counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray
from tqdm import tqdm

from recopt import metrics
from recopt.candidates import user_item_matrix
from recopt.config import Config
from recopt.io import read_json
from recopt.keys import fetch_widths, first_unseen, isin_sorted, row_keys
from recopt.pools import read_pool
from recopt.rerank import Ranked, pad_by_user, rank_pools, top_k
from recopt.rng import stage_rng
from recopt.scoring import score_pool
from recopt.split import read_relevant

BASELINE_ALPHA = {"cf_only": 0.0, "content_only": 1.0}


@dataclass(frozen=True)
class RunSpec:
    """What to rank: `alpha` (hybrid + signals + MMR) or a baseline."""

    kind: str                      # "alpha" | "popularity" | "random" | "cf_only" | "content_only"
    alpha: float | None = None

    @property
    def name(self) -> str:
        return f"alpha={self.alpha:.2f}" if self.kind == "alpha" else f"baseline={self.kind}"


@dataclass(frozen=True)
class EvalData:
    """Everything the runs share, loaded once."""

    users: pl.DataFrame            # candidates/users.parquet: user, userId, slice, n_relevant, pool_size, pool_recall, batch
    items: pl.DataFrame            # candidates/items.parquet
    relevant: sp.csr_matrix        # users x items, test ratings >= threshold
    seen: sp.csr_matrix            # users x items, train
    mmr_vectors: NDArray[np.float32]
    embeddings: NDArray[np.float32]
    popularity_share: NDArray[np.float64]
    n_batches: int
    skipped: dict[str, int]
    fingerprint: str               # of the candidate store: checkpoints are keyed by it


@dataclass
class RunResult:
    spec: RunSpec
    users: NDArray[np.int32]       # evaluated user indexes, in order
    lists: NDArray[np.int32]       # (n_users, K) catalog indexes, -1 padding
    scores: NDArray[np.float32]
    per_user: dict[str, NDArray[np.float64]]
    seconds: float = 0.0           # compute time of its batches, including those resumed from checkpoints
    timed_out: bool = False
    resumed_batches: int = 0
    summary: dict[str, float] = field(default_factory=dict)


def load_eval_data(cfg: Config) -> EvalData:
    p = cfg.paths
    split, cand, emb = Path(p.split), Path(p.candidates), Path(p.embed_load)
    users_all = pl.read_parquet(split / "users.parquet")
    cand_users = pl.read_parquet(cand / "users.parquet")
    items = pl.read_parquet(cand / "items.parquet")
    item_ids, user_ids = items["movieId"].to_numpy(), users_all["userId"].to_numpy()
    train = pl.read_parquet(split / "train.parquet", columns=["userId", "movieId"])
    pop = items["popularity"].to_numpy().astype(np.float64)
    skipped = {"no_test_interactions": int((users_all["n_test"] == 0).sum()),
               "no_relevant_test_item": int((cand_users["n_relevant"] == 0).sum())}
    manifest = read_json(cand / "manifest.json")
    return EvalData(
        users=cand_users.filter(pl.col("n_relevant") > 0), items=items,
        relevant=user_item_matrix(read_relevant(split, cfg.relevance_threshold), user_ids, item_ids), seen=user_item_matrix(train, user_ids, item_ids),
        mmr_vectors=np.load(emb / "mmr.npy"), embeddings=np.load(emb / "embeddings.npy", mmap_mode="r"),
        popularity_share=pop / max(pop.sum(), 1.0), n_batches=int(manifest["n_batches"]), skipped=skipped,
        fingerprint=hashlib.sha256((cand / "manifest.json").read_bytes()).hexdigest()[:16],
    )


def _rank_batch(spec: RunSpec, cfg: Config, data: EvalData, batch: int, users: NDArray[np.int64]) -> Ranked:
    """Top-K lists of `users` (all in pool batch `batch`), one row per user in order: a user
    whose pool is empty keeps an empty list (scored 0 on every metric), never dropped."""
    if spec.kind == "popularity":
        return popularity_lists(data, users, cfg.rerank.k_final)
    ranked = _rank_pools(spec, cfg, data, batch, users)
    found = isin_sorted(users, ranked.users)  # ranked.users: the users with a pool, ascending
    if found.all():
        return ranked
    k = ranked.items.shape[1]
    items = np.full((len(users), k), -1, dtype=np.int32)
    scores = np.zeros((len(users), k), dtype=np.float32)
    positions = np.full((len(users), k), -1, dtype=np.int64)
    items[found], scores[found], positions[found] = ranked.items, ranked.scores, ranked.positions
    return Ranked(users=users.astype(np.int32), items=items, scores=scores, positions=positions)


def _rank_pools(spec: RunSpec, cfg: Config, data: EvalData, batch: int, users: NDArray[np.int64]) -> Ranked:
    """Top-K lists of the users of `users` that have a non-empty pool."""
    r = cfg.rerank
    k = r.k_final
    pool = read_pool(Path(cfg.paths.candidates), batch)
    pool = pool.filter(pc.is_in(pool["user"], value_set=pa.array(users.astype(np.int32))))
    rows = pool["user"].to_numpy()
    items = pool["item"].to_numpy()
    if spec.kind == "random":
        rng = stage_rng(cfg.seed, f"evaluate/random/{batch}")
        u, mat, pos = pad_by_user(rows, rng.random(len(rows)).astype(np.float32), -np.inf)
        return top_k(u, mat, pos, items, k)
    alpha = BASELINE_ALPHA.get(spec.kind, spec.alpha)
    scored = score_pool(rows, items, pool["collab"].to_numpy(), pool["content"].to_numpy(),
                        pool["provider"].to_numpy(), data.items["quality"].to_numpy(),
                        data.items["recency"].to_numpy(), float(alpha), r)
    if spec.kind in BASELINE_ALPHA:  # plain ranking of the blended score, no signals, no MMR
        u, mat, pos = pad_by_user(rows, scored.hybrid, -np.inf)
        return top_k(u, mat, pos, items, k)
    return rank_pools(rows, items, scored.final, data.mmr_vectors, k, r.mmr_lambda, r.mmr_pool)


def popularity_lists(data: EvalData, users: NDArray[np.int64], k: int) -> Ranked:
    """Most-rated train items the user has not seen, over the full catalog; score = count / max count."""
    pop = data.items["popularity"].to_numpy()
    order = np.argsort(-pop, kind="stable")
    seen = data.seen[users]
    n_items = seen.shape[1]
    seen_keys = row_keys(seen, n_items)
    rows = np.arange(len(users), dtype=np.int64)
    width = fetch_widths(k, np.diff(seen.indptr).astype(np.int64), n_items)
    items = np.full((len(users), k), -1, dtype=np.int64)
    for w in np.unique(width):  # rows grouped by how deep they must look past their seen items
        sel = rows[width == w]
        got, _ = first_unseen(sel, np.broadcast_to(order[:w], (len(sel), int(w))), seen_keys, n_items, k)
        items[sel, :got.shape[1]] = got
    ok = items >= 0
    scores = np.where(ok, pop[np.maximum(items, 0)] / max(pop.max(), 1), 0.0).astype(np.float32)
    return Ranked(users=users.astype(np.int32), items=items.astype(np.int32), scores=scores,
                  positions=np.where(ok, 0, -1).astype(np.int64))


def check_lists(ranked: Ranked, name: str) -> None:
    """Scores in [0, 1] and finite; ranks contiguous (padding only at the end); no duplicates."""
    items, scores = ranked.items, ranked.scores
    problems = []
    if not np.all(np.isfinite(scores)) or scores.min(initial=0) < 0 or scores.max(initial=0) > 1:
        problems.append("scores outside [0, 1] or not finite")
    pad = items < 0
    if np.any(pad[:, :-1] & ~pad[:, 1:]):
        problems.append("ranks are not contiguous (an item after padding)")
    s = np.sort(np.where(pad, -np.arange(items.shape[1]) - 1, items), axis=1)
    if np.any(s[:, 1:] == s[:, :-1]):
        problems.append("duplicate items in a list")
    if problems:
        raise RuntimeError(f"{name}: invalid ranked lists: {'; '.join(problems)}")


def _per_user_metrics(ranked: Ranked, data: EvalData, cfg: Config) -> dict[str, NDArray[np.float64]]:
    users = ranked.users
    rel = data.relevant[users]
    hits = metrics.mark_hits(ranked.items, rel)
    n_rel = np.diff(rel.indptr).astype(np.int64)
    out = metrics.ranking_metrics(hits, n_rel, sorted(set(cfg.evaluate.ks)))
    out["diversity@10"] = metrics.diversity_at_k(ranked.items, data.embeddings, 10)
    top = ranked.items[:, :10]
    has_cf = data.items["has_cf"].to_numpy()
    n_top = (top >= 0).sum(axis=1)
    cold = ((top >= 0) & ~has_cf[np.maximum(top, 0)]).sum(axis=1)
    out["cold_item_share@10"] = np.where(n_top > 0, cold / np.maximum(n_top, 1), 0.0)
    return out


# the code that decides a checkpoint's content: a change to any of it invalidates old checkpoints
_CODE = ("evaluate.py", "scoring.py", "rerank.py", "kernels.py", "metrics.py", "keys.py")


def _checkpoint_dir(cfg: Config, data: EvalData, spec: RunSpec) -> Path:
    """Checkpoints are keyed by everything their content depends on: run, config, data, code."""
    code = hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes() for name in _CODE)).hexdigest()
    key = json.dumps({"run": spec.name, "rerank": cfg.to_dict()["rerank"], "ks": cfg.evaluate.ks,
                      "seed": cfg.seed, "threshold": cfg.relevance_threshold, "store": data.fingerprint,
                      "code": code}, sort_keys=True)
    return Path(cfg.paths.evaluate) / "checkpoints" / f"{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def evaluate_run(spec: RunSpec, cfg: Config, data: EvalData, deadline: float | None = None) -> RunResult:
    """Rank and score every evaluated user for `spec`, resuming from checkpoints."""
    started = time.perf_counter()
    limit = started + cfg.evaluate.time_limit_alpha_s
    if deadline is not None:
        limit = min(limit, deadline)
    ckpt = _checkpoint_dir(cfg, data, spec)
    ckpt.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, NDArray]] = []
    timed_out = False
    resumed = 0
    by_batch = data.users.partition_by("batch", as_dict=True, maintain_order=True)
    for (batch,), group in tqdm(sorted(by_batch.items()), desc=spec.name, unit="batch", mininterval=2,
                                leave=False):
        if time.perf_counter() > limit:
            timed_out = True
            break
        path = ckpt / f"batch-{batch:05d}.npz"
        if path.exists():
            with np.load(path) as z:
                parts.append({name: z[name] for name in z.files})
            resumed += 1
            continue
        batch_start = time.perf_counter()
        users = group["user"].to_numpy().astype(np.int64)
        ranked = _rank_batch(spec, cfg, data, int(batch), users)
        check_lists(ranked, spec.name)
        part = {"users": ranked.users, "lists": ranked.items, "scores": ranked.scores,
                **{f"m:{k}": v for k, v in _per_user_metrics(ranked, data, cfg).items()}}
        part["seconds"] = np.array([time.perf_counter() - batch_start])  # compute time, kept across resumes
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **part)
        tmp.replace(path)
        parts.append(part)
    merged = _concat(parts) if parts else {}
    k = cfg.rerank.k_final
    result = RunResult(
        spec=spec,
        users=merged.get("users", np.zeros(0, np.int32)),
        lists=merged.get("lists", np.zeros((0, k), np.int32)),
        scores=merged.get("scores", np.zeros((0, k), np.float32)),
        per_user={name[2:]: v for name, v in merged.items() if name.startswith("m:")},
        seconds=round(float(merged["seconds"].sum()) if parts else 0.0, 3), timed_out=timed_out,
        resumed_batches=resumed,
    )
    result.summary = summarise_run(result, data)
    return result


def _concat(parts: list[dict[str, NDArray]]) -> dict[str, NDArray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def summarise_run(result: RunResult, data: EvalData) -> dict[str, float]:
    """Means over the evaluated users plus list-level coverage, novelty and pool recall."""
    s = metrics.summarise(result.per_user)
    lists = result.lists
    n_items = len(data.items)
    s["coverage@10"] = metrics.coverage_at_k(lists, n_items, 10) if len(lists) else 0.0
    s["novelty@10"] = metrics.novelty_at_k(lists, data.popularity_share, 10) if len(lists) else 0.0
    ev = data.users.filter(pl.col("user").is_in(pl.Series(result.users).implode()))
    s["pool_recall"] = float(ev["pool_recall"].mean() or 0.0)
    s["mean_cand"] = float(ev["pool_size"].mean() or 0.0)
    s["users_eval"] = float(len(result.users))
    return s
