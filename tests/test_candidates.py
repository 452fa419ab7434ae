"""Tests for recopt.candidates and the seen-item helpers of recopt.keys: a hand-built world
of 24 items and 4 users whose pools are checked against brute-force numpy answers (CF
seeds, content neighbours, profile retrieval, the popular source of users without a CF
factor, the full priority order), the priority cap, hard/soft filters with relaxation and
backfill, determinism, batch-size invariance and pickling; the per-batch seen bitset
against Python sets."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.assembly import HybridInputs
from recopt.candidates import (SOURCE_BACKFILL, SOURCE_CF, SOURCE_CONTENT, SOURCE_POPULAR, SOURCE_PROFILE, Batch,
                               Context, build_batch, build_context, search_ip, user_profiles)
from recopt.config import CandidatesConfig, Filters
from recopt.errors import RecoptError
from recopt.keys import first_unseen, is_seen, packing, seen_bitset

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
                        item_factors=item_f, user_has_cf=user_has_cf, user_folded=np.zeros(N_USERS, bool),
                        item_has_cf=item_has_cf)


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
    base = dict(n_cf_seed=4, m_recent=1, k_neighbours=3, c_max=100, min_pool=0, n_popular_cold=0, batch_users=2,
                quality_prior=5.0, filters=filters, relax_order=["providers", "genres"])
    return CandidatesConfig(**{**base, **overrides})


def make_context(cfg: CandidatesConfig, inputs: HybridInputs | None = None, train_rows=TRAIN,
                 eval_users=range(N_USERS)) -> Context:
    inputs = inputs or make_inputs()
    f = make_frames(inputs, train_rows)
    return build_context(inputs, f["train"], f["movies"], f["providers"], f["user_providers"],
                         np.asarray(list(eval_users), dtype=np.int64), cfg, THRESHOLD)


def run(cfg: CandidatesConfig, users=range(N_USERS), inputs: HybridInputs | None = None,
        train_rows=TRAIN) -> Batch:
    ctx = make_context(cfg, inputs, train_rows)
    return build_batch(ctx, np.asarray(list(users), dtype=np.int64))


# --------------------------------------------------------------------------- brute-force references


def seen_of(user: int, train_rows=TRAIN) -> set[int]:
    return {i for u, i, _, _ in train_rows if u == user}


def latest_liked(user: int, train_rows=TRAIN) -> int:
    rows = [(t, i) for u, i, r, t in train_rows if u == user and r >= THRESHOLD]
    rows = rows or [(t, i) for u, i, _, t in train_rows if u == user]
    return max(rows)[1]


def profile(inputs: HybridInputs, user: int, train_rows=TRAIN) -> np.ndarray:
    liked = [(i, r - THRESHOLD + 1.0) for u, i, r, _ in train_rows if u == user and r >= THRESHOLD]
    liked = liked or [(i, 1.0) for u, i, _, _ in train_rows if u == user]
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


def popular_unseen(inputs: HybridInputs, user: int, n: int, train_rows=TRAIN) -> list[int]:
    """The n most-rated train items (ties: lower index) the user has not seen and could be
    scored on (the hard rules: scorable by some component for this user, not blocklisted)."""
    counts = np.bincount([i for _, i, _, _ in train_rows], minlength=N_ITEMS)
    order = np.argsort(-counts, kind="stable").tolist()
    seen = seen_of(user, train_rows)
    return [i for i in order if i not in seen and scorable(inputs, user, i)][:n]


def expected_pool(inputs: HybridInputs, user: int, cfg: CandidatesConfig,
                  train_rows=TRAIN) -> tuple[list[int], list[int]]:
    """A user's pool (items, source flags) with no soft filter, by the documented priority rule:
    retrieval rank r for CF seeds / profile seeds / popular items, n_cf_seed + round((1 - sim)
    * 1000) for content neighbours; the best priority and the union of flags per item; ties
    by item index; seen and unscorable items dropped; capped at c_max."""
    seen = seen_of(user, train_rows)
    prio: dict[int, int] = {}
    src: dict[int, int] = {}

    def add(item: int, p: int, flag: int) -> None:
        if item in seen:
            return
        prio[item] = min(prio.get(item, p), p)
        src[item] = src.get(item, 0) | flag

    if inputs.user_has_cf[user]:
        for r, i in enumerate(cf_seeds_for(inputs, user, cfg.n_cf_seed, train_rows)):
            add(i, r, SOURCE_CF)
    else:
        sims = inputs.embeddings.astype(np.float64) @ profile(inputs, user, train_rows)
        allowed = inputs.has_content.copy()
        allowed[list(seen)] = False
        for r, i in enumerate(top_by(sims, allowed, cfg.n_cf_seed)):
            add(i, r, SOURCE_PROFILE)
        for r, i in enumerate(popular_unseen(inputs, user, cfg.n_popular_cold, train_rows)):
            add(i, r, SOURCE_POPULAR)
    a = latest_liked(user, train_rows)
    if inputs.has_content[a]:
        for i in neighbours(inputs, a, cfg.k_neighbours):
            sim = float(inputs.embeddings[i].astype(np.float64) @ inputs.embeddings[a])
            add(i, cfg.n_cf_seed + round((1.0 - sim) * 1000), SOURCE_CONTENT)
    items = sorted((i for i in prio if scorable(inputs, user, i)), key=lambda i: (prio[i], i))[: cfg.c_max]
    return items, [src[i] for i in items]


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


@pytest.mark.parametrize("cfg", [make_cfg(), make_cfg(n_popular_cold=3), make_cfg(n_popular_cold=6, c_max=7),
                                 make_cfg(n_cf_seed=2, k_neighbours=6, n_popular_cold=4),
                                 make_cfg(n_cf_seed=6, k_neighbours=2, n_popular_cold=12, c_max=9)])
def test_every_pool_is_the_brute_force_priority_order(cfg):
    inputs = make_inputs()
    b = run(cfg, inputs=inputs)
    for user in range(N_USERS):
        items, flags = expected_pool(inputs, user, cfg)
        assert pool_of(b, user).tolist() == items, user
        assert b.source[b.user == user].tolist() == flags, user


# --------------------------------------------------------------------------- popular source (cold users)


@pytest.mark.parametrize("n", [1, 3, 8, 12])
def test_user_without_cf_factor_gets_the_n_most_popular_unseen_items_flagged_popular(n):
    inputs = make_inputs()
    b = run(make_cfg(n_popular_cold=n), inputs=inputs)
    expect = popular_unseen(inputs, COLD_USER, n)
    assert len(expect) == n
    assert flagged(b, COLD_USER, SOURCE_POPULAR) == set(expect)
    assert set(expect) <= set(pool_of(b, COLD_USER).tolist())
    # only users without a CF factor get the popular source
    assert not ((b.source & SOURCE_POPULAR) > 0)[b.user != COLD_USER].any()
    # popular items are scored by content for that user (it has no collab)
    m = (b.user == COLD_USER) & ((b.source & SOURCE_POPULAR) > 0)
    assert np.isnan(b.collab[m]).all() and not np.isnan(b.content[m]).any()


def test_n_popular_cold_zero_adds_no_popular_item_and_changes_nothing_for_warm_users():
    inputs = make_inputs()
    none = run(make_cfg(n_popular_cold=0), inputs=inputs)
    some = run(make_cfg(n_popular_cold=8), inputs=inputs)
    assert not ((none.source & SOURCE_POPULAR) > 0).any()
    for user in (0, 1, 2):
        np.testing.assert_array_equal(pool_of(none, user), pool_of(some, user))
    # the cold user's pool grows by exactly the popular items it did not already have
    added = set(pool_of(some, COLD_USER).tolist()) - set(pool_of(none, COLD_USER).tolist())
    assert added == set(popular_unseen(inputs, COLD_USER, 8)) - set(pool_of(none, COLD_USER).tolist())
    assert added


def test_popular_source_counts_only_items_the_cold_user_can_be_scored_on():
    # the CF-only item becomes the most popular item; a user without a CF factor can never be
    # scored on it, so it must not use up one of the n popular slots
    rows = TRAIN + [(0, NO_CONTENT_CF, 1.0, 0), (1, NO_CONTENT_CF, 1.0, 0), (2, NO_CONTENT_CF, 1.0, 0)]
    inputs = make_inputs()
    n = 3
    b = run(make_cfg(n_popular_cold=n), inputs=inputs, train_rows=rows)
    assert NO_CONTENT_CF not in pool_of(b, COLD_USER)
    expect = popular_unseen(inputs, COLD_USER, n, rows)
    assert NO_CONTENT_CF not in expect and len(expect) == n
    assert flagged(b, COLD_USER, SOURCE_POPULAR) == set(expect)


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


@pytest.mark.parametrize("cfg", [make_cfg(), make_cfg(n_popular_cold=6),
                                 make_cfg(genres=["Nope"], min_pool=12, relax_order=["genres"])])
def test_build_batch_is_deterministic(cfg):
    _assert_batches_equal(run(cfg), run(cfg))


@pytest.mark.parametrize("cfg", [make_cfg(), make_cfg(c_max=5), make_cfg(n_popular_cold=6),
                                 make_cfg(genres=["Nope"], min_pool=12, relax_order=["genres"])])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_batch_size_does_not_change_results(cfg, split):
    ctx = make_context(cfg)
    users = np.arange(N_USERS, dtype=np.int64)
    whole = build_batch(ctx, users)
    halves = [build_batch(ctx, users[:split]), build_batch(ctx, users[split:])]
    joined = Batch(**{fl.name: np.concatenate([getattr(h, fl.name) for h in halves])
                      for fl in dataclasses.fields(Batch)})
    _assert_batches_equal(whole, joined)




def test_a_context_survives_pickling_and_gives_the_same_pools():
    # every batch reads only the context's plain arrays, so a Ray worker gets the same pools
    cfg = make_cfg(n_popular_cold=5, genres=["Comedy"], min_pool=6, relax_order=["genres"])
    ctx = make_context(cfg)
    users = np.arange(N_USERS, dtype=np.int64)
    _assert_batches_equal(build_batch(pickle.loads(pickle.dumps(ctx)), users), build_batch(ctx, users))


@pytest.mark.parametrize("evaluated", [[0, 3], [3], [1, 2, 3]])
def test_a_users_pool_does_not_depend_on_which_other_users_are_evaluated(evaluated):
    # eval_users (the users with held-out interactions) is the only input derived from the
    # held-out split: it may only decide whose pools are built, never what is in them
    cfg = make_cfg(n_popular_cold=4, m_recent=2)
    users = np.asarray(evaluated, dtype=np.int64)
    everyone = build_batch(make_context(cfg), users)
    only = build_batch(make_context(cfg, eval_users=evaluated), users)
    _assert_batches_equal(everyone, only)


# --------------------------------------------------------------------------- search and profiles


def test_search_ip_is_the_exact_top_k_by_inner_product():
    rng = np.random.default_rng(11)
    base = rng.normal(size=(30, 6)).astype(np.float32)
    queries = rng.normal(size=(4, 6)).astype(np.float32)
    scores, rows = search_ip(queries, base, 7)
    full = queries.astype(np.float64) @ base.T.astype(np.float64)
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-5, atol=1e-5)


def test_user_profiles_are_the_unit_weighted_mean_of_liked_embeddings():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(6, 3)).astype(np.float32)
    emb[5] = 0.0  # an item without content
    liked = sp.csr_matrix(np.array([[2.0, 0, 1.0, 0, 0, 0],
                                    [0, 0, 0, 0, 0, 3.0],     # likes only a content-less item
                                    [0, 1.0, 0, 0, 1.5, 0]], dtype=np.float32))
    profiles, has = user_profiles(liked, emb, np.array([2, 0, 1]))
    np.testing.assert_array_equal(has, [True, True, False])
    for row, w in zip(profiles[:2], ([0, 1.0, 0, 0, 1.5, 0], [2.0, 0, 1.0, 0, 0, 0])):
        p = np.asarray(w) @ emb.astype(np.float64)
        np.testing.assert_allclose(row, p / np.linalg.norm(p), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(profiles[2], 0.0)


# --------------------------------------------------------------------------- the seen bitset (recopt.keys)


@st.composite
def seen_matrices(draw):
    n_rows = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 37))  # not always a multiple of 8
    cells = draw(st.lists(st.tuples(st.integers(0, n_rows - 1), st.integers(0, n_items - 1)), max_size=60))
    dense = np.zeros((n_rows, n_items), dtype=np.float32)
    for r, i in cells:
        dense[r, i] = 1.0
    return sp.csr_matrix(dense), {(r, i) for r, i in cells}


@settings(max_examples=150, deadline=None)
@given(seen_matrices())
def test_seen_bitset_agrees_with_a_set_of_pairs(case):
    m, pairs = case
    bits = seen_bitset(m)
    assert bits.shape == (m.shape[0], (m.shape[1] + 7) // 8) and bits.dtype == np.uint8
    rows, items = np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij")
    got = is_seen(bits, rows.ravel(), items.ravel())
    want = np.array([(int(r), int(i)) in pairs for r, i in zip(rows.ravel(), items.ravel())])
    np.testing.assert_array_equal(got, want)
    assert int(np.unpackbits(bits).sum()) == len(pairs)  # no stray bit outside the stored pairs


@settings(max_examples=150, deadline=None)
@given(seen_matrices(), st.integers(1, 8), st.data())
def test_first_unseen_keeps_the_first_n_valid_unseen_candidates_in_order(case, n, data):
    m, pairs = case
    n_rows, n_items = m.shape
    width = data.draw(st.integers(1, 12))
    cand = np.array([data.draw(st.permutations(list(range(-1, n_items))))[:width] for _ in range(n_rows)],
                    dtype=np.int64).reshape(n_rows, -1)
    rows = np.arange(n_rows, dtype=np.int64)
    items, cols = first_unseen(rows, cand, seen_bitset(m), n)
    assert items.shape == cols.shape == (n_rows, min(n, cand.shape[1]))
    for r in range(n_rows):
        keep = [(c, j) for j, c in enumerate(cand[r].tolist()) if c >= 0 and (r, c) not in pairs][:n]
        pad = items.shape[1] - len(keep)
        assert items[r].tolist() == [c for c, _ in keep] + [-1] * pad
        assert cols[r].tolist() == [j for _, j in keep] + [-1] * pad


def test_sort_keys_that_do_not_fit_63_bits_name_the_setting_to_lower():
    with pytest.raises((ValueError, RecoptError), match=r"need 65 bits, more than 63; use a smaller "
                                                        r"candidates.batch_users"):
        packing(2**33, 2**32)
    layout = packing(2**31, 2**32)  # 63 bits fit
    key = layout.pack(np.array([2**31 - 1]), np.array([5]))
    assert layout.field(key, 0)[0] == 2**31 - 1 and layout.field(key, 1)[0] == 5
