"""Read (and download) MovieLens releases into the canonical frames of `recopt.schemas`.

Layouts, detected by which files exist in the folder:

* CSV (ml-latest-small, ml-25m, ml-32m): ratings.csv, movies.csv (genres split
  on '|'), optional tags.csv. links.csv is ignored. UTF-8, ',' separated, a
  header line, '"' quotes.
* `::` (ml-1m, ml-10m): ratings.dat, movies.dat, optional tags.dat, no header,
  no quotes.
* ml-100k: u.data (userId, movieId, rating, timestamp; TAB separated) and
  u.item ('|' separated: movieId, title, release date, video release date, IMDb
  URL, then one 0/1 flag per genre of u.genre, in its documented order; the
  flag "unknown" means no genre). No header, no quotes, no tags.
* The headerless files are UTF-8, except that one that is not valid UTF-8 is
  decoded as latin-1, counted in files as `latin1_files`: ml-1m and ml-100k are
  published in latin-1. CSV files get no such fallback (a wrong guess would
  garble titles silently); they must be UTF-8.
* Either layout may add providers.csv (movieId,provider) and
  user_providers.csv (userId,provider).

Every problem in every file is collected into ONE `DataError` naming the
file, the column, what is wrong (with line numbers as an editor shows them,
the header being line 1) and the fix:

* missing files or columns, values that are not numbers, ratings outside
  [0.5, 5] (saying so when they look like a 0-10 scale), nulls, empty files;
* a CSV file that is not UTF-8 (the line of the first bad byte, and an
  `iconv` fix) or is UTF-16; a compressed file under a text name (gzip, zip,
  bzip2, xz or zstd, told by its first bytes) -- any file may instead be named
  `<name>.gz` (e.g. ratings.csv.gz), which is read as it is;
* a CSV file whose first line is a row of values, not the header line;
* a header separated by ';', TAB or '|' instead of ',' (a `.dat` file
  without '::'), lines ending in a bare CR, a column named twice;
* lines with the wrong number of fields, a quote left open or misplaced (a
  value may not span lines: an open quote would swallow the lines after it),
  the header line repeated further down. The well-formed lines of the file are
  still validated, so one run lists every problem;
* timestamps that are negative, ≥ 1e14, or mix seconds and milliseconds in
  one file (rule 5).

Otherwise these rules apply; each is counted in `counts`, none is silent, and
no rating, movie or tag row is dropped:

1. Duplicate (userId, movieId) ratings: the most recent by timestamp is kept
   (ties: the later row in the file); the replaced rows are returned in
   `superseded` and counted as `duplicate_ratings`.
2. Movies rated (or tagged) but absent from the movie file are added to the
   catalog with title "", year null and genres [], counted as
   `movies_added_from_ratings` (then `movies_added_from_tags`).
3. `year` is the title's trailing "(YYYY)" (a range "(YYYY-YYYY)" gives its
   first year; trailing spaces are tolerated); no such suffix gives null. A
   year outside 1870 ≤ year ≤ current UTC year (at read time) + 5, such as
   "(9999)" or "(0001)", is unknown: null, counted as `implausible_years`.
4. genres "(no genres listed)" becomes the empty list.
5. Timestamps are unix seconds. Each file (ratings, tags) is judged on its
   own: a value v is seconds when 0 ≤ v < 1e11 (before year 5138; small
   values such as 0 are accepted as early dates) and milliseconds when
   1e11 ≤ v < 1e14 (1e11 ms is 1973-03-03). A file whose every value is
   milliseconds is converted to seconds (v // 1000), counted in rows as
   `ratings_timestamps_ms_converted` / `tags_timestamps_ms_converted`, so
   both files end up in seconds whichever unit each was written in.
6. A UTF-8 byte-order mark at the start of a file is dropped (the first
   column keeps its name), counted in files as `bom_files`.
7. Blank lines (empty, spaces only or separators only) hold no values and are
   skipped, counted as `blank_lines`; they still count in line numbers.
8. Spaces around a number are ignored: " 4.0 " is 4.0.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from tqdm import tqdm

from recopt.compression import locate
from recopt.csvcheck import Table, read_table
from recopt.errors import RecoptError
from recopt.schemas import (
    MOVIES, PROVIDERS, RATINGS, TAGS, USER_PROVIDERS,
    Column, DataError, Problem, Schema, cast_frame, check, empty_frame, line_numbers,
)

_MOVIE_FILE = Schema("movies", {"movieId": Column(pl.Int32), "title": Column(pl.String),
                                 "genres": Column(pl.String)}, key=("movieId",), allow_empty=False)
# ml-100k's genre flags, in u.genre's order (its README); "unknown" is no genre
_GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western")
_ITEM_100K = Schema("movies", {"movieId": Column(pl.Int32), "title": Column(pl.String),
                               "release_date": Column(pl.String, nullable=True),
                               "video_release_date": Column(pl.String, nullable=True),
                               "imdb_url": Column(pl.String, nullable=True),
                               **{g: Column(pl.Int8, min=0, max=1) for g in _GENRES_100K}},
                    key=("movieId",), allow_empty=False)
# name -> (schema, required); then each layout's file name and format of each
_FILES: dict[str, tuple[Schema, bool]] = {
    "ratings": (RATINGS, True),
    "movies": (_MOVIE_FILE, True),
    "tags": (TAGS, False),
    "providers": (PROVIDERS, False),
    "user_providers": (USER_PROVIDERS, False),
}
_EXTRA = {"providers": ("providers.csv", "csv"), "user_providers": ("user_providers.csv", "csv")}
_LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "csv": {"ratings": ("ratings.csv", "csv"), "movies": ("movies.csv", "csv"), "tags": ("tags.csv", "csv"),
            **_EXTRA},
    "dat": {"ratings": ("ratings.dat", "dat"), "movies": ("movies.dat", "dat"), "tags": ("tags.dat", "dat"),
            **_EXTRA},
    "100k": {"ratings": ("u.data", "tab"), "movies": ("u.item", "pipe"), **_EXTRA},
}
_NO_GENRES = "(no genres listed)"
# URLError/TimeoutError/connection resets are OSErrors; a cut body is an HTTPException.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_YEAR = r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$"
_FIRST_YEAR = 1870  # the earliest motion pictures (Muybridge, 1878) with a margin
_MS, _TOO_BIG = 10**11, 10**14  # timestamp units, rule 5


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

    Args:
        folder: a folder holding a release in the CSV, the `::` or the ml-100k layout.

    Returns:
        The canonical frames, the counts of every rule applied, and the
        superseded duplicate ratings.

    Raises:
        DataError: listing every problem in every file (see the module docstring).
    """
    folder = Path(folder)
    layout = _detect_layout(folder)
    tables: dict[str, Table] = {}
    problems: list[Problem] = []
    to_seconds: dict[str, int] = {"ratings": 0, "tags": 0}
    for name, (file_name, fmt) in _LAYOUTS[layout].items():
        schema, required = _FILES[name]
        schema = _ITEM_100K if (layout, name) == ("100k", "movies") else schema
        path = locate(folder, file_name)
        if path is None:
            if required:
                problems.append(Problem(
                    str(folder / file_name), None, "required file is missing",
                    f"point to a MovieLens folder containing {_expected(layout)}"))
            continue
        table = tables[name] = read_table(path, schema, fmt)
        problems += table.problems
        if table.frame is not None and name in to_seconds and "timestamp" in table.frame.columns:
            found, to_seconds[name] = _timestamp_unit(table, str(path))
            problems += found
        if table.frame is not None and name == "ratings" and "rating" in table.frame.columns:
            problems += _rating_scale(table, str(path))
    check(problems)

    if layout == "100k":
        tables["movies"] = replace(tables["movies"], frame=_movies_from_flags(tables["movies"].frame))
    frames = {name: cast_frame(t.frame, _FILES[name][0]) for name, t in tables.items()}
    for name, n in to_seconds.items():
        if n:
            frames[name] = frames[name].with_columns(pl.col("timestamp") // 1000)
    ratings, superseded = _resolve_duplicates(frames["ratings"])
    tags = frames.get("tags", empty_frame(TAGS))
    movies, implausible = _parse_movies(frames["movies"])
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
        "implausible_years": implausible,
        "ratings_timestamps_ms_converted": to_seconds["ratings"],
        "tags_timestamps_ms_converted": to_seconds["tags"],
        "bom_files": sum(t.bom for t in tables.values()),
        "blank_lines": sum(t.blank_lines for t in tables.values()),
        "latin1_files": sum(t.latin1 for t in tables.values()),
    }
    return MovieLensData(ratings, movies, tags, frames.get("providers"),
                         frames.get("user_providers"), counts, superseded)


def _movies_from_flags(items: pl.DataFrame) -> pl.DataFrame:
    """ml-100k's u.item as the movie file's columns: genres '|'-joined from the flags."""
    named = [pl.when(pl.col(g).cast(pl.Int8) == 1).then(pl.lit(g)) for g in _GENRES_100K if g != "unknown"]
    return items.select("movieId", "title", genres=pl.concat_list(named).list.drop_nulls().list.join("|"))


def _detect_layout(folder: Path) -> str:
    for layout, files in _LAYOUTS.items():
        if locate(folder, files["ratings"][0]) or locate(folder, files["movies"][0]):
            return layout
    inner = sorted([*folder.glob("*/ratings.*"), *folder.glob("*/u.data")]) if folder.is_dir() else []
    fix = (f"point to {inner[0].parent}" if inner else
           "point to a MovieLens folder containing " + " or ".join(_expected(lay) for lay in _LAYOUTS))
    what = "is not a folder" if not folder.is_dir() else "contains no MovieLens ratings file"
    raise DataError([Problem(str(folder), None, what, fix)])


def _expected(layout: str) -> str:
    files = _LAYOUTS[layout]
    tags = f" (optional {files['tags'][0]})" if "tags" in files else ""
    return f"{files['ratings'][0]} and {files['movies'][0]}{tags}"


def _timestamp_unit(table: Table, file: str) -> tuple[list[Problem], int]:
    """Rule 5 on one file: its problems, and how many rows to convert from milliseconds."""
    ts = table.frame["timestamp"].cast(pl.Int64, strict=False)

    def where(mask: pl.Series) -> str:
        return line_numbers(mask, table.first_line, table.lines)

    negative = (ts < 0).fill_null(False)
    huge = (ts >= _TOO_BIG).fill_null(False)
    ms = ((ts >= _MS) & (ts < _TOO_BIG)).fill_null(False)
    seconds = ((ts >= 0) & (ts < _MS)).fill_null(False)
    n_ms, n_s = int(ms.sum()), int(seconds.sum())
    problems = []
    if negative.any():
        problems.append(Problem(
            file, "timestamp", f"{int(negative.sum()):,} negative value(s) at line(s) "
                               f"{where(negative)}; timestamps are unix seconds since 1970",
            "correct those lines: a timestamp is a whole number of seconds ≥ 0"))
    if huge.any():
        problems.append(Problem(
            file, "timestamp", f"{int(huge.sum()):,} value(s) ≥ 1e14, too large for seconds or "
                               f"milliseconds (micro- or nanoseconds?), at line(s) {where(huge)}",
            "write the timestamps as unix seconds (microseconds // 10**6, nanoseconds // 10**9)"))
    if n_ms and n_s:
        problems.append(Problem(
            file, "timestamp", f"mixes units: {n_ms:,} value(s) look like milliseconds (≥ 1e11), "
                               f"{n_s:,} like seconds; milliseconds at line(s) {where(ms)}, "
                               f"seconds at line(s) {where(seconds)}",
            "write every timestamp as unix seconds: divide the millisecond values by 1000"))
    return problems, 0 if problems else n_ms  # mixed units are a problem


def _rating_scale(table: Table, file: str) -> list[Problem]:
    """Name the likely cause when many ratings exceed 5 but none exceeds 10."""
    rating = table.frame["rating"].cast(pl.Float64, strict=False)
    above, top = int((rating > 5).sum()), rating.max()
    if not above or top is None or top > 10 or above < 0.25 * rating.count():
        return []
    return [Problem(file, "rating", f"{above:,} of {rating.count():,} values are above 5 and none "
                                    f"above 10 (max {top}): is this a 0-10 scale? MovieLens "
                                    "ratings are 0.5-5 stars",
                    "halve every rating (rating / 2) if the source uses a 10-point scale; "
                    "otherwise correct the values above 5")]


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


def _parse_movies(movies: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Year (rule 3) and genres (rule 4) of the movie file; also the implausible-year count."""
    genre = pl.element()
    year = movies["title"].str.extract(_YEAR, 1).cast(pl.Int32)
    last = datetime.now(timezone.utc).year + 5
    implausible = (~year.is_between(_FIRST_YEAR, last)).fill_null(False)
    movies = movies.with_columns(
        year=year.set(implausible, None),
        genres=pl.col("genres").str.split("|").list.eval(
            genre.filter((genre != _NO_GENRES) & (genre != ""))),
    )
    return cast_frame(movies, MOVIES), int(implausible.sum())


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
        raise RecoptError(f"data.release: must be a plain name like 'ml-latest-small', got {release!r}")
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
    found = [p for files in _LAYOUTS.values() for p in sorted(into.rglob(files["ratings"][0]))]
    if not found:
        check([Problem(url, None, f"archive of '{release}' has no ratings.csv, ratings.dat or u.data",
                       "use the zip of a MovieLens release")])
    return found[0].parent
