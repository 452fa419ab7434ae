"""ingest: a data source -> typed, validated parquet.

Reads:  the source in `data` (synthetic preset, a MovieLens folder, or a download)
Writes: paths.ingest/{ratings,movies,tags,providers,user_providers}.parquet, manifest.json
"""

from recopt.config import Config
from recopt.ingest import ingest
from recopt.io import log
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    manifest = ingest(cfg)
    log.info("ingest: %s — %s", manifest["source"], manifest["counts"])


if __name__ == "__main__":
    run(main)
