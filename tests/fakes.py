"""Constructed evaluation data and runs for unit tests of recopt.runs, recopt.comparisons and recopt.study
(no pipeline: a users table with slices, a popularity share, and per-user arrays given by hand)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import NDArray

from recopt.evaluate import PartResult
from recopt.methods import Part, PartKind
from recopt.runs import Piece, Run
from recopt.selection import Role


@dataclass(frozen=True)
class FakeData:
    """What recopt.runs reads of recopt.evaluate.EvalData: the evaluated users and the popularity share."""

    users: pl.DataFrame
    popularity_share: NDArray[np.float64]


def fake_data(slices: list[str], *, first: int = 10, step: int = 2, pool_recall: list[float] | None = None,
              pool_size: list[int] | None = None, share: list[float] | None = None) -> FakeData:
    """Users first, first + step, ... (ascending, not 0..n-1, so a position is never taken for an id) with the
    given slices."""
    n = len(slices)
    users = pl.DataFrame({
        "user": np.arange(first, first + step * n, step, dtype=np.int32), "slice": slices,
        "pool_recall": np.asarray(pool_recall if pool_recall is not None else np.linspace(0.5, 1.0, n), np.float64),
        "pool_size": np.asarray(pool_size if pool_size is not None else np.arange(100, 100 + n), np.int32)})
    return FakeData(users, np.asarray(share if share is not None else np.full(20, 0.05), np.float64))


def ids(data: FakeData, slice_name: str | None = None) -> NDArray[np.int32]:
    """The users of `data` (of one slice), ascending."""
    u = data.users if slice_name is None else data.users.filter(pl.col("slice") == slice_name)
    return u["user"].to_numpy()


def make_run(role: Role, users: NDArray, recall: NDArray, *, ndcg: NDArray | None = None,
             part: Part | None = None, top: NDArray | None = None) -> Run:
    """A run over `users` with per-user recall@10 (and map@10 = ndcg@10 = recall unless `ndcg` is given)."""
    recall = np.asarray(recall, np.float64)
    ndcg = recall if ndcg is None else np.asarray(ndcg, np.float64)
    part = part or Part(PartKind.ALPHA, 0.5)
    return Run(role=role, pieces=(Piece(part),), users=np.asarray(users, np.int32),
               top=np.full((len(users), 10), -1, np.int32) if top is None else np.asarray(top, np.int32),
               per_user={"recall@10": recall, "map@10": recall.copy(), "ndcg@10": ndcg}, seconds=1.0)


def part_result(part: Part, users: NDArray, per_user: dict[str, NDArray], top: NDArray | None = None,
                seconds: float = 1.0) -> PartResult:
    users = np.asarray(users, np.int32)
    return PartResult(part=part, users=users,
                      top=np.full((len(users), 10), -1, np.int32) if top is None else np.asarray(top, np.int32),
                      per_user={k: np.asarray(v, np.float64) for k, v in per_user.items()}, seconds=seconds)
