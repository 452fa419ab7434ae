"""The recommend command: one user's final list, with every score and why each item was retrieved."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recopt.__main__ import main
from recopt.cf import run_cf_load
from recopt.config import Config
from recopt.embeddings import run_embed_load
from recopt.pools import run_candidates
from recopt.recommend import recommend


@pytest.fixture(scope="module")
def built(tiny: Config) -> Config:
    run_embed_load(tiny)
    run_cf_load(tiny)
    run_candidates(tiny)
    return tiny


def _some_user(cfg: Config) -> int:
    return int(pl.read_parquet(f"{cfg.paths.candidates}/users.parquet")["userId"][0])


def test_recommend_lists_ranked_unseen_items_with_their_scores(built: Config) -> None:
    user = _some_user(built)
    table = recommend(built, user, 0.5, 10)
    assert table["rank"].to_list() == list(range(1, 11))
    assert table["movieId"].is_unique().all()
    for col in ("final", "hybrid", "quality", "recency", "provider"):
        assert table[col].is_between(0, 1).all(), col
    assert (table["retrieved_by"].str.len_chars() > 0).all()
    seen = pl.read_parquet(f"{built.paths.split}/train.parquet").filter(pl.col("userId") == user)["movieId"]
    assert not table["movieId"].is_in(seen.implode()).any()
    assert table["title"].null_count() == 0


def test_recommend_uses_the_evaluate_ranking(built: Config) -> None:
    """The list equals what evaluate ranks for that user at the same alpha."""
    from recopt.evaluate import RunSpec, evaluate_run, load_eval_data

    data = load_eval_data(built)
    run = evaluate_run(RunSpec("alpha", 0.5), built, data)
    user = _some_user(built)
    uidx = int(data.users.filter(pl.col("userId") == user)["user"][0])
    row = int(np.flatnonzero(run.users == uidx)[0])
    expected = data.items["movieId"].to_numpy()[run.lists[row][run.lists[row] >= 0]]
    np.testing.assert_array_equal(recommend(built, user, 0.5)["movieId"].to_numpy(), expected)


def test_recommend_names_a_user_without_a_pool(built: Config) -> None:
    with pytest.raises(ValueError, match="--user: userId 999999 has no candidate pool"):
        recommend(built, 999_999, 0.5)
    with pytest.raises(ValueError, match=r"--alpha: 1.5 must be in \[0, 1\]"):
        recommend(built, _some_user(built), 1.5)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys) -> None:
    assert main(["recommend", "--user", "1", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "python -m stages.compose" in capsys.readouterr().err
