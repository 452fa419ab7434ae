"""cf-load: the fold's train interactions -> user and item factors on the user and catalog indexes.

Reads:  the ingest artifact (the catalog index) and split@<fold> (train, users);
        cf_load.{user_factors,user_ids,item_factors,item_ids} when cf_load.method=precomputed
Writes: cf_load@<fold> {user_factors, item_factors, user_has_cf, item_has_cf, user_ids, item_ids}
"""

from recopt.cf import run_cf_load
from recopt.config import FOLDS, Config
from recopt.runlog import log
from stages._entry import Invocation, run


def main(cfg: Config, how: Invocation) -> None:
    for fold in [how.fold] if how.fold else FOLDS:
        summary = run_cf_load(cfg, fold)
        log.info("cf-load@%s: %s — %s (catalog coverage %.3f)", fold, summary["method"], summary["counts"],
                 summary["catalog_coverage"])


if __name__ == "__main__":
    run(main)
