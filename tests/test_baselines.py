"""The contract every baseline of recopt.baselines.BASELINES passes (like implicit's
tests/recommender_base_test.py), on the tiny test fold through recopt.evaluate.evaluate_parts: every
evaluated user gets a non-empty list of unseen, distinct items with scores in [0, 1]; the per-user
`fallback` flag is 1 exactly for the users the baseline cannot score, and those users get popularity's
list. Also: the item popularity the baselines (and novelty, the cold prior) read counts train ratings
alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import recopt.evaluate as ev
from recopt.artifacts import open_artifact
from recopt.baselines import BASELINES
from recopt.config import Config
from recopt.evaluate import evaluate_parts, load_eval_data, load_part
from recopt.layout import checkpoint_file
from recopt.methods import Part, PartKind
from recopt.runs import join
from recopt.selection import Role

PARTS = {name: Part(PartKind.BASELINE, method=name) for name in BASELINES}


@pytest.fixture(scope="module")
def served(tiny_built: Config, tmp_path_factory: pytest.TempPathFactory):
    """Every baseline over the tiny test fold, where some users cannot be scored: half of the users without
    a factor from the fit lose their folded-in factor (no collab in their pool), every 7th user's pool
    has no content score (no content profile), and every 5th user's pool is cut to its first 3 rows and
    its items without a CF factor, with content scores on the first 3 only (a list shorter than k is still
    the baseline's own; an imputed collab is not a collab score).

    Returns (data, users, {name: (users, lists, scores, fallback, PartResult)}, {name: who it can score})."""
    cfg = dataclasses.replace(tiny_built, paths=dataclasses.replace(
        tiny_built.paths, checkpoints=str(tmp_path_factory.mktemp("checkpoints"))))
    data = load_eval_data(cfg, "test", reader="test")
    users = np.sort(data.users["user"].to_numpy()).astype(np.int64)
    has_cf = data.factors["user_has_cf"]
    folded = data.factors["user_folded"].copy()
    folded[users[~has_cf[users]][::2]] = False
    data = dataclasses.replace(data, factors={**data.factors, "user_folded": folded})
    no_profile, short = users[::7], users[2::5]
    item_has_cf = data.factors["item_has_cf"]
    real = ev.read_pool

    def read_pool(store, batch, sizes, pool_users):
        pool = real(store, batch, sizes, pool_users)
        assert (np.diff(pool["user"]) >= 0).all()
        rank = np.arange(len(pool["user"])) - np.searchsorted(pool["user"], pool["user"])  # position in the pool
        is_short = np.isin(pool["user"], short)
        no_content = np.isin(pool["user"], no_profile) | (is_short & (rank >= 3))
        pool["content"] = np.where(no_content, np.nan, pool["content"]).astype(np.float32)
        keep = ~is_short | (rank < 3) | ~item_has_cf[pool["item"]]
        return {name: col[keep] for name, col in pool.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "read_pool", read_pool)
        result = evaluate_parts(cfg, data, tuple(PARTS.values()), deadline=None, desc="baselines")
    assert result.complete
    # the oracle, from the pools as evaluated: who has a collab score (user and item with a factor) and
    # who a content score for at least one pool item
    can = {"cf_only": np.zeros(len(users), bool), "content_only": np.zeros(len(users), bool)}
    for (b,), g in data.pool_users.partition_by("batch", as_dict=True).items():
        pool = read_pool(data.candidates, b, g["pool_size"].to_numpy(), g["user"].to_numpy())
        rows = np.searchsorted(users, pool["user"])
        known = np.isin(pool["user"], users)
        collab = (has_cf | folded)[pool["user"]] & item_has_cf[pool["item"]]
        can["cf_only"][rows[known & collab]] = True
        can["content_only"][rows[known & ~np.isnan(pool["content"])]] = True
    out = {}
    for name, part in PARTS.items():
        chunks = [load_part(checkpoint_file(result.checkpoints[part], b)) for b in result.done]
        out[name] = (np.concatenate([c.users for c in chunks]), np.concatenate([c.lists for c in chunks]),
                     np.concatenate([c.scores for c in chunks]),
                     np.concatenate([c.per_user["fallback"] for c in chunks]), result.parts[part])
    return data, users, out, can


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_serves_every_user_a_valid_list(served, name):
    data, users, out, _ = served
    got_users, lists, scores, _, part = out[name]
    np.testing.assert_array_equal(got_users, users)
    np.testing.assert_array_equal(part.users, users)
    listed = lists >= 0
    assert listed[:, 0].all(), f"{name}: {(~listed[:, 0]).sum()} user(s) with an empty list"
    assert not (~listed[:, :-1] & listed[:, 1:]).any()                      # padding only at the end
    seen = data.seen[users].toarray() > 0
    rows = np.broadcast_to(np.arange(len(users))[:, None], lists.shape)
    assert not seen[rows[listed], lists[listed]].any(), f"{name} lists a seen item"
    s = np.sort(np.where(listed, lists, -1 - np.arange(lists.shape[1])), axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any(), f"{name} lists an item twice"
    assert np.isfinite(scores).all() and scores[listed].min() >= 0 and scores[listed].max() <= 1
    np.testing.assert_array_equal(part.top, lists[:, :part.top.shape[1]])


@pytest.mark.parametrize("name", list(BASELINES))
def test_the_fallback_serves_exactly_the_users_a_baseline_cannot_score(served, name):
    data, users, out, can = served
    _, lists, scores, fallback, part = out[name]
    spec = BASELINES[name]
    cannot = ~can[name] if name in can else np.zeros(len(users), bool)
    if spec.fallback is not None:                                           # the cases under test exist:
        assert 0 < cannot.sum() < len(users)                                # users it cannot score,
        assert (~cannot & ((lists >= 0).sum(axis=1) < lists.shape[1])).any()  # and short lists of its own
    np.testing.assert_array_equal(fallback, cannot.astype(np.float64))
    if cannot.any():  # CF-only and content-only fall back to popularity (DESIGN.md)
        _, pop_lists, pop_scores, _, _ = out["popularity"]
        np.testing.assert_array_equal(lists[cannot], pop_lists[cannot])
        np.testing.assert_array_equal(scores[cannot], pop_scores[cannot])
    assert join(Role.BASELINE, [(part, None)], data).fallback_users == cannot.sum()


def test_a_pool_baseline_lists_only_items_its_component_scores_for_the_users_it_scores(served):
    data, users, out, _ = served
    for name, scorable in (("cf_only", data.factors["item_has_cf"]), ("content_only", data.items["has_content"])):
        _, lists, _, fallback, _ = out[name]
        own = lists[fallback == 0]
        assert np.asarray(scorable)[own[own >= 0]].all()


# --------------------------------------------------------------------------- what the popularity counts


@pytest.mark.parametrize("fold", ["tune", "test"])
def test_item_popularity_counts_the_folds_train_ratings_alone(tiny_built: Config, fold: str):
    cfg = tiny_built
    items = open_artifact(cfg.paths, "candidates", fold, reader="test", config=cfg).parquet("items")
    split = open_artifact(cfg.paths, "split", fold, reader="test", config=cfg)
    catalog = items["movieId"].to_numpy()
    assert (np.diff(catalog) > 0).all()

    def count(*frames) -> np.ndarray:
        ids = np.concatenate([f["movieId"].to_numpy() for f in frames])
        assert np.isin(ids, catalog).all()
        return np.bincount(np.searchsorted(catalog, ids), minlength=len(catalog))

    train, heldout = split.parquet("train"), split.parquet("heldout")
    popularity = items["popularity"].to_numpy()
    np.testing.assert_array_equal(popularity, count(train))
    assert len(heldout) and not np.array_equal(popularity, count(train, heldout))
