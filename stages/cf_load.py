"""cf-load: train interactions -> user and item factors on the user and catalog indexes.

Reads:  paths.ingest/movies.parquet (catalog index), paths.split/{train,users}.parquet;
        cf_load.{user_factors,user_ids,item_factors,item_ids} when cf_load.method=precomputed
Writes: paths.cf_load/{user_factors,item_factors,user_has_cf,item_has_cf,user_ids,item_ids}.npy,
        manifest.json
"""

from recopt.cf import run_cf_load
from recopt.config import Config
from recopt.io import log
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    manifest = run_cf_load(cfg)
    log.info("cf-load: %s — %s (catalog coverage %.3f)", manifest["method"], manifest["counts"],
             manifest["catalog_coverage"])


if __name__ == "__main__":
    run(main)
