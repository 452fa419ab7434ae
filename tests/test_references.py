"""Tests for recopt.references: EASE against its closed form computed with numpy on tiny
data (weights, scores, top-k unseen lists, the covered items), item-kNN against implicit's
own CosineRecommender.recommend, and a block-structured matrix where the withheld item must
rank first for both (like implicit's recommender_base_test checkerboard)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recopt.references import ease_lists, fit_ease, fit_itemknn, interaction_matrix, itemknn_lists


def _random_interactions(seed: int, n_users: int = 12, n_items: int = 9, density: float = 0.35) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density) * rng.integers(1, 6, (n_users, n_items))  # ratings 1..5
    return sp.csr_matrix(dense.astype(np.float32))


def _ease_closed_form(x: np.ndarray, lam: float) -> np.ndarray:
    """B = I - P / diag(P) (column j divided by P_jj), P = (X'X + lam I)^-1 (Steck 2019)."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p / np.diag(p)[None, :]


def _top_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> list[int]:
    """Best k unseen columns by score, ties by lower index."""
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores)) if not seen[i]]
    return order[:k]


def _scaled(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.full(len(values), 0.5)


# --------------------------------------------------------------------------- EASE


def test_interaction_matrix_is_binary_and_leaves_its_input_alone():
    x = _random_interactions(0)
    b = interaction_matrix(x)
    np.testing.assert_array_equal(b.toarray(), (x.toarray() > 0).astype(np.float32))
    assert x.max() > 1  # the ratings are still there
    assert b.dtype == np.float32


@pytest.mark.parametrize("lam", [0.5, 3.0, 50.0])
def test_ease_weights_are_the_closed_form(lam):
    x = interaction_matrix(_random_interactions(1))
    model = fit_ease(x, [lam], max_items=100)[lam]
    dense = x.toarray().astype(np.float64)
    used = np.flatnonzero(dense.sum(axis=0) > 0)
    np.testing.assert_array_equal(model.items, used)
    np.testing.assert_allclose(model.weights, _ease_closed_form(dense[:, used], lam), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.diag(model.weights), 0.0)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_ease_lists_are_the_top_unseen_items_by_x_times_b(k):
    x = _random_interactions(2)
    binary = x.toarray() > 0
    model = fit_ease(interaction_matrix(x), [2.0], max_items=100)[2.0]
    items, scores = ease_lists(model, x, k)
    full = binary.astype(np.float64) @ _ease_closed_form(binary[:, model.items].astype(np.float64), 2.0) \
        if len(model.items) == x.shape[1] else None
    assert full is not None  # every item has an interaction in this fixture
    assert items.shape == scores.shape == (x.shape[0], k)
    for u in range(x.shape[0]):
        want = _top_unseen(full[u], binary[u], k)
        got = items[u][items[u] >= 0].tolist()
        assert got == want, u
        np.testing.assert_allclose(scores[u, :len(want)], _scaled(full[u, want]), atol=1e-4)
        assert (items[u, len(want):] == -1).all() and (scores[u, len(want):] == 0).all()


def test_ease_covers_only_the_most_interacted_items():
    x = _random_interactions(3, n_users=20, n_items=10, density=0.4)
    binary = (x.toarray() > 0).astype(np.float64)
    counts = binary.sum(axis=0)
    covered = np.sort(np.argsort(-counts, kind="stable")[:4])
    model = fit_ease(interaction_matrix(x), [1.0], max_items=4)[1.0]
    np.testing.assert_array_equal(model.items, covered)
    np.testing.assert_allclose(model.weights, _ease_closed_form(binary[:, covered], 1.0), rtol=1e-4, atol=1e-6)
    items, _ = ease_lists(model, x, 10)
    listed = set(items[items >= 0].tolist())
    assert listed <= set(covered.tolist())
    # a user's list: its unseen covered items, by its scores on the covered items
    scores = binary[:, covered] @ model.weights.astype(np.float64)
    for u in range(x.shape[0]):
        want = [int(covered[j]) for j in _top_unseen(scores[u], binary[u, covered] > 0, 10)]
        assert items[u][items[u] >= 0].tolist() == want


def test_ease_never_covers_an_item_without_interactions():
    x = _random_interactions(4)
    dense = x.toarray()
    dense[:, [2, 5]] = 0
    model = fit_ease(interaction_matrix(sp.csr_matrix(dense)), [1.0], max_items=100)[1.0]
    assert not {2, 5} & set(model.items.tolist())


def test_ease_lists_of_a_user_do_not_depend_on_the_other_users_in_the_batch():
    x = _random_interactions(5, n_users=30)
    model = fit_ease(interaction_matrix(x), [2.0], max_items=100)[2.0]
    whole = ease_lists(model, x, 5)
    part = ease_lists(model, x[7:11], 5)
    np.testing.assert_array_equal(part[0], whole[0][7:11])


# --------------------------------------------------------------------------- item-kNN


def _implicit_lists(x: sp.csr_matrix, k_neighbours: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from implicit.nearest_neighbours import CosineRecommender

    model = CosineRecommender(K=k_neighbours)
    model.fit(x, show_progress=False)
    users = np.arange(x.shape[0])
    return model.recommend(users, x, N=n, filter_already_liked_items=True)


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
@pytest.mark.parametrize(("k_neighbours", "n"), [(3, 4), (20, 6)])
def test_itemknn_lists_match_implicits_recommend(k_neighbours, n):
    x = interaction_matrix(_random_interactions(6, n_users=25, n_items=14, density=0.3))
    similarity = fit_itemknn(x, [k_neighbours])[k_neighbours]
    items, _ = itemknn_lists(similarity, x, n)
    their_items, their_scores = _implicit_lists(x, k_neighbours, n)
    raw = (x @ similarity).toarray()
    compared = 0
    for u in range(x.shape[0]):
        positive = their_scores[u] > 0  # implicit pads with zero-evidence items; ours never lists them
        theirs = their_items[u][positive]
        ours = items[u][items[u] >= 0]
        assert len(ours) == len(theirs), u
        # same scores rank by rank (tie order may differ) and the same items wherever scores differ
        np.testing.assert_allclose(raw[u, ours], their_scores[u][positive], rtol=1e-5)
        unseen = np.sort(raw[u][x.toarray()[u] == 0])[::-1][: len(theirs) + 1]
        if (np.diff(unseen) < -1e-6).all():  # no tie in the list or at its cut
            np.testing.assert_array_equal(ours, theirs)
            compared += 1
    assert compared >= x.shape[0] // 3  # enough users without ties to make the item check bite


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
def test_itemknn_similarity_is_implicits_and_scores_are_x_times_s():
    from implicit.nearest_neighbours import CosineRecommender

    x = interaction_matrix(_random_interactions(7, n_users=20, n_items=10))
    sim = fit_itemknn(x, [4])[4]
    model = CosineRecommender(K=4)
    model.fit(x, show_progress=False)
    np.testing.assert_allclose(sim.toarray(), model.similarity.toarray(), rtol=1e-6)
    # at most K neighbours per item
    assert (np.diff(sim.indptr) <= 4).all()
    items, scores = itemknn_lists(sim, x, 3)
    raw = (x @ sim).toarray()
    for u in range(x.shape[0]):
        listed = items[u][items[u] >= 0]
        assert not (x.toarray()[u, listed] > 0).any()
        np.testing.assert_allclose(scores[u, :len(listed)], _scaled(raw[u, listed]), atol=1e-6)


# --------------------------------------------------------------------------- a known answer


def _blocks() -> sp.csr_matrix:
    """Users 0-4 interact with items 0-4, users 5-9 with items 5-9; user 0 lacks item 0."""
    dense = np.zeros((10, 10), dtype=np.float32)
    dense[:5, :5] = 1.0
    dense[5:, 5:] = 1.0
    dense[0, 0] = 0.0
    return sp.csr_matrix(dense)


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
def test_the_withheld_item_ranks_first():
    x = _blocks()
    ease_items, ease_scores = ease_lists(fit_ease(x, [1.0], max_items=100)[1.0], x, 3)
    assert ease_items[0, 0] == 0 and ease_scores[0, 0] == 1.0
    assert ease_scores[0, 1] < 1e-3  # the other block has (numerically) no evidence
    knn_items, knn_scores = itemknn_lists(fit_itemknn(x, [5])[5], x, 3)
    np.testing.assert_array_equal(knn_items[0], [0, -1, -1])  # no neighbour evidence: never listed
    assert knn_scores[0, 0] == 0.5  # a one-item list scales to 0.5
    # users 1-4 have seen their whole block: item-kNN has nothing to list for them
    assert (knn_items[1:5] == -1).all()


def test_a_smaller_k_from_the_grid_fit_equals_implicit_fitted_with_that_k():
    from implicit.nearest_neighbours import CosineRecommender

    x = _random_interactions(11, n_users=60).astype(np.float32)
    x.data = np.random.default_rng(3).random(x.nnz).astype(np.float32) + 0.5  # weights: no ties in similarity
    grid = fit_itemknn(x, [3, 8])
    direct = CosineRecommender(K=3)
    direct.fit(x, show_progress=False)
    expected = direct.similarity.tocsr()
    expected.sort_indices()
    np.testing.assert_array_equal(grid[3].indptr, expected.indptr)
    np.testing.assert_array_equal(grid[3].indices, expected.indices)
    np.testing.assert_allclose(grid[3].data, expected.data, rtol=1e-6)


def test_one_gram_serves_every_lambda_of_the_grid():
    x = interaction_matrix(_random_interactions(12, n_users=40))
    grid = fit_ease(x, [1.0, 50.0], max_items=100)
    for lam in (1.0, 50.0):
        np.testing.assert_array_equal(grid[lam].weights, fit_ease(x, [lam], max_items=100)[lam].weights)
