"""Evaluate a fold: one pass over its candidate pools ranks and measures every part.

Each pool batch is read once, normalised once, and ranked for every part (every
alpha, cold-start variant, baseline and reference) by recopt.methods.evaluate_batch,
run by the batch executor (recopt.engine). Each finished batch is checkpointed
under ``paths.checkpoints``, keyed by everything its content depends on (fold,
candidate store, factors, parts, config, and the code: every project module a batch
imports, recopt.closure), so a killed evaluation resumes with identical results. Past its deadline a pass starts no new batch and is *partial*: every part
then covers the same finished users, and the pass says so.

Evaluated users: users with at least one relevant held-out item (rated >=
relevance_threshold). Others are skipped and counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt.artifacts import Stored, open_artifact
from recopt.candidates import user_item_matrix
from recopt.closure import code_digest
from recopt.config import Config
from recopt.engine import make_engine
from recopt.layout import checkpoint_dir, checkpoint_file, save_arrays
from recopt.methods import TOP, Part, PartBatch, Shared, Task, evaluate_batch, part_task_fields
from recopt.pools import read_pool
from recopt.references import fit_ease, fit_itemknn, interaction_matrix
from recopt.rng import stage_rng
from recopt.runlog import log
from recopt.scoring import prior_signal
from recopt.split import relevant_items

# the modules whose code decides a checkpoint's content (with everything they import)
CODE_ENTRIES = ("recopt.evaluate", "recopt.methods")


@dataclass(frozen=True)
class EvalData:
    """A fold's verified inputs, loaded once for every pass."""

    fold: str
    candidates: Stored
    split: Stored
    users: pl.DataFrame        # evaluated users: user, userId, slice, has_cf, n_relevant, pool_size, pool_recall, batch
    pool_users: pl.DataFrame   # every user with a pool (the pool files' row order)
    items: pl.DataFrame
    n_users: int               # size of the user index
    relevant: object           # CSR users x items
    seen: object               # CSR users x items (train)
    mmr: NDArray[np.float32]
    embeddings: NDArray[np.float32]
    factors: dict[str, NDArray]   # cf-load's user_factors, item_factors, user_has_cf, user_folded, item_has_cf
    cf: Stored
    skipped: dict[str, int]

    @property
    def popularity_share(self) -> NDArray[np.float64]:
        pop = self.items["popularity"].to_numpy().astype(np.float64)
        return pop / max(pop.sum(), 1.0)


def load_eval_data(cfg: Config, fold: str, reader: str) -> EvalData:
    """Open and verify candidates@fold, split@fold, embed_load@fold and cf_load@fold."""
    cand = open_artifact(cfg.paths, "candidates", fold, reader=reader, config=cfg)
    cand.read_all()  # the pools a pass reads depend on its checkpoints; the recorded inputs must not
    split = open_artifact(cfg.paths, "split", fold, reader=reader, config=cfg)
    embed = open_artifact(cfg.paths, "embed_load", fold, reader=reader, config=cfg)
    cf = open_artifact(cfg.paths, "cf_load", fold, reader=reader, config=cfg)
    users_all = split.parquet("users")
    pool_users = cand.parquet("users")
    items = cand.parquet("items")
    item_ids, user_ids = items["movieId"].to_numpy(), users_all["userId"].to_numpy()
    train = split.parquet("train", columns=["userId", "movieId"])
    relevant = user_item_matrix(relevant_items(split.parquet("heldout"), cfg.relevance_threshold), user_ids, item_ids)
    skipped = {"no_heldout_interactions": int((users_all["n_heldout"] == 0).sum()),
               "no_relevant_heldout_item": int((pool_users["n_relevant"] == 0).sum())}
    return EvalData(fold=fold, candidates=cand, split=split, users=pool_users.filter(pl.col("n_relevant") > 0),
                    pool_users=pool_users, items=items, n_users=len(user_ids), relevant=relevant,
                    seen=user_item_matrix(train, user_ids, item_ids), mmr=embed.npy("mmr"),
                    embeddings=embed.npy("embeddings", mmap=True),
                    factors={n: cf.npy(n) for n in ("user_factors", "item_factors", "user_has_cf", "user_folded",
                                                    "item_has_cf")},
                    cf=cf, skipped=skipped)


@dataclass
class PartResult:
    """One part over every user it served in the pass (users ascending)."""

    part: Part
    users: NDArray[np.int32]
    top: NDArray[np.int32]                       # (n, TOP) lists, for coverage and novelty
    per_user: dict[str, NDArray[np.float64]]
    seconds: float


@dataclass
class PassResult:
    parts: dict[Part, PartResult]
    checkpoints: dict[Part, Path]                # each part's checkpoint folder
    batches: list[int]                           # every batch of the fold
    done: list[int]                              # batches finished (all parts), ascending
    resumed: int
    seconds: float
    fit_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.batches)


def reference_sample(cfg: Config, data: EvalData) -> NDArray[np.int64]:
    """The seeded sample of evaluated users on which the reference settings are chosen (all of them
    when evaluate.reference_tuning_users is 0 or at least their number)."""
    users = data.users.sort("user")["user"].to_numpy().astype(np.int64)
    n = cfg.evaluate.reference_tuning_users
    if n == 0 or n >= len(users):
        return users
    return np.sort(stage_rng(cfg.seed, f"evaluate/reference-sample/{data.fold}").choice(users, n, replace=False))


def build_shared(cfg: Config, data: EvalData, parts: tuple[Part, ...]) -> tuple[Shared, dict[str, float]]:
    """The arrays every batch of a pass reads; fits the references the parts need."""
    items = data.items
    need = part_task_fields(parts)
    sampled = np.zeros(data.n_users, dtype=bool)
    sampled[reference_sample(cfg, data)] = True
    pop = items["popularity"].to_numpy().astype(np.int64)
    quality = items["quality"].to_numpy()
    fits: dict[str, float] = {}
    ease, knn = {}, {}
    x = interaction_matrix(data.seen) if need["ease"] or need["knn"] else None
    if need["ease"]:
        t = time.perf_counter()
        ease = fit_ease(x, need["ease"], cfg.evaluate.ease_max_items, cfg.engine.workers)
        fits["ease"] = round(time.perf_counter() - t, 3)
    if need["knn"]:
        t = time.perf_counter()
        knn = fit_itemknn(x, need["knn"])
        fits["itemknn"] = round(time.perf_counter() - t, 3)
    shared = Shared(cfg=cfg, fold=data.fold, parts=parts, quality=quality, recency=items["recency"].to_numpy(),
                    popularity=pop, priors={name: prior_signal(name, quality, pop) for name in ("popularity", "quality")},
                    item_has_cf=data.factors["item_has_cf"], user_has_cf=data.factors["user_has_cf"],
                    user_folded=data.factors["user_folded"], user_sampled=sampled, relevant=data.relevant,
                    seen=data.seen, mmr=data.mmr, embeddings=np.asarray(data.embeddings),
                    popular_order=np.argsort(-pop, kind="stable").astype(np.int64),
                    user_factors=data.factors["user_factors"], item_factors=data.factors["item_factors"],
                    ease=ease, knn=knn)
    return shared, fits


def part_checkpoints(cfg: Config, data: EvalData, part: Part) -> Path:
    """A part's checkpoint folder, keyed by everything its lists depend on: fold, store, split, factors,
    the part itself, config, code. One folder a part: a pass computes only the parts a batch lacks, so
    adding an alpha to the grid computes that alpha alone."""
    c = cfg.to_dict()
    key = json.dumps({"fold": data.fold, "store": data.candidates.digest, "split": data.split.digest,
                      "factors": data.cf.digest, "part": part.name, "sampled": part.sampled, "rerank": c["rerank"],
                      "ks": c["evaluate"]["ks"], "ease_max_items": cfg.evaluate.ease_max_items,
                      "reference_users": cfg.evaluate.reference_tuning_users, "seed": cfg.seed,
                      "threshold": cfg.relevance_threshold, "code": code_digest(*CODE_ENTRIES)}, sort_keys=True)
    return checkpoint_dir(cfg.paths, data.fold, part.name, hashlib.sha256(key.encode()).hexdigest()[:12])


def save_part(path: Path, b: PartBatch) -> None:
    """One part's results on one batch, written atomically."""
    save_arrays(path, {"users": b.users, "lists": b.lists, "scores": b.scores, "seconds": np.array([b.seconds]),
                       **{f"m.{name}": v for name, v in b.per_user.items()}}, "paths.checkpoints")


def load_part(path: Path, scores: bool = True) -> PartBatch:
    """One part's checkpoint of one batch (`scores=False`: without the scores, which it then does not read)."""
    with np.load(path) as z:
        users = z["users"]
        return PartBatch(users=users, lists=z["lists"],
                         scores=z["scores"] if scores else np.zeros((len(users), 0), np.float32),
                         per_user={n[2:]: z[n] for n in z.files if n.startswith("m.")}, seconds=float(z["seconds"][0]))


def evaluate_parts(cfg: Config, data: EvalData, parts: tuple[Part, ...], *, deadline: float | None,
                   desc: str) -> PassResult:
    """One pass: every part over every evaluated user, resuming from each part's checkpoints."""
    started = time.perf_counter()
    dirs = {p: part_checkpoints(cfg, data, p) for p in parts}
    batches = sorted(int(b) for b in data.users["batch"].unique())
    users_of = {int(b): g["user"].to_numpy().astype(np.int64)
                for (b,), g in data.users.partition_by("batch", as_dict=True).items()}
    missing = {b: tuple(p for p in parts if not checkpoint_file(dirs[p], b).exists()) for b in batches}
    todo = [b for b in batches if missing[b]]
    needed = tuple(dict.fromkeys(p for b in todo for p in missing[b]))
    shared, fits = build_shared(cfg, data, needed) if todo else (None, {})
    pool_groups = {int(b): g for (b,), g in data.pool_users.partition_by("batch", as_dict=True).items()}

    def tasks() -> Iterator[Task]:
        for b in todo:
            pool = None
            if part_task_fields(missing[b])["pool"]:
                g = pool_groups[b]
                pool = read_pool(data.candidates, b, g["pool_size"].to_numpy(), g["user"].to_numpy())
                evaluated = np.zeros(data.n_users, dtype=bool)  # a mask over the user index: no sort (np.isin)
                evaluated[users_of[b]] = True
                keep = evaluated[pool["user"]]
                pool = {name: col[keep] for name, col in pool.items()}
            yield Task(batch=b, users=users_of[b], pool=pool, parts=missing[b])

    acc: dict[int, dict[str, PartBatch]] = {  # the summaries need no scores: they are not even read
        b: {p: _compact(load_part(checkpoint_file(dirs[p], b), scores=False)) for p in parts
            if p not in missing[b]}
        for b in batches}
    done = [b for b in batches if not missing[b]]
    if todo:
        engine = make_engine(cfg.engine)
        for b, out in zip(todo, engine.map(evaluate_batch, shared, tasks(), desc=desc, total=len(todo),
                                            deadline=deadline)):
            for part, pb in out.items():
                save_part(checkpoint_file(dirs[part], b), pb)
                acc[b][part] = _compact(pb)
            done.append(b)
        engine.close()
    done.sort()
    resumed = sum(1 for b in batches if len(missing[b]) < len(parts))
    result = PassResult(parts={}, checkpoints=dirs, batches=batches, done=done, resumed=resumed,
                        seconds=round(time.perf_counter() - started, 3), fit_seconds=fits)
    for p in parts:
        chunks = [acc[b][p] for b in done]
        result.parts[p] = PartResult(
            part=p, users=_cat([c.users for c in chunks], np.int32),
            top=np.concatenate([c.lists for c in chunks]) if chunks else np.zeros((0, TOP), np.int32),
            per_user={m: np.concatenate([c.per_user[m] for c in chunks]) for m in (chunks[0].per_user if chunks else {})},
            seconds=round(sum(c.seconds for c in chunks), 3))
    if not result.complete:
        log.warning("%s: stopped at its time limit after %d of %d batches (partial)", desc, len(done), len(batches))
    return result


def _compact(b: PartBatch) -> PartBatch:
    """Keep only what the summaries need in memory: the top of each list (full lists stay on disk)."""
    return PartBatch(users=b.users, lists=np.ascontiguousarray(b.lists[:, :TOP]), scores=b.scores[:, :0],
                     per_user=b.per_user, seconds=b.seconds)


def _cat(arrays: list[NDArray], dtype: type) -> NDArray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
