"""candidates: split + embeddings + CF factors -> per-user candidate pools with component scores.

Reads:  paths.ingest (movies, providers), paths.split, paths.embed_load, paths.cf_load
Writes: paths.candidates/{pools/, items.parquet, users.parquet, assembly.json, manifest.json}
"""

from recopt.config import Config
from recopt.pools import run_candidates
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    run_candidates(cfg)


if __name__ == "__main__":
    run(main)
