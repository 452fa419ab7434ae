"""Show one user's final ranked list at a given alpha, with every score and why each item was retrieved.

Uses the stored candidate pool and the same scoring and MMR code as evaluate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc

from recopt.candidates import SOURCES
from recopt.config import Config
from recopt.pools import read_pool
from recopt.rerank import rank_pools
from recopt.scoring import score_pool


def recommend(cfg: Config, user_id: int, alpha: float, k: int | None = None) -> pl.DataFrame:
    """The ranked list of `user_id` (a MovieLens userId) at `alpha`, one row per item."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha: {alpha} must be in [0, 1]")
    cand = Path(cfg.paths.candidates)
    users = pl.read_parquet(cand / "users.parquet")
    row = users.filter(pl.col("userId") == user_id)
    if row.height == 0:
        raise ValueError(f"--user: userId {user_id} has no candidate pool in {cand / 'users.parquet'} "
                         f"(only users with test interactions get one; e.g. try --user {users['userId'][0]})")
    user, batch = int(row["user"][0]), int(row["batch"][0])
    pool = read_pool(cand, batch)
    pool = pool.filter(pc.equal(pool["user"], user))
    items_tbl = pl.read_parquet(cand / "items.parquet")
    movies = pl.read_parquet(Path(cfg.paths.ingest) / "movies.parquet", columns=["movieId", "title", "genres"])
    rows, items = pool["user"].to_numpy(), pool["item"].to_numpy()
    collab_raw, content_raw = pool["collab"].to_numpy(), pool["content"].to_numpy()
    s = score_pool(rows, items, collab_raw, content_raw, pool["provider"].to_numpy(),
                   items_tbl["quality"].to_numpy(), items_tbl["recency"].to_numpy(), alpha, cfg.rerank)
    vectors = np.load(Path(cfg.paths.embed_load) / "mmr.npy")
    r = rank_pools(rows, items, s.final, vectors, k or cfg.rerank.k_final, cfg.rerank.mmr_lambda, cfg.rerank.mmr_pool)
    pos = r.positions[0][r.positions[0] >= 0]
    flags = pool["source"].to_numpy()[pos]
    reason = [", ".join(name for name, bit in SOURCES.items() if f & bit) for f in flags]
    out = pl.DataFrame({
        "rank": np.arange(1, len(pos) + 1), "movieId": items_tbl["movieId"].to_numpy()[items[pos]],
        "final": s.final[pos], "hybrid": s.hybrid[pos], "collab_raw": collab_raw[pos], "collab": s.collab[pos],
        "content_raw": content_raw[pos], "content": s.content[pos], "quality": s.quality[pos],
        "recency": s.recency[pos], "provider": s.provider[pos], "retrieved_by": reason,
    })
    return out.join(movies, on="movieId", how="left").select(
        "rank", "movieId", "title", "final", "hybrid", "collab", "content", "collab_raw", "content_raw",
        "quality", "recency", "provider", "retrieved_by")
