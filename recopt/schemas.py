"""Frame schemas as plain data, and validation that reports every problem at once.

A `Schema` maps column names to a `Column` rule (polars dtype, nullable, range,
allowed values) plus an optional key and a strictness flag. `validate_frame`
never stops at the first problem: it returns one `Problem` per (file, column,
kind) so a user fixes a file in one pass; `check` turns them into one
`DataError`. `cast_frame` then yields the canonical frame.

Line numbers in messages are `row index + first_line`: pass `first_line=2` for
a CSV with a header line so the numbers match what an editor shows. A reader
that skipped lines passes `lines` instead: the line number of every row.
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from recopt.errors import RecoptError

N_EXAMPLES = 5  # values or lines quoted per problem


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is, what it is, how to fix it."""

    file: str
    column: str | None
    what: str
    fix: str

    def __str__(self) -> str:
        where = f"column '{self.column}': " if self.column is not None else ""
        return f"{self.file}: {where}{self.what} — fix: {self.fix}"


class DataError(RecoptError):
    """Every problem found in the inputs, one line each."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Column:
    """Rule for one column; `min`/`max` are inclusive, `allowed` a closed set."""

    dtype: pl.DataType | type[pl.DataType]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: frozenset[object] | None = None


@dataclass(frozen=True)
class Schema:
    """Columns in canonical order; `key` columns must be unique together."""

    name: str
    columns: Mapping[str, Column]
    key: tuple[str, ...] = ()
    strict: bool = False  # extra columns are a problem only when strict
    allow_empty: bool = True


RATINGS = Schema(
    "ratings",
    {
        "userId": Column(pl.Int32),
        "movieId": Column(pl.Int32),
        "rating": Column(pl.Float32, min=0.5, max=5.0),
        "timestamp": Column(pl.Int64),
    },
    allow_empty=False,
)
MOVIES = Schema(
    "movies",
    {
        "movieId": Column(pl.Int32),
        "title": Column(pl.String),
        "year": Column(pl.Int16, nullable=True),
        "genres": Column(pl.List(pl.String)),
    },
    key=("movieId",),
    allow_empty=False,
)
# A tag's text may be missing in real releases; the ids and the time may not.
TAGS = Schema(
    "tags",
    {
        "userId": Column(pl.Int32),
        "movieId": Column(pl.Int32),
        "tag": Column(pl.String, nullable=True),
        "timestamp": Column(pl.Int64),
    },
)
PROVIDERS = Schema(
    "providers",
    {"movieId": Column(pl.Int32), "provider": Column(pl.String)},
    key=("movieId", "provider"),
)
USER_PROVIDERS = Schema(
    "user_providers",
    {"userId": Column(pl.Int32), "provider": Column(pl.String)},
    key=("userId", "provider"),
)


def check(problems: Sequence[Problem]) -> None:
    """Raise one `DataError` listing all `problems`; do nothing when empty."""
    if problems:
        raise DataError(problems)


def empty_frame(schema: Schema) -> pl.DataFrame:
    """A zero-row frame with the schema's columns and dtypes."""
    return pl.DataFrame(schema={n: c.dtype for n, c in schema.columns.items()})


def cast_frame(df: pl.DataFrame, schema: Schema) -> pl.DataFrame:
    """Select the schema's columns in canonical order, cast to canonical dtypes.

    Call after `validate_frame` returned no problems: casts are strict, so an
    unvalidated frame raises polars' own error. Extra columns are dropped.
    """
    return df.select(pl.col(n).cast(c.dtype) for n, c in schema.columns.items())


def validate_frame(
    df: pl.DataFrame, schema: Schema, file: str, first_line: int = 1,
    lines: pl.Series | None = None,
) -> list[Problem]:
    """All problems of `df` against `schema`; an empty list means valid.

    Kinds: empty frame, missing columns (with a rename hint), extra columns
    (strict schemas only), values that cannot be cast losslessly, nulls,
    out-of-range or disallowed values, duplicate keys. Row i is reported as
    line `lines[i]` when `lines` is given, else as line `i + first_line`.
    """
    at = _LineNumbers(first_line, lines)
    problems: list[Problem] = []
    present = set(df.columns)
    extra = [c for c in df.columns if c not in schema.columns]
    hinted: set[str] = set()
    if df.height == 0 and not schema.allow_empty:
        problems.append(Problem(file, None, "has no rows",
                                f"provide at least one {schema.name} row"))
    for name, rule in schema.columns.items():
        if name not in present:
            problem, used = _missing_column(df.columns, extra, name, rule, schema, file)
            problems.append(problem)
            hinted.update(used)
    if schema.strict:
        problems += [
            Problem(file, c, "is not part of the schema", f"remove column '{c}'")
            for c in extra if c not in hinted
        ]
    for name, rule in schema.columns.items():
        if name in present:
            problems += _column_problems(df[name], rule, file, at)
    if schema.key and all(k in present for k in schema.key):
        problems += _key_problems(df, schema.key, file, at)
    return problems


def _missing_column(
    columns: list[str], extra: list[str], name: str, rule: Column, schema: Schema, file: str
) -> tuple[Problem, list[str]]:
    what = f"is missing (expected {rule.dtype})"
    match = [c for c in extra if _normalise(c) == _normalise(name)]
    match = match or difflib.get_close_matches(name, extra, n=1, cutoff=0.75)
    if match:
        return Problem(file, name, what + f"; found '{match[0]}'",
                       f"rename column '{match[0]}' to '{name}'"), match[:1]
    header = ",".join(schema.columns)
    if columns and all(re.fullmatch(r"[-+.\d\s]*", c) for c in columns):
        return Problem(file, name, what + "; the first line looks like data, not a header",
                       f"add the header line '{header}'"), []
    return Problem(file, name, what, f"add column '{name}' (header: '{header}')"), []


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _column_problems(s: pl.Series, rule: Column, file: str, at: _LineNumbers) -> list[Problem]:
    name = s.name
    problems: list[Problem] = []
    values = s
    if s.dtype != rule.dtype and s.dtype != pl.Null:
        try:
            values = s.cast(rule.dtype, strict=False)
        except pl.exceptions.PolarsError:
            return [Problem(file, name, f"has dtype {s.dtype}, expected {rule.dtype}",
                            f"store column '{name}' as {rule.dtype}")]
        lost = s.is_not_null() & values.is_null()
        if s.dtype.is_numeric() and rule.dtype.is_numeric():
            # Float -> Int truncates silently; a round trip exposes it.
            if rule.dtype.is_float() and s.dtype.is_float():
                # Narrower floats only lose precision; overflow to inf is a loss.
                lost = lost | (s.is_finite() & values.is_infinite()).fill_null(False)
            else:
                back = values.cast(s.dtype, strict=False)
                lost = lost | (back != s).fill_null(False)
        if lost.any():
            problems.append(Problem(
                file, name,
                f"{lost.sum()} value(s) cannot be read as {rule.dtype}, e.g. "
                f"{at.examples(s, lost)}",
                f"make every value of '{name}' a valid {rule.dtype}"))
        values = values.set(lost, None) if lost.any() else values
    if not rule.nullable and s.null_count():
        null = s.is_null()
        problems.append(Problem(
            file, name, f"{s.null_count()} missing value(s) at line(s) {at.lines(null)}",
            f"fill in '{name}' on those lines or remove the lines"))
    if rule.min is not None or rule.max is not None:
        outside = [values < rule.min] if rule.min is not None else []
        outside += [values > rule.max] if rule.max is not None else []
        outside += [values.is_nan()] if values.dtype.is_float() else []
        bad = functools.reduce(operator.or_, outside).fill_null(False)
        if bad.any():
            problems.append(Problem(
                file, name,
                f"{bad.sum()} value(s) outside [{rule.min}, {rule.max}], e.g. "
                f"{at.examples(values, bad)}",
                f"keep '{name}' within [{rule.min}, {rule.max}]"))
    if rule.allowed is not None:
        bad = ~values.is_in(list(rule.allowed)).fill_null(True)
        if bad.any():
            problems.append(Problem(
                file, name,
                f"{bad.sum()} value(s) not allowed, e.g. {at.examples(values, bad)}",
                f"use one of {sorted(map(str, rule.allowed))}"))
    return problems


def _key_problems(df: pl.DataFrame, key: tuple[str, ...], file: str, at: _LineNumbers) -> list[Problem]:
    dup = df.select(pl.struct(key).is_duplicated()).to_series()
    if not dup.any():
        return []
    first = df.row(int(dup.arg_true()[0]), named=True)
    example = ", ".join(f"{k}={first[k]!r}" for k in key)
    same = pl.all_horizontal(pl.col(k) == first[k] for k in key)
    lines = at.lines(df.select(same.fill_null(False)).to_series())
    label = key[0] if len(key) == 1 else None
    return [Problem(
        file, label,
        f"{dup.sum()} row(s) share a key ({', '.join(key)}) with another row, "
        f"e.g. {example} at lines {lines}",
        f"keep one row per ({', '.join(key)})")]


@dataclass(frozen=True)
class _LineNumbers:
    """Row index -> line number: `lines[i]` when given, else `i + first_line`."""

    first_line: int = 1
    numbers: pl.Series | None = None

    def of(self, i: int) -> int:
        return int(self.numbers[i]) if self.numbers is not None else i + self.first_line

    def lines(self, mask: pl.Series) -> str:
        idx = mask.arg_true()
        return first_few([self.of(int(i)) for i in idx[:N_EXAMPLES]], len(idx))

    def examples(self, values: pl.Series, mask: pl.Series) -> str:
        idx = mask.arg_true()[:N_EXAMPLES]
        return ", ".join(f"{values[int(i)]!r} (line {self.of(int(i))})" for i in idx)


def line_numbers(mask: pl.Series, first_line: int = 1, lines: pl.Series | None = None) -> str:
    """The first few line numbers where `mask` is true, e.g. "2, 5, 9, ..."; see `validate_frame`."""
    return _LineNumbers(first_line, lines).lines(mask)


def first_few(shown: Sequence[object], total: int) -> str:
    """`shown` (the first of `total` items) joined by ", ", ending in ", ..." when some are left out."""
    return ", ".join(map(str, shown)) + (", ..." if total > len(shown) else "")
