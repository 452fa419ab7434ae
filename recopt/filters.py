"""Hard filters with bounded relaxation and a popularity backfill.

Seen items are removed before any filter and never come back. Then every
candidate must pass the *hard* rules (not blocklisted; scorable by at least one
component: the user and the item both have a CF factor, or the user has a
content profile and the item has content) and every configured *soft* filter:
genres (OR over the listed genres), providers (OR over the listed providers),
user_providers (on a provider the user subscribes to).

When fewer than `min_pool` candidates of a user survive, soft filters are
dropped one at a time in `relax_order`; a filter not listed there never
relaxes. If the pool is still short after the last step, the most popular
unseen items that pass the hard rules and the remaining filters fill it up.
Each user therefore takes at most len(relax_order) + 1 steps: there is no
loop that can run longer, and the step each user needed is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recopt.keys import segment_lengths, segment_starts


@dataclass(frozen=True)
class Relaxation:
    keep: NDArray[np.bool_]        # (n_pairs,) candidates kept after the user's step
    step: NDArray[np.int16]        # (n_users,) 0 = no relaxation ... len(order)+1 = backfill
    labels: tuple[str, ...]        # label of each step value
    backfill_pass: dict[str, bool]  # soft filters still applied during backfill


def step_labels(relax_order: list[str]) -> tuple[str, ...]:
    return ("none", *(f"relaxed_{name}" for name in relax_order), "backfill")


def relax_filters(rows: NDArray[np.int32], n_users: int, hard: NDArray[np.bool_],
                  soft: dict[str, NDArray[np.bool_]], relax_order: list[str], min_pool: int) -> Relaxation:
    """Choose, per user, the first relaxation step that leaves >= min_pool candidates.

    rows: the batch-local user row of each candidate pair; hard/soft: per-pair
    pass masks. Vectorised over users: one bincount per step.
    """
    labels = step_labels(relax_order)
    step = np.full(n_users, len(labels) - 1, dtype=np.int16)
    keep = np.zeros(len(rows), dtype=np.bool_)
    dropped: set[str] = set()
    for s in range(len(labels) - 1):
        if s > 0:
            dropped.add(relax_order[s - 1])
        ok = hard.copy()
        for name, mask in soft.items():
            if name not in dropped:
                ok &= mask
        count = np.bincount(rows[ok], minlength=n_users)
        newly = (step == len(labels) - 1) & (count >= min_pool)
        step[newly] = s
        keep |= ok & newly[rows]
    # backfill users keep what passes with every relaxable filter dropped
    ok = hard.copy()
    for name, mask in soft.items():
        if name not in dropped:
            ok &= mask
    last = step == len(labels) - 1
    keep |= ok & last[rows]
    return Relaxation(keep=keep, step=step, labels=labels,
                      backfill_pass={name: name not in dropped for name in soft})


def first_n_per_row(rows: NDArray[np.int32], n: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Mask of the first n[row] entries of each row; `rows` must be sorted (grouped)."""
    starts = segment_starts(rows)
    position = np.arange(len(rows)) - np.repeat(starts, segment_lengths(starts, len(rows)))
    return position < n[rows]
