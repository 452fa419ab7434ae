"""split: ratings -> train / test interactions and per-user slices.

Reads:  paths.ingest/ratings.parquet
Writes: paths.split/{train,test,users}.parquet, manifest.json
"""

from recopt.config import Config
from recopt.io import log
from recopt.split import run_split
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    manifest = run_split(cfg)
    log.info("split: %s", manifest["counts"])


if __name__ == "__main__":
    run(main)
