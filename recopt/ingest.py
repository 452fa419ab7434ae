"""Load a data source into the canonical frames and write them as typed parquet.

Sources: the built-in synthetic generator (default, offline), a local MovieLens
folder, or a MovieLens release downloaded from GroupLens (checksum-verified).

Valid but implausible values are kept, counted in the manifest's ``implausible``
and printed as warnings: timestamps (of ratings and tags) more than a day in the
future, ratings off the releases' half-star grid (0.5, 1.0, ... 5.0), NUL bytes in
text fields (titles, genres, tags, providers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from recopt import synthetic
from recopt.config import Config, preset
from recopt.artifacts import Output, output
from recopt.layout import file_name
from recopt.movielens import download_movielens, read_movielens
from recopt.rng import stage_rng
from recopt.runlog import log, timed
from recopt.schemas import (MOVIES, PROVIDERS, RATINGS, TAGS, USER_PROVIDERS, cast_frame, check,
                            empty_frame, validate_frame)

TABLES = {"ratings": RATINGS, "movies": MOVIES, "tags": TAGS,
          "providers": PROVIDERS, "user_providers": USER_PROVIDERS}


def load_source(cfg: Config) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """The five canonical tables of the configured source, and what was counted on the way.

    Missing optional tables (providers, user providers) are empty frames.
    """
    d = cfg.data
    if d.source == "synthetic":
        tables = synthetic.generate(preset(cfg), stage_rng(cfg.seed, "ingest"))
        counts = {"duplicate_ratings": 0, "movies_added_from_ratings": 0, "movies_added_from_tags": 0}
        return tables, {"source": f"synthetic:{d.preset}", "counts": counts, "superseded": None}
    if d.source == "download":
        folder = download_movielens(d.release or "", Path(cfg.paths.downloads), d.url or "", md5=d.md5)
    else:
        folder = Path(d.path or "")
    ml = read_movielens(folder)
    tables = {"ratings": ml.ratings, "movies": ml.movies, "tags": ml.tags,
              "providers": ml.providers, "user_providers": ml.user_providers}
    return tables, {"source": f"movielens:{folder}", "counts": dict(ml.counts), "superseded": ml.superseded}


def count_implausible(tables: dict[str, pl.DataFrame | None], now: float) -> dict[str, int]:
    """Valid but implausible values of the canonical tables (module docstring), by kind.

    Args:
        tables: the canonical frames (a missing optional table counts nothing).
        now: the current unix time in seconds.

    Returns:
        {"future_timestamps", "ratings_off_half_star_grid", "nul_bytes_in_text"}: counts of values.
    """
    future = sum(int((df["timestamp"] > now + 86_400).sum()) for name in ("ratings", "tags")
                 if (df := tables.get(name)) is not None and df.height)
    ratings = tables["ratings"]
    off_grid = int(((ratings["rating"].cast(pl.Float64) * 2) % 1 != 0).sum()) if ratings is not None else 0
    nul = 0
    for df in tables.values():
        if df is None or not df.height:
            continue
        for name, dtype in df.schema.items():
            text = pl.col(name).list.join("\n") if dtype == pl.List(pl.String) else pl.col(name)
            if dtype in (pl.String, pl.List(pl.String)):
                nul += int(df.select(text.str.contains("\x00", literal=True).fill_null(False).sum()).item())
    return {"future_timestamps": future, "ratings_off_half_star_grid": off_grid, "nul_bytes_in_text": nul}


_WARNINGS = {"future_timestamps": "timestamp(s) more than a day in the future (a clock or unit error?)",
             "ratings_off_half_star_grid": "rating(s) off the half-star grid 0.5, 1.0, ... 5.0 of the releases",
             "nul_bytes_in_text": "text value(s) holding a NUL byte (a binary or UTF-16 fragment?)"}


def write_tables(tables: dict[str, pl.DataFrame | None], out: Output) -> None:
    """Validate every table against its schema (all problems at once) and write it."""
    problems = []
    frames = {}
    for name, schema in TABLES.items():
        df = tables.get(name)
        df = empty_frame(schema) if df is None else df
        problems += validate_frame(df, schema, f"{name} ({out.root / file_name('ingest', name)})")
        frames[name] = df
    check(problems)
    for name, schema in TABLES.items():
        df = cast_frame(frames[name], schema)
        if name == "ratings":
            df = df.sort(["userId", "timestamp", "movieId"])
        elif name == "movies":
            df = df.sort("movieId")  # row order is the catalog index every later artifact uses
        out.parquet(name, df)


def ingest(cfg: Config) -> dict[str, Any]:
    """Run the ingest stage; returns the summary written to its manifest."""
    with output(cfg, "ingest") as out:
        with timed("load", out.timings):
            tables, info = load_source(cfg)
        with timed("validate_write", out.timings):
            write_tables(tables, out)
            superseded = info["superseded"]
            if superseded is not None and superseded.height:
                out.parquet("superseded_ratings", superseded)
        ratings, movies = tables["ratings"], tables["movies"]
        implausible = count_implausible(tables, time.time())
        warnings = [f"ingest: {n:,} {_WARNINGS[kind]}: kept as they are" for kind, n in implausible.items() if n]
        for warning in warnings:
            log.warning("%s", warning)
        out.summary = {
            "source": info["source"], "implausible": implausible, "warnings": warnings,
            "counts": {"n_ratings": ratings.height, "n_users": ratings["userId"].n_unique(),
                       "n_movies": movies.height, "n_rated_movies": ratings["movieId"].n_unique(),
                       "n_tags": tables["tags"].height,
                       "n_providers": 0 if tables["providers"] is None else tables["providers"].height,
                       **info["counts"]},
        }
    return out.summary
