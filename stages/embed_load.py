"""embed-load: catalog text (+ training-period tags) -> item embeddings on the catalog index.

Reads:  paths.ingest/{movies,tags}.parquet, paths.split/{train,test}.parquet (the tag cutoff);
        embed_load.vectors (+ embed_load.ids) when embed_load.encoder=precomputed
Writes: paths.embed_load/{embeddings,mmr,has_content,item_ids}.npy, manifest.json
"""

from recopt.config import Config
from recopt.embeddings import run_embed_load
from recopt.io import log
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    manifest = run_embed_load(cfg)
    log.info("embed-load: %s %s — %s", manifest["encoder"], manifest["shape"], manifest["counts"])


if __name__ == "__main__":
    run(main)
