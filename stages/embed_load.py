"""embed-load: catalog text (+ the fold's training-period tags) -> item embeddings on the catalog index.

Reads:  the ingest artifact (movies, tags) and split@<fold> (the tag cutoff);
        embed_load.vectors (+ embed_load.ids) when embed_load.encoder=precomputed
Writes: embed_load@<fold> {embeddings, mmr, has_content, item_ids}
"""

from recopt.config import FOLDS, Config
from recopt.embeddings import run_embed_load
from recopt.runlog import log
from stages._entry import Invocation, run


def main(cfg: Config, how: Invocation) -> None:
    for fold in [how.fold] if how.fold else FOLDS:
        summary = run_embed_load(cfg, fold)
        log.info("embed-load@%s: %s %s — %s", fold, summary["encoder"], summary["shape"], summary["counts"])


if __name__ == "__main__":
    run(main)
