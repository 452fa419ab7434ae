"""ingest: a data source -> typed, validated parquet.

Reads:  the source in `data` (synthetic preset, a MovieLens folder, or a download)
Writes: the ingest artifact {ratings, movies, tags, providers, user_providers[, superseded_ratings]}
"""

from recopt.config import Config
from recopt.ingest import ingest
from recopt.runlog import log
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    summary = ingest(cfg)
    log.info("ingest: %s — %s", summary["source"], summary["counts"])


if __name__ == "__main__":
    run(main)
