"""candidates: a fold's split + embeddings + CF factors -> per-user candidate pools with component scores.

Reads:  the ingest artifact (movies, providers), split@<fold>, embed_load@<fold>, cf_load@<fold>
Writes: candidates@<fold> {pools/part-NNNNN.parquet, items, users, assembly}
"""

from recopt.config import FOLDS, Config
from recopt.pools import run_candidates
from stages._entry import Invocation, run


def main(cfg: Config, how: Invocation) -> None:
    for fold in [how.fold] if how.fold else FOLDS:
        run_candidates(cfg, fold)


if __name__ == "__main__":
    run(main)
