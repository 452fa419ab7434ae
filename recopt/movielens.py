"""Read (and download) MovieLens releases into the canonical frames of `recopt.schemas`.

Layouts, detected by which files exist in the folder:

* CSV (ml-latest-small, ml-25m, ml-32m): ratings.csv, movies.csv (genres split
  on '|'), optional tags.csv. links.csv is ignored.
* `::` (ml-1m, ml-10m): ratings.dat, movies.dat, optional tags.dat, no header,
  UTF-8 or (as in ml-1m) latin-1.
* Either layout may add providers.csv (movieId,provider) and
  user_providers.csv (userId,provider).

Every problem in every file (missing files or columns, values that are not
numbers, ratings outside [0.5, 5], nulls, empty files) is collected into ONE
`DataError`. Otherwise these rules apply; each is counted in `counts`, none is
silent, and no row is dropped:

1. Duplicate (userId, movieId) ratings: the most recent by timestamp is kept
   (ties: the later row in the file); the replaced rows are returned in
   `superseded` and counted as `duplicate_ratings`.
2. Movies rated (or tagged) but absent from the movie file are added to the
   catalog with title "", year null and genres [], counted as
   `movies_added_from_ratings` (then `movies_added_from_tags`).
3. `year` is the title's trailing "(YYYY)" (a range "(YYYY-YYYY)" gives its
   first year; trailing spaces are tolerated); no such suffix gives null.
4. genres "(no genres listed)" becomes the empty list.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from tqdm import tqdm

from recopt.schemas import (
    MOVIES, PROVIDERS, RATINGS, TAGS, USER_PROVIDERS,
    Column, DataError, Problem, Schema, cast_frame, check, empty_frame, validate_frame,
)

_MOVIE_FILE = Schema("movies", {"movieId": Column(pl.Int32), "title": Column(pl.String),
                                 "genres": Column(pl.String)}, key=("movieId",), allow_empty=False)
# name -> (schema of the file, required, follows the layout's extension; else always .csv)
_FILES: dict[str, tuple[Schema, bool, bool]] = {
    "ratings": (RATINGS, True, True),
    "movies": (_MOVIE_FILE, True, True),
    "tags": (TAGS, False, True),
    "providers": (PROVIDERS, False, False),
    "user_providers": (USER_PROVIDERS, False, False),
}
_NO_GENRES = "(no genres listed)"
# URLError/TimeoutError/connection resets are OSErrors; a cut body is an HTTPException.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_YEAR = r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$"


@dataclass(frozen=True)
class MovieLensData:
    """A release in canonical frames; `superseded` holds replaced duplicate ratings."""

    ratings: pl.DataFrame
    movies: pl.DataFrame
    tags: pl.DataFrame
    providers: pl.DataFrame | None
    user_providers: pl.DataFrame | None
    counts: dict[str, int]
    superseded: pl.DataFrame


def read_movielens(folder: Path) -> MovieLensData:
    """Read, validate and normalise the MovieLens release in `folder`.

    Raises `DataError` listing every problem in every file. See the module
    docstring for the rules applied to valid data.
    """
    folder = Path(folder)
    layout = _detect_layout(folder)
    frames: dict[str, pl.DataFrame] = {}
    problems: list[Problem] = []
    for name, (schema, required, layout_ext) in _FILES.items():
        path = folder / f"{name}.{layout if layout_ext else 'csv'}"
        if not path.is_file():
            if required:
                problems.append(Problem(
                    str(path), None, "required file is missing",
                    f"point to a MovieLens folder containing {_expected(layout)}"))
            continue
        df, found = _read_file(path, schema, layout if layout_ext else "csv")
        problems += found
        if df is not None:
            frames[name] = df
    check(problems)

    ratings, superseded = _resolve_duplicates(frames["ratings"])
    tags = frames.get("tags", empty_frame(TAGS))
    movies = _parse_movies(frames["movies"])
    movies, from_ratings = _add_missing_movies(movies, ratings["movieId"])
    movies, from_tags = _add_missing_movies(movies, tags["movieId"])
    counts = {
        "n_ratings": ratings.height,
        "n_users": ratings["userId"].n_unique(),
        "n_movies": movies.height,
        "n_tags": tags.height,
        "duplicate_ratings": superseded.height,
        "movies_added_from_ratings": from_ratings,
        "movies_added_from_tags": from_tags,
    }
    return MovieLensData(ratings, movies, tags, frames.get("providers"),
                         frames.get("user_providers"), counts, superseded)


def _detect_layout(folder: Path) -> str:
    if (folder / "ratings.csv").is_file() or (folder / "movies.csv").is_file():
        return "csv"
    if (folder / "ratings.dat").is_file() or (folder / "movies.dat").is_file():
        return "dat"
    inner = sorted(folder.glob("*/ratings.*")) if folder.is_dir() else []
    fix = (f"point to {inner[0].parent}" if inner else
           f"point to a MovieLens folder containing {_expected('csv')} or {_expected('dat')}")
    what = "is not a folder" if not folder.is_dir() else "contains no MovieLens ratings file"
    raise DataError([Problem(str(folder), None, what, fix)])


def _expected(layout: str) -> str:
    return f"ratings.{layout} and movies.{layout} (optional tags.{layout})"


def _read_file(path: Path, schema: Schema, layout: str) -> tuple[pl.DataFrame | None, list[Problem]]:
    """Parse typed in one pass; on a parse error re-read as text so validation
    can name every bad value, not just polars' first one."""
    file = str(path)
    names = list(schema.columns)
    try:
        if layout == "csv":
            source: Path | io.BytesIO = path
            header = pl.read_csv(path, n_rows=0, infer_schema=False).columns
            options: dict = {"infer_schema": False}
        else:
            source = io.BytesIO(_dat_to_csv(path.read_bytes()))
            header = names
            options = {"infer_schema": False, "has_header": False, "new_columns": names,
                       "separator": "\x1f", "quote_char": None}
        typed = {c: schema.columns[c].dtype for c in header if c in schema.columns}
        try:
            df = pl.read_csv(source, schema_overrides=typed, **options)
        except pl.exceptions.ComputeError:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            df = pl.read_csv(source, **options)
    except pl.exceptions.NoDataError:
        return None, [Problem(file, None, "file is empty",
                              f"write the {schema.name} rows (header line '{','.join(names)}')"
                              if layout == "csv" else f"write the {schema.name} rows")]
    except pl.exceptions.PolarsError as err:
        first = str(err).splitlines()[0]
        sep = "," if layout == "csv" else "::"
        return None, [Problem(file, None, f"cannot be parsed: {first}",
                              f"make every line hold exactly the fields {sep.join(names)}")]
    problems = validate_frame(df, schema, file, first_line=2 if layout == "csv" else 1)
    return (None if problems else cast_frame(df, schema)), problems


def _dat_to_csv(raw: bytes) -> bytes:
    """'::'-separated bytes -> UTF-8 with a one-byte separator polars accepts."""
    if not raw.isascii():
        try:
            raw = raw.decode("utf-8").encode("utf-8")
        except UnicodeDecodeError:
            raw = raw.decode("latin-1").encode("utf-8")  # ml-1m
    return raw.replace(b"::", b"\x1f")


def _resolve_duplicates(ratings: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the latest rating per (userId, movieId); return (kept, superseded)."""
    # One UInt64 per pair, sorted: on 32M rows this is ~10x faster than hashing
    # the pairs (is_duplicated / group_by), which thrashes the cache.
    offset = 2**31
    key = ((ratings["userId"].cast(pl.Int64) + offset).cast(pl.UInt64) * 2**32
           + (ratings["movieId"].cast(pl.Int64) + offset).cast(pl.UInt64))
    ordered = key.sort()
    repeated = ordered.filter((ordered == ordered.shift(1)).fill_null(False)).unique()
    if repeated.len() == 0:
        return ratings, empty_frame(RATINGS)
    groups = (ratings.with_row_index("_row").filter(key.is_in(repeated.implode()))
              .sort("userId", "movieId", "timestamp", "_row"))
    latest = pl.struct("userId", "movieId").is_last_distinct()
    replaced = groups.filter(~latest).sort("_row")
    kept = ratings.filter(~pl.int_range(pl.len()).is_in(replaced["_row"].implode()))
    return kept, replaced.drop("_row")


def _parse_movies(movies: pl.DataFrame) -> pl.DataFrame:
    genre = pl.element()
    return cast_frame(movies.with_columns(
        year=pl.col("title").str.extract(_YEAR, 1).cast(pl.Int16),
        genres=pl.col("genres").str.split("|").list.eval(
            genre.filter((genre != _NO_GENRES) & (genre != ""))),
    ), MOVIES)


def _add_missing_movies(movies: pl.DataFrame, ids: pl.Series) -> tuple[pl.DataFrame, int]:
    missing = (ids.unique().to_frame("movieId")
               .join(movies.select("movieId"), on="movieId", how="anti").sort("movieId"))
    if missing.height == 0:
        return movies, 0
    added = missing.with_columns(
        title=pl.lit("", pl.String), year=pl.lit(None, pl.Int16),
        genres=pl.Series([[]] * missing.height, dtype=pl.List(pl.String)))
    return pl.concat([movies, cast_frame(added, MOVIES)]), missing.height


def download_movielens(
    release: str, dest: Path, url: str, md5: str | None = None, timeout: float = 60
) -> Path:
    """Download, verify and extract `url` (a zip) to `dest/<release>`; return it.

    The checksum is `md5` or, when None, read from `url + ".md5"`. Work happens
    in a temporary folder next to `dest` and is renamed into place only when
    complete, so a failure (network, checksum, corrupt zip) leaves nothing in
    `dest`. A folder already marked `.complete` is returned without downloading.
    """
    if not re.fullmatch(r"[\w.-]+", release):
        raise ValueError(f"release must be a plain name like 'ml-latest-small', got {release!r}")
    dest = Path(dest)
    target = dest / release
    if (target / ".complete").is_file():
        return target
    if target.exists():
        check([Problem(str(target), None, "exists but is not a complete download",
                       f"delete {target} and download again")])
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{release}-", dir=dest.parent))
    try:
        expected = (md5 or _fetch_md5(release, url, timeout)).lower()
        archive = work / f"{release}.zip"
        actual = _fetch(release, url, archive, timeout)
        if actual != expected:
            check([Problem(url, None, f"checksum mismatch for release '{release}': expected "
                           f"md5 {expected}, got {actual}",
                           "download again (the transfer may have been cut); if it persists, "
                           "check the url and the md5")])
        root = _extract(release, url, archive, work / "extracted")
        (root / ".complete").write_text(f"{url}\nmd5 {actual}\n")
        os.replace(root, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _fetch_md5(release: str, url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url + ".md5", timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except _NETWORK_ERRORS as err:
        raise DataError([Problem(
            url + ".md5", None, f"cannot fetch the checksum of '{release}': {err}",
            "check the network and the url, or pass md5= explicitly")]) from err
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if found is None:
        raise DataError([Problem(url + ".md5", None, f"no md5 checksum for '{release}' in {text[:80]!r}",
                                 "pass md5= explicitly")])
    return found.group(0)


def _fetch(release: str, url: str, archive: Path, timeout: float) -> str:
    """Stream `url` to `archive`; return its md5 hex digest."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=release,
                      disable=size is None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except _NETWORK_ERRORS as err:
        raise DataError([Problem(url, None, f"cannot download '{release}': {err}",
                                 "check the network and the url, then retry")]) from err
    return digest.hexdigest()


def _extract(release: str, url: str, archive: Path, into: Path) -> Path:
    """Extract `archive`; return the folder that holds the ratings file."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"bad CRC for {bad}")
            zf.extractall(into)
    except zipfile.BadZipFile as err:
        raise DataError([Problem(
            url, None, f"archive of '{release}' is corrupt: {err}",
            "download again; if it persists the published file or md5 is wrong")]) from err
    found = sorted(into.rglob("ratings.csv")) or sorted(into.rglob("ratings.dat"))
    if not found:
        check([Problem(url, None, f"archive of '{release}' has no ratings.csv or ratings.dat",
                       "use the zip of a MovieLens release")])
    return found[0].parent
