"""Show one user's final ranked list, with every score and why each item was retrieved.

Uses a fold's stored candidate pool and the same scoring and MMR code as evaluate
(the part that would serve the user: its alpha, or the cold rule's part for a user
without a factor from the fit). By default the test fold (models fit on the full
train) at the alpha and cold rule chosen on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recopt.artifacts import open_artifact
from recopt.candidates import SOURCES, collab_scores
from recopt.config import HELDOUT, Config
from recopt.errors import RecoptError
from recopt.methods import Part, PartKind, mmr_weight, part_scores
from recopt.pools import read_pool
from recopt.rerank import rank_pools
from recopt.scoring import normalise_pool, prior_signal
from recopt.selection import ColdRule, part_label


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    slice: str
    has_cf: bool
    n_train: int
    part: Part                 # what served the user
    fold: str
    table: pl.DataFrame
    n_hits: int


def serving_part(alpha: float, cold: ColdRule, has_cf: bool, folded: bool) -> Part:
    """The part that serves a user: alpha for a user with a factor from the fit, else the first part of
    the cold rule that serves users like this one (fold-in needs a folded-in factor)."""
    if has_cf:
        return Part(PartKind.ALPHA, alpha)
    return next(p for p in cold.parts if p.kind == PartKind.COLD or folded)


def recommend(cfg: Config, user_id: int, alpha: float, cold: ColdRule, k: int | None = None,
              fold: str = "test") -> Recommendation:
    """The ranked list of `user_id` (a MovieLens userId) at `alpha` (users without a factor from the fit:
    the cold rule `cold`), one row per item."""
    if not 0.0 <= alpha <= 1.0:
        raise RecoptError(f"--alpha: {alpha} must be in [0, 1]")
    reader = "recommend"
    cand = open_artifact(cfg.paths, "candidates", fold, reader=reader, config=cfg)
    embed = open_artifact(cfg.paths, "embed_load", fold, reader=reader, config=cfg)
    cf = open_artifact(cfg.paths, "cf_load", fold, reader=reader, config=cfg)
    split = open_artifact(cfg.paths, "split", fold, reader=reader, config=cfg)
    ingest = open_artifact(cfg.paths, "ingest", reader=reader, config=cfg)
    users = cand.parquet("users")
    row = users.filter(pl.col("userId") == user_id)
    if row.height == 0:
        raise RecoptError(f"--user: userId {user_id} has no candidate pool in {cand.path('users')} (only users "
                          f"with {HELDOUT[fold]} interactions get one; e.g. try --user {users['userId'][0]})")
    user, batch = int(row["user"][0]), int(row["batch"][0])
    group = users.filter(pl.col("batch") == batch)
    pool = read_pool(cand, batch, group["pool_size"].to_numpy(), group["user"].to_numpy())
    keep = pool["user"] == user
    pool = {name: col[keep] for name, col in pool.items()}
    items_tbl = cand.parquet("items")
    movies = ingest.parquet("movies", columns=["movieId", "title"])
    quality, popularity = items_tbl["quality"].to_numpy(), items_tbl["popularity"].to_numpy()
    priors = {name: prior_signal(name, quality, popularity) for name in ("popularity", "quality")}
    has_cf, folded = cf.npy("user_has_cf"), cf.npy("user_folded")
    rows, items = pool["user"], pool["item"]
    collab = collab_scores(cf.npy("user_factors"), cf.npy("item_factors"), has_cf | folded, cf.npy("item_has_cf"),
                           rows, items)
    norm = normalise_pool(rows, items, collab, pool["content"], pool["provider"], quality,
                          items_tbl["recency"].to_numpy(), cfg.rerank.missing_collab)
    part = serving_part(alpha, cold, bool(has_cf[user]), bool(folded[user]))
    hybrid, final = part_scores(norm, part, priors, cfg.rerank)
    r = rank_pools(rows, items, final, embed.npy("mmr"), k or cfg.rerank.k_final, mmr_weight(part, cfg.rerank),
                   cfg.rerank.mmr_pool)
    pos = r.positions[0][r.positions[0] >= 0] if len(r.users) else np.zeros(0, np.int64)
    flags = pool["source"][pos]
    movie_ids = items_tbl["movieId"].to_numpy()[items[pos]]
    heldout = split.parquet("heldout").filter((pl.col("userId") == user_id) & (pl.col("rating") >= cfg.relevance_threshold))
    hits = np.isin(movie_ids, heldout["movieId"].to_numpy())
    table = pl.DataFrame({
        "rank": np.arange(1, len(pos) + 1), "movieId": movie_ids, "final": final[pos], "hybrid": hybrid[pos],
        "collab": norm.collab[pos], "content": norm.content[pos],
        "sources": [",".join(name for name, bit in SOURCES.items() if f & bit) for f in flags], "hit": hits,
    }).join(movies, on="movieId", how="left").select("rank", "movieId", "title", "final", "hybrid", "collab",
                                                      "content", "sources", "hit")
    info = split.parquet("users").filter(pl.col("userId") == user_id).row(0, named=True)
    return Recommendation(user_id=user_id, slice=info["slice"], has_cf=bool(has_cf[user]), n_train=int(info["n_train"]),
                          part=part, fold=fold, table=table, n_hits=int(hits.sum()))


def format_recommendation(rec: Recommendation, show_hits: bool, width: int = 100) -> str:
    """A header and a table at most `width` columns wide, for a person to read."""
    rule = part_label(rec.part) if rec.has_cf else f"cold start, {part_label(rec.part)}"
    lines = [f"user {rec.user_id} · slice {rec.slice} · {rec.n_train} train ratings · "
             f"{'has a' if rec.has_cf else 'no'} CF factor · {rule}",
             f"fold {rec.fold} (models fit on {'train' if rec.fold == 'test' else 'tune-train'}). The order is MMR's:",
             "relevance traded against similarity to the items above, so `final` is not sorted."]
    title_w = width - 72
    head = f"{'rank':>4} {'movieId':>8}  {'title':<{title_w}} {'final':>6} {'hybrid':>6} {'collab':>6} {'content':>7}  sources"
    lines += [head, "-" * min(len(head) + 8, width)]
    for row in rec.table.iter_rows(named=True):
        title = (row["title"] or "")
        title = title if len(title) <= title_w else title[:title_w - 1] + "…"
        fmt = lambda v: "   n/a" if v is None or v != v else f"{v:6.3f}"  # noqa: E731
        mark = " ✓" if show_hits and row["hit"] else ""
        lines.append(f"{row['rank']:>4} {row['movieId']:>8}  {title:<{title_w}} {fmt(row['final'])} "
                     f"{fmt(row['hybrid'])} {fmt(row['collab'])} {fmt(row['content']):>7}  {row['sources']}{mark}")
    if show_hits:
        lines.append(f"✓ = relevant {HELDOUT[rec.fold]} item ({rec.n_hits} in this list)")
    return "\n".join(lines)
