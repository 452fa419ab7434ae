"""Tests for recopt.candidates: a hand-built world of 24 items and 4 users whose pools
are checked against brute-force numpy answers (CF seeds, content neighbours, profile
retrieval), the priority cap, hard/soft filters with relaxation and backfill,
determinism and batch-size invariance."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import polars as pl
import pytest

from recopt.assembly import HybridInputs
from recopt.candidates import (SOURCE_BACKFILL, SOURCE_CF, SOURCE_CONTENT, SOURCE_PROFILE, Batch, build_batch,
                               build_context)
from recopt.config import CandidatesConfig, Filters

THRESHOLD = 4.0
N_ITEMS, N_USERS = 24, 4
NO_CONTENT_CF = 22     # has a CF factor but no content
CONTENT_ONLY = 23      # has content but no CF factor
NOTHING = 21           # neither: never scorable, never a candidate
COLD_USER = 3          # no CF factor

# (user, item, rating, timestamp)
TRAIN = [
    (0, 0, 5.0, 1), (0, 1, 4.5, 2), (0, 2, 2.0, 3),      # latest liked: item 1 (item 2 is disliked)
    (1, 5, 5.0, 4), (1, 3, 4.0, 5), (1, 4, 3.0, 6),      # latest liked: item 3
    (2, 6, 1.0, 1), (2, 7, 2.0, 2),                      # likes nothing: profile/anchor from all items
    (3, 8, 5.0, 1), (3, 9, 4.0, 2), (3, 10, 3.0, 3),     # cold user, latest liked: item 9
]
GENRES = [["Drama"] if i % 3 == 0 else ["Comedy"] if i % 3 == 1 else ["Horror", "Drama"] for i in range(N_ITEMS)]


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def make_inputs() -> HybridInputs:
    rng = np.random.default_rng(2024)
    emb = _unit(rng.normal(size=(N_ITEMS, 5)))
    has_content = np.ones(N_ITEMS, bool)
    has_content[[NO_CONTENT_CF, NOTHING]] = False
    emb[~has_content] = 0.0
    item_f = rng.normal(size=(N_ITEMS, 3)).astype(np.float32)
    item_has_cf = np.ones(N_ITEMS, bool)
    item_has_cf[[CONTENT_ONLY, NOTHING]] = False
    item_f[~item_has_cf] = 0.0
    user_f = rng.normal(size=(N_USERS, 3)).astype(np.float32)
    user_has_cf = np.ones(N_USERS, bool)
    user_has_cf[COLD_USER] = False
    user_f[COLD_USER] = 0.0
    return HybridInputs(item_ids=((np.arange(N_ITEMS) + 1) * 10).astype(np.int32),
                        user_ids=(np.arange(N_USERS) + 1).astype(np.int32),
                        embeddings=emb, mmr=emb.copy(), has_content=has_content, user_factors=user_f,
                        item_factors=item_f, user_has_cf=user_has_cf, item_has_cf=item_has_cf)


def make_frames(inputs: HybridInputs, train_rows=TRAIN) -> dict[str, pl.DataFrame]:
    u, i, r, t = (list(c) for c in zip(*train_rows))
    train = pl.DataFrame({
        "userId": pl.Series(inputs.user_ids[u], dtype=pl.Int32),
        "movieId": pl.Series(inputs.item_ids[i], dtype=pl.Int32),
        "rating": pl.Series(r, dtype=pl.Float32),
        "timestamp": pl.Series(t, dtype=pl.Int64),
    })
    movies = pl.DataFrame({
        "movieId": pl.Series(inputs.item_ids, dtype=pl.Int32),
        "title": [f"Movie {k}" for k in range(N_ITEMS)],
        "year": pl.Series([1990 + k for k in range(N_ITEMS)], dtype=pl.Int16),
        "genres": pl.Series(GENRES, dtype=pl.List(pl.String)),
    })
    providers = pl.DataFrame({"movieId": pl.Series([], dtype=pl.Int32), "provider": pl.Series([], dtype=pl.String)})
    user_providers = pl.DataFrame({"userId": pl.Series([], dtype=pl.Int32),
                                   "provider": pl.Series([], dtype=pl.String)})
    return {"train": train, "movies": movies, "providers": providers, "user_providers": user_providers}


def make_cfg(**overrides) -> CandidatesConfig:
    filters = Filters(genres=overrides.pop("genres", []), providers=[], user_providers=False,
                      blocklist=overrides.pop("blocklist", []))
    base = dict(n_cf_seed=4, m_recent=1, k_neighbours=3, c_max=100, min_pool=0, batch_users=2,
                quality_prior=5.0, filters=filters, relax_order=["providers", "genres"])
    return CandidatesConfig(**{**base, **overrides})


def run(cfg: CandidatesConfig, users=range(N_USERS), inputs: HybridInputs | None = None,
        train_rows=TRAIN) -> Batch:
    inputs = inputs or make_inputs()
    f = make_frames(inputs, train_rows)
    ctx = build_context(inputs, f["train"], f["movies"], f["providers"], f["user_providers"],
                        np.arange(N_USERS, dtype=np.int64), cfg, THRESHOLD)
    return build_batch(ctx, cfg, np.asarray(list(users), dtype=np.int64))


# --------------------------------------------------------------------------- brute-force references


def seen_of(user: int, train_rows=TRAIN) -> set[int]:
    return {i for u, i, _, _ in train_rows if u == user}


def latest_liked(user: int, train_rows=TRAIN) -> int:
    rows = [(t, i) for u, i, r, t in train_rows if u == user and r >= THRESHOLD]
    rows = rows or [(t, i) for u, i, _, t in train_rows if u == user]
    return max(rows)[1]


def profile(inputs: HybridInputs, user: int) -> np.ndarray:
    liked = [(i, r - THRESHOLD + 1.0) for u, i, r, _ in TRAIN if u == user and r >= THRESHOLD]
    liked = liked or [(i, 1.0) for u, i, _, _ in TRAIN if u == user]
    p = sum(w * inputs.embeddings[i].astype(np.float64) for i, w in liked)
    return p / np.linalg.norm(p)


def top_by(scores: np.ndarray, allowed: np.ndarray, n: int) -> list[int]:
    idx = np.flatnonzero(allowed)
    return idx[np.argsort(-scores[idx], kind="stable")][:n].tolist()


def cf_seeds(inputs: HybridInputs, user: int, n: int) -> list[int]:
    scores = inputs.item_factors.astype(np.float64) @ inputs.user_factors[user]
    allowed = inputs.item_has_cf.copy()
    allowed[list(seen_of(user))] = False
    return top_by(scores, allowed, n)


def neighbours(inputs: HybridInputs, item: int, k: int) -> list[int]:
    sims = inputs.embeddings.astype(np.float64) @ inputs.embeddings[item]
    allowed = inputs.has_content.copy()
    allowed[item] = False
    return top_by(sims, allowed, k)


def scorable(inputs: HybridInputs, user: int, item: int) -> bool:
    """Some component can score the pair (every user here has a content profile)."""
    return bool((inputs.user_has_cf[user] and inputs.item_has_cf[item]) or inputs.has_content[item])


def pool_of(b: Batch, user: int) -> np.ndarray:
    return b.item[b.user == user]


def flagged(b: Batch, user: int, flag: int) -> set[int]:
    m = (b.user == user) & ((b.source & flag) > 0)
    return set(b.item[m].tolist())


# --------------------------------------------------------------------------- sources


def test_cf_seeds_are_the_top_unseen_items_by_dot_product_in_order():
    inputs, cfg = make_inputs(), make_cfg()
    b = run(cfg, inputs=inputs)
    for user in (0, 1, 2):
        expect = cf_seeds(inputs, user, cfg.n_cf_seed)
        assert flagged(b, user, SOURCE_CF) == set(expect)
        # seeds come first in the pool, in score order
        np.testing.assert_array_equal(pool_of(b, user)[: cfg.n_cf_seed], expect)


def test_content_expansion_returns_the_neighbours_of_the_latest_liked_item():
    inputs, cfg = make_inputs(), make_cfg()
    b = run(cfg, inputs=inputs)
    assert latest_liked(0) == 1 and latest_liked(1) == 3 and latest_liked(2) == 7
    for user in range(N_USERS):
        expect = set(neighbours(inputs, latest_liked(user), cfg.k_neighbours)) - seen_of(user)
        assert flagged(b, user, SOURCE_CONTENT) == expect, user


def test_pool_is_exactly_seeds_plus_neighbours_without_filters():
    inputs, cfg = make_inputs(), make_cfg()
    b = run(cfg, inputs=inputs)
    for user in (0, 1, 2):
        expect = set(cf_seeds(inputs, user, 4)) | set(neighbours(inputs, latest_liked(user), 3))
        assert set(pool_of(b, user).tolist()) == expect - seen_of(user)
        assert len(pool_of(b, user)) == len(set(pool_of(b, user).tolist()))  # no duplicate pairs


def test_user_without_cf_factor_gets_profile_retrieval_and_no_collab():
    inputs, cfg = make_inputs(), make_cfg()
    b = run(cfg, inputs=inputs)
    sims = inputs.embeddings.astype(np.float64) @ profile(inputs, COLD_USER)
    allowed = inputs.has_content.copy()
    allowed[list(seen_of(COLD_USER))] = False
    expect = top_by(sims, allowed, cfg.n_cf_seed)
    assert flagged(b, COLD_USER, SOURCE_PROFILE) == set(expect)
    assert flagged(b, COLD_USER, SOURCE_CF) == set()
    np.testing.assert_array_equal(pool_of(b, COLD_USER)[: cfg.n_cf_seed], expect)
    assert np.isnan(b.collab[b.user == COLD_USER]).all()
    # users with a factor never get profile retrieval
    assert not ((b.source & SOURCE_PROFILE) > 0)[b.user != COLD_USER].any()


def test_component_scores_are_dot_products_and_cosines_with_nan_when_missing():
    inputs, cfg = make_inputs(), make_cfg()
    b = run(cfg, inputs=inputs)
    for user in range(N_USERS):
        m = b.user == user
        items = b.item[m]
        collab = inputs.item_factors[items].astype(np.float64) @ inputs.user_factors[user]
        collab[~(inputs.item_has_cf[items] & inputs.user_has_cf[user])] = np.nan
        np.testing.assert_allclose(b.collab[m], collab, rtol=1e-5, atol=1e-6)
        content = inputs.embeddings[items].astype(np.float64) @ profile(inputs, user)
        content[~inputs.has_content[items]] = np.nan
        np.testing.assert_allclose(b.content[m], content, rtol=1e-5, atol=1e-6)
    assert (b.provider == 0).all()  # no provider data
    assert b.collab.dtype == b.content.dtype == np.float32


# --------------------------------------------------------------------------- exclusions


def test_seen_items_never_appear():
    b = run(make_cfg(n_cf_seed=30, k_neighbours=20, min_pool=20, genres=["Nope"], relax_order=["genres"]))
    for user in range(N_USERS):
        assert not set(pool_of(b, user).tolist()) & seen_of(user)


def test_items_scorable_by_no_component_never_appear():
    b = run(make_cfg(n_cf_seed=30, k_neighbours=20, min_pool=30))
    assert NOTHING not in b.item
    # items with only one component do appear (cold items are recommendable)
    assert NO_CONTENT_CF in b.item and CONTENT_ONLY in b.item


def test_pairs_no_component_can_score_never_appear_even_in_the_backfill():
    # the cold user has no CF factor, so the CF-only item cannot be scored for it
    b = run(make_cfg(genres=["Nope"], min_pool=20, relax_order=["genres"]))
    assert NO_CONTENT_CF not in pool_of(b, COLD_USER)
    # every other unseen item fills the pool: all but the seen, NOTHING and the CF-only item
    assert len(pool_of(b, COLD_USER)) == N_ITEMS - len(seen_of(COLD_USER)) - 2
    assert not (np.isnan(b.collab) & np.isnan(b.content)).any()
    assert all(NO_CONTENT_CF in pool_of(b, u) for u in (0, 1, 2))  # users with a factor can get it


def test_blocklisted_items_never_appear_and_nothing_else_changes():
    inputs = make_inputs()
    plain = run(make_cfg(), inputs=inputs)
    blocked = {cf_seeds(inputs, 0, 1)[0], neighbours(inputs, latest_liked(1), 1)[0]}
    b = run(make_cfg(blocklist=[int(inputs.item_ids[i]) for i in blocked]), inputs=inputs)
    assert not set(b.item.tolist()) & blocked
    for user in range(N_USERS):
        expect = [i for i in pool_of(plain, user).tolist() if i not in blocked]
        assert pool_of(b, user).tolist() == expect
    # even when the backfill has to fill large pools
    b = run(make_cfg(blocklist=[int(inputs.item_ids[i]) for i in blocked], min_pool=18,
                     genres=["Nope"], relax_order=["genres"]), inputs=inputs)
    assert not set(b.item.tolist()) & blocked


def test_anchor_without_content_adds_no_content_neighbours():
    # user 1's latest liked item has a CF factor but no content: it has no content neighbours
    rows = [r for r in TRAIN if r[0] != 1] + [(1, 5, 5.0, 4), (1, NO_CONTENT_CF, 4.0, 9)]
    inputs = make_inputs()
    b = run(make_cfg(), inputs=inputs, train_rows=rows)
    assert flagged(b, 1, SOURCE_CONTENT) == set()
    assert set(pool_of(b, 1).tolist()) == set(cf_seeds_for(inputs, 1, 4, rows))


def cf_seeds_for(inputs: HybridInputs, user: int, n: int, train_rows) -> list[int]:
    scores = inputs.item_factors.astype(np.float64) @ inputs.user_factors[user]
    allowed = inputs.item_has_cf.copy()
    allowed[list(seen_of(user, train_rows))] = False
    return top_by(scores, allowed, n)


# --------------------------------------------------------------------------- cap and priority


def test_c_max_keeps_cf_seeds_first_then_the_closest_neighbour():
    inputs = make_inputs()
    b = run(make_cfg(c_max=5), inputs=inputs)
    for user in (0, 1, 2):
        seeds = cf_seeds(inputs, user, 4)
        rest = [i for i in neighbours(inputs, latest_liked(user), 3) if i not in seeds and i not in seen_of(user)]
        assert pool_of(b, user).tolist() == seeds + rest[:1]
    b = run(make_cfg(c_max=2), inputs=inputs)
    for user in (0, 1, 2):
        assert pool_of(b, user).tolist() == cf_seeds(inputs, user, 2)
        assert (b.source[b.user == user] & SOURCE_CF).all()


# --------------------------------------------------------------------------- soft filters


def test_genre_filter_keeps_only_matching_items_when_enough_match():
    b = run(make_cfg(n_cf_seed=12, genres=["Comedy"], min_pool=1))
    comedies = {i for i in range(N_ITEMS) if "Comedy" in GENRES[i]}
    assert set(b.item.tolist()) <= comedies
    np.testing.assert_array_equal(b.step, [0, 0, 0, 0])


def test_genre_filter_is_an_or_over_the_listed_genres():
    b = run(make_cfg(n_cf_seed=12, genres=["Comedy", "Horror"], min_pool=1))
    wanted = {i for i in range(N_ITEMS) if {"Comedy", "Horror"} & set(GENRES[i])}
    assert set(b.item.tolist()) <= wanted
    assert any("Horror" in GENRES[i] for i in b.item) and any("Comedy" in GENRES[i] for i in b.item)


def test_genre_filter_matching_nothing_relaxes_genres():
    inputs = make_inputs()
    plain = run(make_cfg(), inputs=inputs)
    b = run(make_cfg(genres=["Nope"], min_pool=3), inputs=inputs)
    # labels: none, relaxed_providers, relaxed_genres, backfill
    np.testing.assert_array_equal(b.step, [2, 2, 2, 2])
    assert not ((b.source & SOURCE_BACKFILL) > 0).any()
    np.testing.assert_array_equal(b.item, plain.item)


def test_genre_filter_matching_nothing_ends_in_popularity_backfill_up_to_min_pool():
    inputs = make_inputs()
    min_pool = 12
    plain = run(make_cfg(), inputs=inputs)
    b = run(make_cfg(genres=["Nope"], min_pool=min_pool, relax_order=["genres"]), inputs=inputs)
    # labels: none, relaxed_genres, backfill -> every user needed len(relax_order) + 1 steps
    np.testing.assert_array_equal(b.step, [2, 2, 2, 2])
    popularity = np.bincount([i for _, i, _, _ in TRAIN], minlength=N_ITEMS)
    by_popularity = [int(i) for i in np.argsort(-popularity, kind="stable") if i != NOTHING]
    for user in range(N_USERS):
        pool = pool_of(b, user).tolist()
        assert len(pool) == min_pool
        before = pool_of(plain, user).tolist()
        assert pool[: len(before)] == before  # the relaxed pool first, then the backfill
        expect_fill = [i for i in by_popularity
                       if i not in seen_of(user) and i not in before and scorable(inputs, user, i)]
        assert pool[len(before):] == expect_fill[: min_pool - len(before)]
        src = b.source[b.user == user]
        assert ((src[len(before):] & SOURCE_BACKFILL) > 0).all()
        assert not ((src[: len(before)] & SOURCE_BACKFILL) > 0).any()


def test_genre_filter_that_never_relaxes_backfills_with_matching_items_only():
    b = run(make_cfg(genres=["Horror"], min_pool=10, relax_order=["providers"]))
    horror = {i for i in range(N_ITEMS) if "Horror" in GENRES[i]}
    assert set(b.item.tolist()) <= horror
    np.testing.assert_array_equal(b.step, [2, 2, 2, 2])  # none, relaxed_providers, backfill


# --------------------------------------------------------------------------- purity


def _assert_batches_equal(a: Batch, b: Batch) -> None:
    for f in dataclasses.fields(Batch):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@pytest.mark.parametrize("cfg", [make_cfg(), make_cfg(genres=["Nope"], min_pool=12, relax_order=["genres"])])
def test_build_batch_is_deterministic(cfg):
    _assert_batches_equal(run(cfg), run(cfg))


@pytest.mark.parametrize("cfg", [make_cfg(), make_cfg(c_max=5),
                                 make_cfg(genres=["Nope"], min_pool=12, relax_order=["genres"])])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_batch_size_does_not_change_results(cfg, split):
    inputs = make_inputs()
    f = make_frames(inputs)
    ctx = build_context(inputs, f["train"], f["movies"], f["providers"], f["user_providers"],
                        np.arange(N_USERS, dtype=np.int64), cfg, THRESHOLD)
    users = np.arange(N_USERS, dtype=np.int64)
    whole = build_batch(ctx, cfg, users)
    halves = [build_batch(ctx, cfg, users[:split]), build_batch(ctx, cfg, users[split:])]
    joined = Batch(**{fl.name: np.concatenate([getattr(h, fl.name) for h in halves])
                      for fl in dataclasses.fields(Batch)})
    _assert_batches_equal(whole, joined)


def test_the_test_split_is_not_an_input():
    context_params = set(inspect.signature(build_context).parameters)
    assert context_params == {"inputs", "train", "movies", "providers", "user_providers", "eval_users",
                               "cfg", "threshold"}
    assert set(inspect.signature(build_batch).parameters) == {"ctx", "cfg", "users"}
    assert not any("test" in name for name in context_params)
