"""Tests for recopt.schemas: one test per problem kind, then all at once."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.errors import RecoptError
from recopt.schemas import (
    MOVIES, PROVIDERS, RATINGS, TAGS, USER_PROVIDERS,
    Column, DataError, Problem, Schema, cast_frame, check, empty_frame, validate_frame,
)

STRICT = Schema(
    "things",
    {
        "id": Column(pl.Int32),
        "score": Column(pl.Float32, min=0.0, max=1.0),
        "kind": Column(pl.String, nullable=True, allowed=frozenset({"a", "b"})),
    },
    key=("id",),
    strict=True,
    allow_empty=False,
)


def good_ratings() -> pl.DataFrame:
    return pl.DataFrame({
        "userId": [1, 1, 2], "movieId": [10, 20, 10],
        "rating": [4.0, 0.5, 5.0], "timestamp": [100, 200, 300],
    })


def test_canonical_schemas_have_the_contract_dtypes():
    assert dict(RATINGS.columns.items()).keys() == {"userId", "movieId", "rating", "timestamp"}
    assert [c.dtype for c in RATINGS.columns.values()] == [pl.Int32, pl.Int32, pl.Float32, pl.Int64]
    assert (RATINGS.columns["rating"].min, RATINGS.columns["rating"].max) == (0.5, 5.0)
    assert not any(c.nullable for c in RATINGS.columns.values())
    assert [c.dtype for c in MOVIES.columns.values()] == [pl.Int32, pl.String, pl.Int16, pl.List(pl.String)]
    assert MOVIES.key == ("movieId",) and MOVIES.columns["year"].nullable
    assert list(TAGS.columns) == ["userId", "movieId", "tag", "timestamp"]
    assert empty_frame(PROVIDERS).schema == pl.Schema({"movieId": pl.Int32, "provider": pl.String})
    assert empty_frame(USER_PROVIDERS).schema == pl.Schema({"userId": pl.Int32, "provider": pl.String})


def test_valid_frame_has_no_problems_and_casts_to_canonical_dtypes():
    df = good_ratings().select("timestamp", "rating", "movieId", "userId")  # order must not matter
    assert validate_frame(df, RATINGS, "ratings.csv") == []
    out = cast_frame(df, RATINGS)
    assert out.schema == empty_frame(RATINGS).schema
    assert out["rating"].to_list() == [4.0, 0.5, 5.0]


def test_problem_renders_file_column_what_and_fix():
    p = Problem("r.csv", "userId", "is missing", "add it")
    assert str(p) == "r.csv: column 'userId': is missing — fix: add it"
    assert str(Problem("r.csv", None, "is empty", "fill it")) == "r.csv: is empty — fix: fill it"


def test_check_is_silent_without_problems_and_raises_all_of_them():
    check([])
    problems = [Problem("a", "x", "bad", "fix x"), Problem("b", None, "worse", "fix b")]
    with pytest.raises(DataError) as info:
        check(problems)
    assert info.value.problems == problems
    assert str(info.value).splitlines() == [str(p) for p in problems]
    assert isinstance(info.value, RecoptError)  # printed as one clean message by the stage entry points


def test_missing_column_suggests_the_rename():
    df = good_ratings().rename({"userId": "user_id"})
    (p,) = validate_frame(df, RATINGS, "ratings.csv")
    assert p.column == "userId" and "found 'user_id'" in p.what
    assert p.fix == "rename column 'user_id' to 'userId'"


def test_missing_column_without_a_lookalike_asks_to_add_it():
    (p,) = validate_frame(good_ratings().drop("timestamp"), RATINGS, "ratings.csv")
    assert p.column == "timestamp" and "missing" in p.what
    assert "add column 'timestamp'" in p.fix and "userId,movieId,rating,timestamp" in p.fix


def test_headerless_file_is_recognised():
    df = pl.DataFrame({"1": [2], "10": [3], "4.0": [4.0], "964982703": [5]})
    problems = validate_frame(df, RATINGS, "ratings.csv")
    assert len(problems) == 4
    assert all("looks like data" in p.what for p in problems)
    assert problems[0].fix == "add the header line 'userId,movieId,rating,timestamp'"


def test_extra_columns_are_a_problem_only_when_strict():
    df = good_ratings().with_columns(comment=pl.lit("x"))
    assert validate_frame(df, RATINGS, "ratings.csv") == []
    strict = pl.DataFrame({"id": [1], "score": [0.5], "kind": ["a"], "note": ["x"]})
    (p,) = validate_frame(strict, STRICT, "things.csv")
    assert p.column == "note" and p.fix == "remove column 'note'"


def test_misnamed_column_is_not_also_reported_as_extra():
    df = pl.DataFrame({"ID": [1], "score": [0.5], "kind": ["a"]})
    (p,) = validate_frame(df, STRICT, "things.csv")
    assert p.fix == "rename column 'ID' to 'id'"


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (["1", "x", "3"], "'x' (line 2)"),            # not a number
        ([1.0, 1.5, 2.0], "1.5 (line 2)"),            # truncation is a loss
        ([1, 3_000_000_000, 2], "3000000000 (line 2)"),  # overflow
    ],
)
def test_values_that_cannot_be_cast_losslessly_are_listed(values, shown):
    df = good_ratings().with_columns(userId=pl.Series(values))
    (p,) = validate_frame(df, RATINGS, "ratings.csv")
    assert p.column == "userId" and p.what.startswith("1 value(s) cannot be read as Int32")
    assert shown in p.what


def test_lossless_casts_are_accepted():
    df = pl.DataFrame({
        "userId": ["1", "2"], "movieId": [10.0, 20.0],
        "rating": [4.5, 3.0], "timestamp": pl.Series([1, 2], dtype=pl.Int32),
    })
    assert validate_frame(df, RATINGS, "ratings.csv") == []
    assert cast_frame(df, RATINGS)["userId"].to_list() == [1, 2]


def test_incompatible_dtype_is_reported():
    df = pl.DataFrame({"movieId": [1], "title": ["A (1999)"], "year": [1999], "genres": ["A|B"]})
    (p,) = validate_frame(df, MOVIES, "movies.parquet")
    assert p.column == "genres" and "has dtype String, expected List(String)" in p.what


def test_nulls_are_counted_with_their_lines():
    df = good_ratings().with_columns(movieId=pl.Series([None, 20, None]))
    (p,) = validate_frame(df, RATINGS, "ratings.csv", first_line=2)
    assert p.column == "movieId" and p.what == "2 missing value(s) at line(s) 2, 4"


def test_nullable_columns_accept_nulls():
    df = pl.DataFrame({"id": [1, 2], "score": [0.1, 0.2], "kind": ["a", None]})
    assert validate_frame(df, STRICT, "things.csv") == []


def test_out_of_range_values_are_counted_with_an_example():
    df = good_ratings().with_columns(rating=pl.Series([7.0, 0.0, 4.0]))
    (p,) = validate_frame(df, RATINGS, "ratings.csv", first_line=2)
    assert p.column == "rating"
    assert p.what == "2 value(s) outside [0.5, 5.0], e.g. 7.0 (line 2), 0.0 (line 3)"
    assert p.fix == "keep 'rating' within [0.5, 5.0]"


def test_nan_is_out_of_range():
    df = good_ratings().with_columns(rating=pl.Series([float("nan"), 1.0, 2.0]))
    (p,) = validate_frame(df, RATINGS, "ratings.csv")
    assert p.what.startswith("1 value(s) outside")


def test_disallowed_values_are_reported():
    df = pl.DataFrame({"id": [1, 2], "score": [0.1, 0.2], "kind": ["a", "z"]})
    (p,) = validate_frame(df, STRICT, "things.csv")
    assert p.column == "kind" and "'z' (line 2)" in p.what and "['a', 'b']" in p.fix


def test_duplicate_keys_are_reported():
    df = pl.DataFrame({"movieId": [1, 2, 1], "title": ["a", "b", "c"],
                       "year": [None, None, None], "genres": [[], [], []]},
                      schema_overrides={"year": pl.Int16, "genres": pl.List(pl.String)})
    (p,) = validate_frame(df, MOVIES, "movies.csv", first_line=2)
    assert p.column == "movieId"
    assert p.what == "2 row(s) share a key (movieId) with another row, e.g. movieId=1 at lines 2, 4"


def test_composite_key_duplicates():
    df = pl.DataFrame({"movieId": [1, 1, 2], "provider": ["x", "x", "x"]})
    (p,) = validate_frame(df, PROVIDERS, "providers.csv")
    assert p.column is None and "(movieId, provider)" in p.what


def test_empty_frame_is_a_problem_where_the_schema_needs_rows():
    (p,) = validate_frame(empty_frame(RATINGS), RATINGS, "ratings.csv")
    assert p.column is None and p.what == "has no rows"
    assert validate_frame(empty_frame(TAGS), TAGS, "tags.csv") == []


def test_every_problem_is_reported_in_one_error():
    df = pl.DataFrame({
        "user_id": [1, 2, 3],
        "movieId": [1, None, 3],
        "rating": [7.0, 4.0, 3.0],
        "timestamp": ["1", "2", "soon"],
    })
    with pytest.raises(DataError) as info:
        check(validate_frame(df, RATINGS, "ratings.csv", first_line=2))
    columns = [p.column for p in info.value.problems]
    assert columns == ["userId", "movieId", "rating", "timestamp"]
    text = str(info.value)
    assert "rename column 'user_id' to 'userId'" in text
    assert "1 missing value(s) at line(s) 3" in text
    assert "7.0 (line 2)" in text
    assert "'soon' (line 4)" in text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=-10, max_value=10, allow_nan=False, width=32),
                min_size=1, max_size=50))
def test_out_of_range_count_matches_the_rule(ratings):
    n = len(ratings)
    df = pl.DataFrame({"userId": range(n), "movieId": range(n), "rating": ratings,
                       "timestamp": range(n)}, schema_overrides={"rating": pl.Float32})
    expected = sum(not 0.5 <= r <= 5.0 for r in ratings)
    problems = validate_frame(df, RATINGS, "ratings.csv")
    if expected == 0:
        assert problems == []
    else:
        (p,) = problems
        assert p.what.startswith(f"{expected} value(s) outside [0.5, 5.0]")
