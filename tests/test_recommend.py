"""The recommend command: one user's final list, with every score and why each item was
retrieved -- checked against the evaluate ranking of the same fold, the user's train and
held-out interactions, and the printed layout (header, MMR note, 120 columns, --hits)."""

from __future__ import annotations

import dataclasses


import numpy as np
import polars as pl
import pytest
import yaml

from recopt.__main__ import main
from recopt.artifacts import open_artifact
from recopt.config import Config
from recopt.errors import RecoptError
from recopt.methods import Part, PartKind
from recopt.recommend import Recommendation, format_recommendation, recommend
from recopt.selection import ColdRule, config_cold_rule

MARK = "✓"


def _rule(cfg: Config, beta: float, foldin: float | None = None) -> ColdRule:
    """A content/prior cold rule at `beta` (with the fold-in hybrid at `foldin` first, when given)."""
    base = Part(PartKind.COLD, beta, cfg.rerank.cold_prior)
    return ColdRule((Part(PartKind.FOLDIN, foldin), base) if foldin is not None else (base,))


def _rec(cfg: Config, user: int, alpha: float, k: int | None = None, beta: float = 0.0, **kw) -> Recommendation:
    return recommend(cfg, user, alpha, _rule(cfg, beta), k, **kw)


def _pool_users(cfg: Config, fold: str = "test") -> pl.DataFrame:
    return open_artifact(cfg.paths, "candidates", fold, reader="test").parquet("users")


def _user(cfg: Config, has_cf: bool, fold: str = "test") -> int:
    """A user of the fold with a pool of at least 20 items and a relevant held-out item."""
    users = _pool_users(cfg, fold).filter((pl.col("has_cf") == has_cf) & (pl.col("pool_size") >= 20)
                                          & (pl.col("n_relevant") > 0))
    assert users.height, f"the tiny preset has no such user (has_cf={has_cf})"
    return int(users["userId"][0])


def _split(cfg: Config, fold: str, name: str) -> pl.DataFrame:
    return open_artifact(cfg.paths, "split", fold, reader="test").parquet(name)


def _relevant(cfg: Config, user_id: int, fold: str = "test") -> set[int]:
    held = _split(cfg, fold, "heldout")
    return set(held.filter((pl.col("userId") == user_id) & (pl.col("rating") >= cfg.relevance_threshold))
               ["movieId"].to_list())


def _table_rows(text: str) -> list[tuple[int, int, bool]]:
    """(rank, movieId, marked) of every table line of a formatted recommendation."""
    out = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) >= 2 and tokens[0].isdigit() and tokens[1].isdigit():
            out.append((int(tokens[0]), int(tokens[1]), line.rstrip().endswith(MARK)))
    return out


# --------------------------------------------------------------------------- the list


@pytest.mark.parametrize("has_cf", [True, False])
@pytest.mark.parametrize("fold", ["test", "tune"])
def test_recommend_lists_ranked_unseen_items_with_their_scores(tiny_built: Config, has_cf: bool, fold: str) -> None:
    user = _user(tiny_built, has_cf, fold)
    rec = _rec(tiny_built, user, 0.5, 10, fold=fold)
    table = rec.table
    assert rec.fold == fold and rec.user_id == user and rec.has_cf is has_cf
    assert table["rank"].to_list() == list(range(1, 11))
    assert table["movieId"].n_unique() == 10
    for col in ("final", "hybrid"):
        values = table[col].to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all(), col
    # collab comes from the user's factor: fitted, or folded in for a cold user with train ratings
    cf = open_artifact(tiny_built.paths, "cf_load", fold, reader="test")
    index = int(np.searchsorted(cf.npy("user_ids"), user))
    has_factor = bool(cf.npy("user_has_cf")[index] or cf.npy("user_folded")[index])
    assert np.isnan(table["collab"].to_numpy()).all() == (not has_factor)
    assert (table["sources"].str.len_chars() > 0).all()
    seen = _split(tiny_built, fold, "train").filter(pl.col("userId") == user)["movieId"]
    assert not table["movieId"].is_in(seen.implode()).any()
    assert table["title"].null_count() == 0
    info = _split(tiny_built, fold, "users").filter(pl.col("userId") == user).row(0, named=True)
    assert (rec.slice, rec.n_train) == (info["slice"], info["n_train"])
    assert table["hit"].to_list() == [m in _relevant(tiny_built, user, fold) for m in table["movieId"].to_list()]


def test_users_without_a_cf_factor_carry_the_popular_source(tiny_built: Config) -> None:
    rec = _rec(tiny_built, _user(tiny_built, False), 0.5, 20)
    assert rec.table["sources"].str.contains("popular").any()
    warm = _rec(tiny_built, _user(tiny_built, True), 0.5, 20)
    assert not warm.table["sources"].str.contains("popular").any()


def _evaluate_list(cfg: Config, user_id: int, alpha: float, cold: ColdRule) -> np.ndarray:
    """What evaluate ranks for `user_id` on the test fold (movieIds, in order)."""
    from recopt.evaluate import build_shared, load_eval_data
    from recopt.methods import Task, evaluate_batch
    from recopt.pools import read_pool
    from recopt.recommend import serving_part

    data = load_eval_data(cfg, "test", reader="test")
    parts = (Part(PartKind.ALPHA, alpha), *cold.parts)
    shared, _ = build_shared(cfg, data, parts)
    row = data.users.filter(pl.col("userId") == user_id)
    batch, uidx = int(row["batch"][0]), int(row["user"][0])
    group = data.pool_users.filter(pl.col("batch") == batch)
    users = np.sort(data.users.filter(pl.col("batch") == batch)["user"].to_numpy().astype(np.int64))
    pool = read_pool(data.candidates, batch, group["pool_size"].to_numpy(), group["user"].to_numpy())
    keep = np.isin(pool["user"], users)
    out = evaluate_batch(shared, Task(batch=batch, users=users, pool={k: v[keep] for k, v in pool.items()},
                                      parts=shared.parts))
    got = out[serving_part(alpha, cold, bool(shared.user_has_cf[uidx]), bool(shared.user_folded[uidx]))]
    lists = got.lists[int(np.flatnonzero(got.users == uidx)[0])]
    return data.items["movieId"].to_numpy()[lists[lists >= 0]]


@pytest.mark.parametrize("has_cf", [True, False])
def test_recommend_is_the_evaluate_ranking(tiny_built: Config, has_cf: bool) -> None:
    user = _user(tiny_built, has_cf)
    for alpha, cold in ((0.5, _rule(tiny_built, 0.25)), (0.8, _rule(tiny_built, 1.0)),
                        (0.3, _rule(tiny_built, 0.5, foldin=0.35))):
        expected = _evaluate_list(tiny_built, user, alpha, cold)
        got = recommend(tiny_built, user, alpha, cold).table["movieId"].to_numpy()
        np.testing.assert_array_equal(got, expected)


def test_alpha_moves_a_warm_list_and_the_cold_rule_moves_a_cold_list(tiny_built: Config) -> None:
    warm, cold = _user(tiny_built, True), _user(tiny_built, False)

    def items(user: int, alpha: float, beta: float, foldin: float | None = None) -> list[int]:
        return recommend(tiny_built, user, alpha, _rule(tiny_built, beta, foldin), 20).table["movieId"].to_list()

    assert items(warm, 0.0, 0.0) != items(warm, 1.0, 0.0)
    assert items(warm, 0.3, 0.0) == items(warm, 0.3, 1.0) == items(warm, 0.3, 0.0, 0.9)  # the cold rule is not theirs
    assert items(cold, 0.0, 0.0) != items(cold, 0.0, 1.0)
    assert items(cold, 0.0, 0.5) == items(cold, 1.0, 0.5)   # alpha is for users with a factor from the fit
    assert items(cold, 0.0, 0.5, 0.0) != items(cold, 0.0, 0.5, 1.0)  # the fold-in hybrid's own alpha


def test_recommend_names_a_user_without_a_pool_and_a_bad_alpha(tiny_built: Config) -> None:
    with pytest.raises(RecoptError, match="--user: userId 999999 has no candidate pool"):
        _rec(tiny_built, 999_999, 0.5)
    with pytest.raises(RecoptError, match=r"--alpha: 1.5 must be in \[0, 1\]"):
        _rec(tiny_built, _user(tiny_built, True), 1.5)


# --------------------------------------------------------------------------- the printed list


def _formatted(cfg: Config, has_cf: bool, show_hits: bool) -> tuple[Recommendation, str]:
    rec = _rec(cfg, _user(cfg, has_cf), 0.7, 20, beta=0.25)
    return rec, format_recommendation(rec, show_hits)


def test_formatted_output_fits_in_120_columns(tiny_built: Config) -> None:
    too_wide = set()
    for has_cf in (True, False):
        for show_hits in (True, False):
            _, text = _formatted(tiny_built, has_cf, show_hits)
            too_wide |= {line for line in text.splitlines() if len(line) > 120}
    assert not too_wide, f"{len(too_wide)} line(s) wider than 120 columns: {sorted(too_wide)}"


@pytest.mark.parametrize("has_cf", [True, False])
def test_formatted_output_has_the_header_the_mmr_note_and_every_row(tiny_built: Config, has_cf: bool) -> None:
    rec, text = _formatted(tiny_built, has_cf, False)
    header = text.splitlines()[0]
    assert f"user {rec.user_id} " in header
    assert f"slice {rec.slice}" in header
    assert f"{rec.n_train} train ratings" in header
    if has_cf:
        assert "has a CF factor" in header and "alpha=0.7" in header
    else:
        assert "no CF factor" in header and "cold start, cold: beta=0.25" in header
    assert any("MMR" in line for line in text.splitlines()[1:3])
    rows = _table_rows(text)
    assert [(r, m) for r, m, _ in rows] == list(zip(range(1, 21), rec.table["movieId"].to_list()))
    assert MARK not in text  # without --hits nothing is marked


def test_hits_mark_exactly_the_relevant_held_out_items(tiny_built: Config) -> None:
    # a user whose list holds both relevant and other items, so a wrong mark shows
    users = _pool_users(tiny_built).filter((pl.col("n_relevant") > 0) & (pl.col("pool_size") >= 20))
    for user in users["userId"].to_list():
        rec = _rec(tiny_built, user, 0.5, 20)
        if 0 < rec.n_hits < len(rec.table):
            break
    else:
        pytest.fail("no tiny user has a list with both hits and misses")
    relevant = _relevant(tiny_built, user)
    text = format_recommendation(rec, True)
    rows = _table_rows(text)
    assert [marked for _, _, marked in rows] == [m in relevant for _, m, _ in rows]
    n_marked = sum(marked for _, _, marked in rows)
    assert n_marked == rec.n_hits > 0
    assert f"({n_marked} in this list)" in text.splitlines()[-1]


def test_missing_scores_print_as_n_a(tiny_built: Config) -> None:
    rec, _ = _formatted(tiny_built, False, False)
    table = rec.table.with_columns(collab=pl.lit(float("nan")))  # a user without any factor has no collab
    text = format_recommendation(dataclasses.replace(rec, table=table), False)
    rows = [line for line in text.splitlines() if line[:4].strip().isdigit()]
    assert rows and all("n/a" in line for line in rows)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def params(tiny_built: Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_built.to_dict()))
    return str(path)


def test_cli_prints_the_formatted_list(tiny_built: Config, params: str, capsys) -> None:
    user = _user(tiny_built, True)
    assert main(["recommend", "--user", str(user), "--alpha", "0.3", "--k", "7", "--hits", "--params", params]) == 0
    out = capsys.readouterr().out
    expected = format_recommendation(recommend(tiny_built, user, 0.3, config_cold_rule(tiny_built), 7), True)
    assert out.endswith(expected + "\n")


def test_cli_without_a_tune_evaluation_warns_first_and_uses_the_config(tiny_built: Config, params: str,
                                                                       capsys) -> None:
    # no tune evaluation exists: the first line says so, then the alpha and cold rule of params.yaml are used
    user = _user(tiny_built, True, "tune")
    assert main(["recommend", "--user", str(user), "--params", params]) == 0
    first, rest = capsys.readouterr().out.split("\n", 1)
    assert first.startswith(f"warning: not the choices made on validation -- alpha={tiny_built.alpha!r} and the "
                            "config's cold rule") and "evaluate@tune" in first and "does not exist" in first
    assert rest == format_recommendation(recommend(tiny_built, user, tiny_built.alpha, config_cold_rule(tiny_built),
                                                   20), False) + "\n"
    assert main(["recommend", "--user", str(user), "--fold", "tune", "--params", params]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == format_recommendation(
        recommend(tiny_built, user, tiny_built.alpha, config_cold_rule(tiny_built), 20, fold="tune"), False) + "\n"


def test_cli_strict_refuses_without_the_choices_made_on_validation(tiny_built: Config, params: str, capsys) -> None:
    assert main(["recommend", "--user", str(_user(tiny_built, True)), "--strict", "--params", params]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "evaluate@tune" in captured.err and "does not exist" in captured.err


def test_cli_reports_errors_with_exit_code_2(tiny_built: Config, params: str, tmp_path, capsys) -> None:
    assert main(["recommend", "--user", "1", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "python -m stages.compose" in capsys.readouterr().err
    assert main(["recommend", "--user", "999999", "--params", params]) == 2
    assert "--user: userId 999999 has no candidate pool" in capsys.readouterr().err
    assert main(["recommend", "--user", str(_user(tiny_built, True)), "--alpha", "2", "--params", params]) == 2
    assert "--alpha: 2.0 must be in [0, 1]" in capsys.readouterr().err
