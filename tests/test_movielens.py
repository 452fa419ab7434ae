"""Tests for recopt.movielens: real data, every user-facing error, the rules, download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recopt.csvcheck import _scan, read_table
from recopt.errors import RecoptError
from recopt.movielens import _MOVIE_FILE as MOVIE_FILE
from recopt.movielens import download_movielens, read_movielens
from recopt.schemas import MOVIES, RATINGS, TAGS, DataError, cast_frame, empty_frame

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/ml-latest-small")

RATINGS_CSV = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.5,200\n2,1,5.0,300\n"
NEW_COUNTS = ("implausible_years", "ratings_timestamps_ms_converted", "tags_timestamps_ms_converted",
              "bom_files", "blank_lines", "latin1_files")
MOVIES_CSV = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Heat (1995),Action\n"


def write(folder: Path, **files: str | bytes) -> Path:
    """Write `name_ext=content` files (e.g. ratings_csv=...) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, content in files.items():
        stem, ext = key.rsplit("_", 1)
        path = folder / f"{stem}.{ext}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def small(tmp_path: Path, **files: str | bytes) -> Path:
    return write(tmp_path / "ml", **{"ratings_csv": RATINGS_CSV, "movies_csv": MOVIES_CSV, **files})


# --- real data -----------------------------------------------------------------

@pytest.mark.skipif(not REAL.is_dir(), reason=f"MovieLens ml-latest-small not found at {REAL}")
def test_reads_ml_latest_small():
    start = time.perf_counter()
    data = read_movielens(REAL)
    elapsed = time.perf_counter() - start
    assert data.counts["n_ratings"] == 100_836
    assert data.counts["n_users"] == 610
    assert data.counts["n_movies"] == 9_742
    assert data.counts["n_tags"] == 3_683
    assert data.counts["duplicate_ratings"] == 0
    assert data.counts["movies_added_from_ratings"] == data.counts["movies_added_from_tags"] == 0
    assert all(data.counts[k] == 0 for k in NEW_COUNTS), {k: data.counts[k] for k in NEW_COUNTS}
    assert data.ratings.schema == empty_frame(RATINGS).schema
    assert data.movies.schema == empty_frame(MOVIES).schema
    assert data.tags.schema == empty_frame(TAGS).schema
    assert data.providers is None and data.user_providers is None
    toy = data.movies.filter(pl.col("movieId") == 1).row(0, named=True)
    assert toy["year"] == 1995 and toy["genres"][:2] == ["Adventure", "Animation"]
    assert data.movies.filter(pl.col("title") == "Babylon 5")["year"].to_list() == [None]
    assert elapsed < 5, f"reading ml-latest-small took {elapsed:.2f}s"


# --- errors a user can hit -------------------------------------------------------

def test_missing_required_file(tmp_path):
    folder = write(tmp_path / "ml", ratings_csv=RATINGS_CSV)
    with pytest.raises(DataError, match=r"movies\.csv: required file is missing — fix: .*"
                                        r"ratings\.csv and movies\.csv"):
        read_movielens(folder)


def test_folder_without_movielens_files(tmp_path):
    with pytest.raises(DataError, match="contains no MovieLens ratings file"):
        read_movielens(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_movielens(tmp_path / "nope")


def test_parent_folder_points_to_the_release_inside(tmp_path):
    small(tmp_path)
    with pytest.raises(DataError, match=rf"fix: point to {re.escape(str(tmp_path / 'ml'))}$"):
        read_movielens(tmp_path)


def test_misnamed_column_suggests_the_rename(tmp_path):
    folder = small(tmp_path, ratings_csv=RATINGS_CSV.replace("userId", "user_id"))
    with pytest.raises(DataError, match=r"ratings\.csv: column 'userId': is missing .*"
                                        r"fix: rename column 'user_id' to 'userId'"):
        read_movielens(folder)


def test_rating_out_of_range(tmp_path):
    folder = small(tmp_path, ratings_csv=RATINGS_CSV.replace("3.5", "7.0"))
    with pytest.raises(DataError, match=r"column 'rating': 1 value\(s\) outside \[0\.5, 5\.0\], "
                                        r"e\.g\. 7\.0 \(line 3\)"):
        read_movielens(folder)


def test_null_movie_id(tmp_path):
    folder = small(tmp_path, ratings_csv=RATINGS_CSV.replace("2,1,5.0", "2,,5.0"))
    with pytest.raises(DataError, match=r"column 'movieId': 1 missing value\(s\) at line\(s\) 4"):
        read_movielens(folder)


def test_empty_ratings_file(tmp_path):
    folder = small(tmp_path, ratings_csv="")
    with pytest.raises(DataError, match=r"ratings\.csv: file is empty — fix: .*userId,movieId"):
        read_movielens(folder)


def test_header_only_ratings_file(tmp_path):
    folder = small(tmp_path, ratings_csv="userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv: has no rows"):
        read_movielens(folder)


def test_non_numeric_rating(tmp_path):
    folder = small(tmp_path, ratings_csv=RATINGS_CSV.replace("3.5", "high"))
    with pytest.raises(DataError, match=r"column 'rating': 1 value\(s\) cannot be read as "
                                        r"Float32, e\.g\. 'high' \(line 3\)"):
        read_movielens(folder)


def test_duplicate_movie_ids_in_catalog(tmp_path):
    folder = small(tmp_path, movies_csv=MOVIES_CSV + "1,Toy Story again (1995),Comedy\n")
    with pytest.raises(DataError, match=r"movies\.csv: column 'movieId': 2 row\(s\) share a key"):
        read_movielens(folder)


def test_all_problems_in_all_files_are_reported_together(tmp_path):
    bad = "user_id,movieId,rating,timestamp\n1,1,9.0,100\n1,x,3.0,\n"
    folder = write(tmp_path / "ml", ratings_csv=bad,
                   tags_csv="userId,movieId,tag,timestamp\n1,1,fun,\n")
    with pytest.raises(DataError) as info:
        read_movielens(folder)
    found = {(Path(p.file).name, p.column) for p in info.value.problems}
    assert found == {
        ("movies.csv", None), ("ratings.csv", "userId"), ("ratings.csv", "movieId"),
        ("ratings.csv", "rating"), ("ratings.csv", "timestamp"), ("tags.csv", "timestamp"),
    }
    assert len(str(info.value).splitlines()) == len(info.value.problems)


# --- documented rules ------------------------------------------------------------

def test_duplicate_ratings_keep_the_latest(tmp_path):
    ratings = ("userId,movieId,rating,timestamp\n"
               "1,1,2.0,500\n"   # latest of (1, 1): kept
               "1,1,3.0,100\n"   # superseded
               "2,2,1.0,300\n"   # tie with the next row: the later row wins
               "2,2,4.5,300\n"
               "3,1,5.0,50\n")
    data = read_movielens(small(tmp_path, ratings_csv=ratings))
    assert data.counts["duplicate_ratings"] == 2
    assert data.counts["n_ratings"] == 3
    assert data.ratings.rows() == [(1, 1, 2.0, 500), (2, 2, 4.5, 300), (3, 1, 5.0, 50)]
    assert data.superseded.rows() == [(1, 1, 3.0, 100), (2, 2, 1.0, 300)]
    assert data.superseded.schema == empty_frame(RATINGS).schema


def test_no_duplicates_gives_an_empty_superseded_frame(tmp_path):
    data = read_movielens(small(tmp_path))
    assert data.superseded.height == 0 and data.counts["duplicate_ratings"] == 0
    assert data.superseded.schema == empty_frame(RATINGS).schema


def test_movies_missing_from_the_catalog_are_added(tmp_path):
    ratings = RATINGS_CSV + "3,99,4.0,400\n3,98,4.0,400\n"
    tags = "userId,movieId,tag,timestamp\n1,77,dark,10\n1,99,odd,11\n1,1,\"pixar, fun\",12\n"
    data = read_movielens(small(tmp_path, ratings_csv=ratings, tags_csv=tags))
    assert data.counts["movies_added_from_ratings"] == 2
    assert data.counts["movies_added_from_tags"] == 1
    assert data.counts["n_movies"] == 5
    assert data.counts["n_ratings"] == 5 and data.counts["n_tags"] == 3
    added = data.movies.filter(pl.col("movieId").is_in([77, 98, 99])).sort("movieId")
    assert added.rows() == [(77, "", None, []), (98, "", None, []), (99, "", None, [])]
    assert data.tags["tag"].to_list() == ["dark", "odd", "pixar, fun"]
    assert data.movies.schema == empty_frame(MOVIES).schema


@pytest.mark.parametrize(
    ("title", "year"),
    [
        ("Toy Story (1995)", 1995),
        ("Runaway Brain (1995) ", 1995),
        ("Babylon 5", None),
        ("(500) Days of Summer (2009)", 2009),
        ("1984 (1956)", 1956),
        ("Death Note: Desu nôto (2006–2007)", 2006),
        ("Big Bang Theory, The (2007-)", 2007),
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995)", 1995),
        ("Ready Player One", None),
        ("Apollo 13 (1995) extended", None),
        ("Short (95)", None),
    ],
)
def test_year_parsing(tmp_path, title, year):
    quoted = '"' + title.replace('"', '""') + '"'
    folder = small(tmp_path, movies_csv=f"movieId,title,genres\n1,{quoted},Drama\n2,Heat (1995),Action\n")
    movie = read_movielens(folder).movies.row(0, named=True)
    assert movie["title"] == title and movie["year"] == year


def test_no_genres_listed_is_an_empty_list(tmp_path):
    movies = "movieId,title,genres\n1,A (2000),(no genres listed)\n2,B (2001),Action|Sci-Fi\n"
    data = read_movielens(small(tmp_path, movies_csv=movies))
    assert data.movies["genres"].to_list() == [[], ["Action", "Sci-Fi"]]


def test_optional_provider_files(tmp_path):
    data = read_movielens(small(
        tmp_path,
        providers_csv="movieId,provider\n1,netflix\n2,hulu\n",
        user_providers_csv="userId,provider\n1,netflix\n",
    ))
    assert data.providers.rows() == [(1, "netflix"), (2, "hulu")]
    assert data.user_providers.schema == pl.Schema({"userId": pl.Int32, "provider": pl.String})


def test_links_csv_is_ignored(tmp_path):
    data = read_movielens(small(tmp_path, links_csv="garbage\x00,,\n"))
    assert data.counts["n_ratings"] == 3


# --- the '::' layout ----------------------------------------------------------------

def ml1m_folder(tmp_path: Path) -> Path:
    movies = ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
              "2::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n"
              "3::\"Bound\" (1996)::Thriller\n")
    ratings = "1::1::5::978300760\n1::2::3::978302109\n2::3::4::978301968\n2::1::4::978300275\n"
    return write(tmp_path / "ml-1m", movies_dat=movies.encode("latin-1"),
                 ratings_dat=ratings, tags_dat="1::3::noir::978300000\n")


def test_reads_the_double_colon_layout(tmp_path):
    data = read_movielens(ml1m_folder(tmp_path))
    assert data.counts == {
        "n_ratings": 4, "n_users": 2, "n_movies": 3, "n_tags": 1, "duplicate_ratings": 0,
        "movies_added_from_ratings": 0, "movies_added_from_tags": 0, "implausible_years": 0,
        "ratings_timestamps_ms_converted": 0, "tags_timestamps_ms_converted": 0,
        "bom_files": 0, "blank_lines": 0, "latin1_files": 1,  # movies.dat is latin-1, as in ml-1m
    }
    assert data.movies.rows() == [
        (1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
        (2, "Cité des enfants perdus, La (1995)", 1995, ["Adventure", "Sci-Fi"]),
        (3, "\"Bound\" (1996)", 1996, ["Thriller"]),
    ]
    assert data.ratings.schema == empty_frame(RATINGS).schema
    assert data.ratings["rating"].to_list() == [5.0, 3.0, 4.0, 4.0]
    assert data.tags.rows() == [(1, 3, "noir", 978300000)]


def test_double_colon_layout_reports_bad_values_with_lines(tmp_path):
    folder = ml1m_folder(tmp_path)
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::9::978302109\n2::x::4::1\n")
    with pytest.raises(DataError) as info:
        read_movielens(folder)
    text = str(info.value)
    assert "ratings.dat: column 'rating': 1 value(s) outside [0.5, 5.0], e.g. 9.0 (line 2)" in text
    assert "column 'movieId': 1 value(s) cannot be read as Int32, e.g. 'x' (line 3)" in text


def test_double_colon_layout_missing_movies(tmp_path):
    folder = write(tmp_path / "ml-10m", ratings_dat="1::1::5::978300760\n")
    with pytest.raises(DataError, match=r"movies\.dat: required file is missing .*ratings\.dat"):
        read_movielens(folder)


# --- the ml-100k layout ---------------------------------------------------------

def flags(*genres: str) -> str:
    names = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western")
    return "|".join("1" if n in genres else "0" for n in names)


def ml100k_folder(tmp_path: Path) -> Path:
    """u.item in latin-1 as published: id|title|release date|video release date|IMDb URL|19 genre flags."""
    kids = "Children's"
    items = (f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
             f"{flags('Animation', kids, 'Comedy')}\n"
             f"2|Misérables, Les (1995)|01-Jan-1995||http://x|{flags('Drama', 'War')}\n"
             f"267|unknown||||{flags('unknown')}\n")
    ratings = "196\t1\t3\t881250949\n186\t2\t3\t891717742\n196\t267\t1\t878887116\n"
    return write(tmp_path / "ml-100k", u_item=items.encode("latin-1"), u_data=ratings,
                 u_genre="unknown|0\nAction|1\n")


def test_reads_the_ml100k_layout(tmp_path):
    data = read_movielens(ml100k_folder(tmp_path))
    assert data.movies.rows() == [
        (1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
        (2, "Misérables, Les (1995)", 1995, ["Drama", "War"]),
        (267, "unknown", None, []),
    ]
    assert data.ratings.rows() == [(196, 1, 3.0, 881250949), (186, 2, 3.0, 891717742), (196, 267, 1.0, 878887116)]
    assert data.ratings.schema == empty_frame(RATINGS).schema
    assert data.tags.height == 0
    assert data.counts["latin1_files"] == 1


@pytest.mark.skipif(not REAL.is_dir(), reason=f"MovieLens ml-latest-small not found at {REAL}")
def test_ml_latest_small_written_in_the_ml100k_layout_reads_the_same(tmp_path):
    """Oracle: the same ratings and movies, written as u.data / u.item, read back equal to the CSV layout
    (genres kept to the ones ml-100k has a flag for)."""
    real = read_movielens(REAL)
    known = {"Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
             "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"}
    movies = real.movies.with_columns(pl.col("genres").list.eval(pl.element().filter(pl.element().is_in(known))))
    folder = tmp_path / "ml-100k-like"
    folder.mkdir()
    real.ratings.write_csv(folder / "u.data", separator="\t", include_header=False)
    lines = [f"{m}|{t}|||x|{flags(*g)}" for m, t, g in movies.select("movieId", "title", "genres").iter_rows()]
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    read = read_movielens(folder)
    assert read.ratings.sort("userId", "movieId").equals(real.ratings.sort("userId", "movieId"))
    assert read.movies.sort("movieId").equals(movies.sort("movieId"))


def test_ml100k_file_with_the_wrong_separator_is_named(tmp_path):
    folder = ml100k_folder(tmp_path)
    (folder / "u.data").write_text("196,1,3,881250949\n")
    with pytest.raises(DataError, match=r"u\.data: the file is separated by ',', not TAB .* separate the "
                                        r"fields with TAB"):
        read_movielens(folder)


def test_ml100k_bad_genre_flag_names_the_column_and_line(tmp_path):
    folder = ml100k_folder(tmp_path)
    (folder / "u.item").write_text(f"1|Toy Story (1995)|||x|{flags('Comedy').replace('0', '2', 1)}\n")
    with pytest.raises(DataError, match=r"u\.item: column 'unknown': 1 value\(s\) outside \[0, 1\], e\.g\. 2 "
                                        r"\(line 1\)"):
        read_movielens(folder)


def test_ml100k_missing_item_file_is_named(tmp_path):
    folder = write(tmp_path / "ml-100k", u_data="196\t1\t3\t881250949\n")
    with pytest.raises(DataError, match=r"u\.item: required file is missing .*u\.data and u\.item"):
        read_movielens(folder)


# --- download ---------------------------------------------------------------------

def make_zip(release: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{release}/ratings.csv", RATINGS_CSV)
        zf.writestr(f"{release}/movies.csv", MOVIES_CSV)
        zf.writestr(f"{release}/README.txt", "test release")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder; yields (base url, folder)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def publish(root: Path, name: str, payload: bytes, md5: str | None = None) -> None:
    (root / f"{name}.zip").write_bytes(payload)
    digest = md5 or hashlib.md5(payload).hexdigest()
    (root / f"{name}.zip.md5").write_text(f"{digest}  {name}.zip\n")


def leftovers(dest: Path) -> list[str]:
    """Everything in dest and in its parent that looks like our temporary folders."""
    inside = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
    temps = sorted(p.name for p in dest.parent.glob(".ml-*"))
    return inside + temps


def test_download_verifies_extracts_and_reads(server, tmp_path):
    url, root = server
    publish(root, "ml-tiny", make_zip("ml-tiny"))
    dest = tmp_path / "raw"
    folder = download_movielens("ml-tiny", dest, f"{url}/ml-tiny.zip")
    assert folder == dest / "ml-tiny"
    assert (folder / ".complete").is_file() and (folder / "ratings.csv").is_file()
    assert read_movielens(folder).counts["n_ratings"] == 3
    assert leftovers(dest) == ["ml-tiny"]
    # Complete already: no request is made (the published file is gone).
    (root / "ml-tiny.zip").unlink()
    assert download_movielens("ml-tiny", dest, f"{url}/ml-tiny.zip") == folder


def test_download_with_an_explicit_md5(server, tmp_path):
    url, root = server
    payload = make_zip("ml-tiny")
    (root / "ml-tiny.zip").write_bytes(payload)  # no .md5 published
    folder = download_movielens("ml-tiny", tmp_path / "raw", f"{url}/ml-tiny.zip",
                                md5=hashlib.md5(payload).hexdigest())
    assert (folder / "movies.csv").is_file()


def test_download_with_a_wrong_md5_leaves_nothing(server, tmp_path):
    url, root = server
    publish(root, "ml-tiny", make_zip("ml-tiny"), md5="0" * 32)
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=r"checksum mismatch for release 'ml-tiny': expected md5 "
                                        r"0{32}, got [0-9a-f]{32} — fix: download again"):
        download_movielens("ml-tiny", dest, f"{url}/ml-tiny.zip")
    assert leftovers(dest) == []


def test_download_of_a_corrupt_zip_leaves_nothing(server, tmp_path):
    url, root = server
    publish(root, "ml-tiny", b"this is not a zip archive" * 10)  # md5 matches the garbage
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=r"archive of 'ml-tiny' is corrupt"):
        download_movielens("ml-tiny", dest, f"{url}/ml-tiny.zip")
    assert leftovers(dest) == []


def test_download_of_a_missing_file_names_the_url(server, tmp_path):
    url, _ = server
    with pytest.raises(DataError, match=r"cannot fetch the checksum of 'ml-nope'.*pass md5="):
        download_movielens("ml-nope", tmp_path / "raw", f"{url}/ml-nope.zip")
    with pytest.raises(DataError, match=r"cannot download 'ml-nope'.*404"):
        download_movielens("ml-nope", tmp_path / "raw", f"{url}/ml-nope.zip", md5="0" * 32)
    assert leftovers(tmp_path / "raw") == []


def test_download_refuses_an_incomplete_existing_folder(server, tmp_path):
    url, root = server
    publish(root, "ml-tiny", make_zip("ml-tiny"))
    (tmp_path / "raw" / "ml-tiny").mkdir(parents=True)
    with pytest.raises(DataError, match=r"exists but is not a complete download — fix: delete"):
        download_movielens("ml-tiny", tmp_path / "raw", f"{url}/ml-tiny.zip")


def test_download_rejects_a_path_as_release(tmp_path):
    with pytest.raises(RecoptError, match=r"data.release: must be a plain name"):
        download_movielens("../evil", tmp_path, "http://127.0.0.1:9/x.zip")


def test_ragged_lines_are_reported(tmp_path):
    folder = small(tmp_path, ratings_csv="userId,movieId,rating,timestamp\n1,1,4.0,100,extra\n")
    with pytest.raises(DataError, match=r"ratings\.csv: cannot be parsed: .* — fix: make every "
                                        r"line hold exactly the fields userId,movieId,rating,timestamp"):
        read_movielens(folder)


def test_ingest_stage_downloads_a_release_through_the_config(server, tmp_path):
    """data=download end to end: the configured URL, md5 from <url>.md5, unpacked under paths.downloads."""
    from recopt.ingest import ingest
    from tests.conftest import tmp_config

    url, root = server
    publish(root, "ml-tiny", make_zip("ml-tiny"))
    cfg = tmp_config(tmp_path, "data=download", "data.release=ml-tiny", f"data.url={url}/ml-tiny.zip")
    manifest = ingest(cfg)
    assert manifest["counts"]["n_ratings"] == 3
    assert manifest["source"].endswith("ml-tiny")
    assert (tmp_path / "downloads" / "ml-tiny" / ".complete").is_file()


# --- timestamps: unix seconds, one unit per file (rule 5) --------------------------

SECONDS = [978300760, 978302109, 1_199_145_600, 1_537_799_250, 100_000_000]


def ratings_csv(timestamps: list[int]) -> str:
    rows = "".join(f"{i + 1},1,4.0,{t}\n" for i, t in enumerate(timestamps))
    return "userId,movieId,rating,timestamp\n" + rows


def tags_csv(timestamps: list[int]) -> str:
    rows = "".join(f"{i + 1},1,tag {i},{t}\n" for i, t in enumerate(timestamps))
    return "userId,movieId,tag,timestamp\n" + rows


def as_ms(seconds: list[int]) -> list[int]:
    """Milliseconds with a sub-second part, so flooring is exercised."""
    return [s * 1000 + (37 * i) % 1000 for i, s in enumerate(seconds)]


@pytest.mark.parametrize("name", ["ratings", "tags"])
def test_mixed_timestamp_units_are_an_error(tmp_path, name):
    timestamps = [978300760, 978302109000, 978301968, 978300275000, 978824291]
    write_csv = ratings_csv if name == "ratings" else tags_csv
    folder = small(tmp_path, **{f"{name}_csv": write_csv(timestamps)})
    with pytest.raises(DataError, match=rf"{name}\.csv: column 'timestamp': mixes units: 2 value\(s\) "
                                        r"look like milliseconds \(≥ 1e11\), 3 like seconds; "
                                        r"milliseconds at line\(s\) 3, 5, seconds at line\(s\) "
                                        r"2, 4, 6 — fix: .*divide the millisecond values by 1000"):
        read_movielens(folder)


def test_mixed_units_count_every_value(tmp_path):
    timestamps = [978300760 + i for i in range(1200)] + [978300760000, 978300761000, 978300762000]
    with pytest.raises(DataError, match=r"3 value\(s\) look like milliseconds \(≥ 1e11\), "
                                        r"1,200 like seconds; milliseconds at line\(s\) "
                                        r"1202, 1203, 1204,"):
        read_movielens(small(tmp_path, ratings_csv=ratings_csv(timestamps)))


def test_negative_timestamps_are_an_error(tmp_path):
    folder = small(tmp_path, tags_csv=tags_csv([978300760, -1, -978300760]))
    with pytest.raises(DataError, match=r"tags\.csv: column 'timestamp': 2 negative value\(s\) at "
                                        r"line\(s\) 3, 4; .* — fix: correct those lines"):
        read_movielens(folder)


def test_timestamps_beyond_milliseconds_are_an_error(tmp_path):
    micro = 978300760 * 10**6
    with pytest.raises(DataError, match=r"ratings\.csv: column 'timestamp': 1 value\(s\) ≥ 1e14, "
                                        r"too large for seconds or milliseconds .*line\(s\) 3 — fix"):
        read_movielens(small(tmp_path, ratings_csv=ratings_csv([978300760 * 1000, micro])))


@pytest.mark.parametrize(("ratings_unit", "tags_unit"), [("s", "ms"), ("ms", "s"), ("ms", "ms"), ("s", "s")])
def test_each_file_is_converted_to_seconds_on_its_own(tmp_path, ratings_unit, tags_unit):
    """The leak this prevents: tags in ms sort after every rating, into the test period."""
    def stamps(unit: str) -> list[int]:
        return as_ms(SECONDS) if unit == "ms" else SECONDS

    folder = small(tmp_path, ratings_csv=ratings_csv(stamps(ratings_unit)),
                   tags_csv=tags_csv(stamps(tags_unit)))
    data = read_movielens(folder)
    assert data.ratings["timestamp"].to_list() == SECONDS
    assert data.tags["timestamp"].to_list() == SECONDS
    assert data.counts["ratings_timestamps_ms_converted"] == (5 if ratings_unit == "ms" else 0)
    assert data.counts["tags_timestamps_ms_converted"] == (5 if tags_unit == "ms" else 0)


def test_unit_boundaries(tmp_path):
    """Seconds are 0 <= v < 1e11 (small values are early dates); milliseconds 1e11 <= v < 1e14."""
    seconds = [0, 1, 100, 10**11 - 1]
    data = read_movielens(small(tmp_path / "s", ratings_csv=ratings_csv(seconds)))
    assert data.ratings["timestamp"].to_list() == seconds
    assert data.counts["ratings_timestamps_ms_converted"] == 0
    data = read_movielens(small(tmp_path / "ms", ratings_csv=ratings_csv([10**11, 10**14 - 1])))
    assert data.ratings["timestamp"].to_list() == [10**8, 10**11 - 1]
    with pytest.raises(DataError, match=r"mixes units: 1 value\(s\) .*, 1 like seconds"):
        read_movielens(small(tmp_path / "mixed", ratings_csv=ratings_csv([0, 10**11])))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(10**8, 10**11 - 1), min_size=1, max_size=20),
       st.lists(st.integers(0, 999), min_size=20, max_size=20))
def test_milliseconds_convert_back_to_the_same_seconds(seconds, remainders):
    with tempfile.TemporaryDirectory() as tmp:
        ms = [s * 1000 + r for s, r in zip(seconds, remainders)]
        data = read_movielens(small(Path(tmp), ratings_csv=ratings_csv(ms), tags_csv=tags_csv(ms)))
    assert data.ratings["timestamp"].to_list() == seconds
    assert data.tags["timestamp"].to_list() == seconds


# --- implausible title years (rule 3) ---------------------------------------------

THIS_YEAR = datetime.now(timezone.utc).year


@pytest.mark.parametrize(
    ("title", "year"),
    [
        ("Far Future (9999)", None),
        ("Domesday (0001)", None),
        ("Hastings (1066)", None),
        ("Too Early (1869)", None),
        ("Earliest (1870)", 1870),
        (f"Announced ({THIS_YEAR + 5})", THIS_YEAR + 5),
        (f"Too Far ({THIS_YEAR + 6})", None),
        ("Series (9999-2001)", None),
    ],
)
def test_implausible_years_are_unknown_and_counted(tmp_path, title, year):
    folder = small(tmp_path, movies_csv=f"movieId,title,genres\n1,{title},Drama\n2,Heat (1995),Action\n")
    data = read_movielens(folder)
    assert data.movies["year"].to_list() == [year, 1995]
    assert data.movies["title"][0] == title
    assert data.counts["implausible_years"] == (1 if year is None else 0)


# --- malformed lines: the line number, and every other problem still listed --------

def test_parse_error_names_the_line_and_other_problems_are_still_listed(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.5,200,extra\n2,1,5.0,300\n2,2,0.0,400\n"
    folder = small(tmp_path, ratings_csv=ratings, movies_csv=MOVIES_CSV + "x,Casino (1995),Drama\n")
    with pytest.raises(DataError, match=r"ratings\.csv: cannot be parsed: 1 line\(s\) do not have 4 "
                                        r"fields, e\.g\. line 3 has 5 — fix: make every line hold "
                                        r"exactly the fields userId,movieId,rating,timestamp") as info:
        read_movielens(folder)
    text = str(info.value)
    assert "ratings.csv: column 'rating': 1 value(s) outside [0.5, 5.0], e.g. 0.0 (line 5)" in text
    assert "movies.csv: column 'movieId': 1 value(s) cannot be read as Int32, e.g. 'x' (line 4)" in text
    assert len(info.value.problems) == 3


def test_short_line_is_named_not_reported_as_missing_values(tmp_path):
    folder = small(tmp_path, ratings_csv=RATINGS_CSV.replace("1,2,3.5,200", "1,2,3.5"))
    with pytest.raises(DataError, match=r"ratings\.csv: cannot be parsed: 1 line\(s\) do not have 4 "
                                        r"fields, e\.g\. line 3 has 3 — fix") as info:
        read_movielens(folder)
    assert len(info.value.problems) == 1


def test_unclosed_quote_names_the_line(tmp_path):
    movies = ('movieId,title,genres\n1,"Toy Story (1995),Adventure\n2,Heat (1995),Action\n'
              '2,"Casino, The (1995)",Drama\n')
    with pytest.raises(DataError, match=r"movies\.csv: cannot be parsed: 1 line\(s\) have an unclosed "
                                        r"or misplaced quote \(\"\), e\.g\. line\(s\) 2 — fix") as info:
        read_movielens(small(tmp_path, movies_csv=movies))
    assert ("column 'movieId': 2 row(s) share a key (movieId) with another row, "
            "e.g. movieId=2 at lines 3, 4") in str(info.value)


def test_a_quote_spanning_lines_does_not_swallow_them(tmp_path):
    """polars alone reads this as two movies, the first titled 'Toy Story (1995),Adventure\\n2,Heat'."""
    movies = ('movieId,title,genres\n1,"Toy Story (1995),Adventure\n2,Heat (1995)",Action\n'
              '3,Casino (1995),Drama\n')
    with pytest.raises(DataError, match=r"movies\.csv: cannot be parsed: .*unclosed or misplaced "
                                        r"quote .*line\(s\) 2"):
        read_movielens(small(tmp_path, movies_csv=movies))


def test_repeated_header_line_is_named(tmp_path):
    ratings = RATINGS_CSV + "userId,movieId,rating,timestamp\n3,1,4.0,400\n"
    with pytest.raises(DataError, match=r"ratings\.csv: the header line is repeated at line\(s\) 5 — "
                                        r"fix: delete the repeated header lines"):
        read_movielens(small(tmp_path, ratings_csv=ratings))


def test_double_colon_layout_names_bad_lines(tmp_path):
    folder = ml1m_folder(tmp_path)
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::3\n2::3::4::1::9\n2::1::7::978300275\n")
    with pytest.raises(DataError, match=r"ratings\.dat: cannot be parsed: 2 line\(s\) do not have 4 fields, "
                                        r"e\.g\. line 2 has 3, line 3 has 5 — fix: make every line hold "
                                        r"exactly the fields userId::movieId::rating::timestamp") as info:
        read_movielens(folder)
    assert "outside [0.5, 5.0], e.g. 7.0 (line 4)" in str(info.value)


# --- separators, encodings, byte-order marks ----------------------------------------

@pytest.mark.parametrize("name", ["ratings", "movies"])
@pytest.mark.parametrize(("sep", "label"), [(";", "';'"), ("\t", r"TAB \('\\t'.*\)")])
def test_wrong_separator_is_named(tmp_path, name, sep, label):
    content = {"ratings": RATINGS_CSV, "movies": MOVIES_CSV}[name].replace(",", sep)
    with pytest.raises(DataError, match=rf"{name}\.csv: the file is separated by {label}, not ',' — "
                                        r"fix: re-save it comma-separated, e\.g\. pandas"):
        read_movielens(small(tmp_path, **{f"{name}_csv": content}))


def test_double_colon_file_separated_by_commas_is_named(tmp_path):
    folder = ml1m_folder(tmp_path)
    (folder / "ratings.dat").write_text("1,1,5,978300760\n")
    with pytest.raises(DataError, match=r"ratings\.dat: the file is separated by ',', not '::'"):
        read_movielens(folder)


def test_non_utf8_csv_names_the_line_and_iconv(tmp_path):
    movies = (MOVIES_CSV + '3,"Cité des enfants perdus, La (1995)",Drama\n4,Amélie (2001),Comedy\n')
    folder = small(tmp_path, movies_csv=movies.encode("latin-1"),
                   ratings_csv=RATINGS_CSV.replace("3.5", "x"))
    with pytest.raises(DataError, match=r"movies\.csv: is not UTF-8: line 4 has byte 0xE9 \(byte 7 of "
                                        r"the line\), which is not valid UTF-8; 2 line\(s\) hold such "
                                        r"bytes: 4, 5 — fix: convert the file to UTF-8, e\.g\. iconv "
                                        r"-f latin1 -t utf-8 movies\.csv > movies\.utf8\.csv") as info:
        read_movielens(folder)
    assert ("ratings.csv: column 'rating': 1 value(s) cannot be read as Float32, "
            "e.g. 'x' (line 3)") in str(info.value)


def test_utf16_csv_is_named(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.csv: is not UTF-8: it is UTF-16 .* iconv -f utf-16"):
        read_movielens(small(tmp_path, ratings_csv=RATINGS_CSV.encode("utf-16")))


def test_utf8_double_colon_files_are_not_read_as_latin1(tmp_path):
    folder = write(tmp_path / "ml", ratings_dat="1::1::5::978300760\n",
                   movies_dat="1::Cité des enfants perdus, La (1995)::Sci-Fi\n")
    data = read_movielens(folder)
    assert data.movies["title"].to_list() == ["Cité des enfants perdus, La (1995)"]
    assert data.counts["latin1_files"] == 0


@pytest.mark.parametrize("name", ["ratings", "movies"])
def test_utf8_bom_is_dropped_and_counted(tmp_path, name):
    plain = read_movielens(small(tmp_path / "plain"))
    content = {"ratings": RATINGS_CSV, "movies": MOVIES_CSV}[name]
    data = read_movielens(small(tmp_path / "bom", **{f"{name}_csv": b"\xef\xbb\xbf" + content.encode()}))
    assert data.counts["bom_files"] == 1
    assert data.ratings.equals(plain.ratings) and data.movies.equals(plain.movies)


def test_utf8_bom_keeps_line_numbers_on_the_line_scan(tmp_path):
    ratings = RATINGS_CSV.replace("4.0,100", "4.0,100,extra").replace("5.0", "9.0")
    with pytest.raises(DataError) as info:
        read_movielens(small(tmp_path, ratings_csv=b"\xef\xbb\xbf" + ratings.encode()))
    text = str(info.value)
    assert "line 2 has 5" in text and "e.g. 9.0 (line 4)" in text and "column 'userId'" not in text


def test_utf8_bom_in_the_double_colon_layout(tmp_path):
    folder = ml1m_folder(tmp_path)
    (folder / "ratings.dat").write_bytes(b"\xef\xbb\xbf1::1::5::978300760\n")
    data = read_movielens(folder)
    assert data.ratings.rows() == [(1, 1, 5.0, 978300760)] and data.counts["bom_files"] == 1


# --- other ways a file could read plausibly wrong ------------------------------------

def test_blank_lines_are_skipped_counted_and_keep_line_numbers(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,100\n\n   \n,,,\n1,2,3.5,200\n2,1,5.0,300\n\n"
    data = read_movielens(small(tmp_path / "ok", ratings_csv=ratings))
    assert data.ratings.rows() == [(1, 1, 4.0, 100), (1, 2, 3.5, 200), (2, 1, 5.0, 300)]
    assert data.counts["blank_lines"] == 4
    with pytest.raises(DataError, match=r"e\.g\. 7\.0 \(line 6\)"):
        read_movielens(small(tmp_path / "bad", ratings_csv=ratings.replace("3.5", "7.0")))


def test_spaces_around_numbers_are_ignored(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n 1, 1 , 4.0 ,100 \n1,2,3.5,200\n2 ,1,5.0, 300\n"
    assert read_movielens(small(tmp_path, ratings_csv=ratings)).ratings.rows() == [
        (1, 1, 4.0, 100), (1, 2, 3.5, 200), (2, 1, 5.0, 300)]


def test_crlf_line_ends_read_the_same(tmp_path):
    plain = read_movielens(small(tmp_path / "lf"))
    crlf = read_movielens(small(tmp_path / "crlf", ratings_csv=RATINGS_CSV.replace("\n", "\r\n"),
                                movies_csv=MOVIES_CSV.replace("\n", "\r\n")))
    assert crlf.ratings.equals(plain.ratings) and crlf.movies.equals(plain.movies)


def test_bare_cr_line_ends_are_named(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.csv: lines end with a bare carriage return"):
        read_movielens(small(tmp_path, ratings_csv=RATINGS_CSV.replace("\n", "\r")))


def test_ten_point_ratings_are_named(tmp_path):
    ratings = RATINGS_CSV.replace("4.0", "8.0").replace("3.5", "7.0").replace("5.0", "10.0")
    with pytest.raises(DataError, match=r"column 'rating': 3 of 3 values are above 5 and none "
                                        r"above 10 \(max 10\.0\): is this a 0-10 scale\? .* — fix: "
                                        r"halve every rating"):
        read_movielens(small(tmp_path, ratings_csv=ratings))


def test_column_named_twice_is_an_error(tmp_path):
    ratings = "userId,movieId,rating,rating\n1,1,4.0,5.0\n"
    with pytest.raises(DataError, match=r"ratings\.csv: column 'rating': appears 2 times in the header"):
        read_movielens(small(tmp_path, ratings_csv=ratings))


def test_empty_line_before_the_header_is_named(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.csv: line 1 is empty; the header line must come first"):
        read_movielens(small(tmp_path, ratings_csv="\n" + RATINGS_CSV))


# --- real data under harmless changes reads the same ----------------------------------

def _to_ms(path: Path) -> None:
    df = pl.read_csv(path, infer_schema=False)
    ts = df["timestamp"].cast(pl.Int64)
    df.with_columns(timestamp=ts * 1000 + pl.Series(range(df.height)) % 1000).write_csv(path)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"MovieLens ml-latest-small not found at {REAL}")
@pytest.mark.parametrize(("change", "counts"), [
    ("bom", {"bom_files": 3}),
    ("crlf", {}),
    ("blank", {"blank_lines": 3}),
    ("ms", {"ratings_timestamps_ms_converted": 100_836, "tags_timestamps_ms_converted": 3_683}),
    ("spaces", {}),  # ' 4.0' fails polars' typed parse: the line scan must give the same frame
])
def test_real_data_reads_the_same_after_harmless_changes(tmp_path, change, counts):
    expected = read_movielens(REAL)
    folder = tmp_path / "ml"
    folder.mkdir()
    for name in ("ratings.csv", "movies.csv", "tags.csv"):
        raw = (REAL / name).read_bytes()
        raw = {"bom": b"\xef\xbb\xbf" + raw, "crlf": raw.replace(b"\n", b"\r\n"),
               "blank": raw + b"\n"}.get(change, raw)
        if change == "spaces" and name == "ratings.csv":
            raw = re.sub(rb",(\d\.\d),", rb", \1 ,", raw)
        (folder / name).write_bytes(raw)
    if change == "ms":
        _to_ms(folder / "ratings.csv")
        _to_ms(folder / "tags.csv")
    data = read_movielens(folder)
    assert data.ratings.equals(expected.ratings)
    assert data.movies.equals(expected.movies)
    assert data.tags.equals(expected.tags)
    assert data.counts == {**expected.counts, **counts}


@pytest.mark.skipif(not REAL.is_dir(), reason=f"MovieLens ml-latest-small not found at {REAL}")
@pytest.mark.parametrize(("name", "schema"), [("movies.csv", MOVIE_FILE), ("tags.csv", TAGS)])
def test_line_scan_agrees_with_polars_on_real_files(name, schema):
    """Two parsers as oracles: the csv-module line scan (error path) and polars (happy path)."""
    fast = read_table(REAL / name, schema, "csv")
    slow = _scan((REAL / name).open("rb"), str(REAL / name), schema, "csv", bom=False)
    assert fast.problems == slow.problems == []
    assert cast_frame(slow.frame, schema).equals(cast_frame(fast.frame, schema))
    assert slow.lines.to_list() == list(range(2, fast.frame.height + 2))
