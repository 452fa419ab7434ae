"""Command line: `python -m recopt recommend --user 1 [--alpha 0.5] [--k 20] [--fold test] [--hits]`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from recopt.artifacts import open_artifact
from recopt.config import FOLDS, ConfigError, read_params
from recopt.errors import RecoptError
from recopt.recommend import format_recommendation, recommend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recopt")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="show one user's ranked list with every component score")
    rec.add_argument("--user", type=int, required=True, help="MovieLens userId")
    rec.add_argument("--alpha", type=float, default=None,
                     help="blend weight (default: alpha* chosen on validation, else alpha in params.yaml)")
    rec.add_argument("--k", type=int, default=20, help="list length to show")
    rec.add_argument("--fold", choices=FOLDS, default="test", help="which fold's models and pools")
    rec.add_argument("--hits", action="store_true", help="mark the user's relevant held-out items")
    rec.add_argument("--params", default="params.yaml", help="composed config of the built pipeline")
    args = parser.parse_args(argv)
    try:
        cfg = read_params(args.params)
        alpha, rerank = args.alpha, cfg.rerank
        try:  # the choices made on validation, when the tune fold has been evaluated
            sel = open_artifact(cfg.paths, "evaluate", "tune", reader="recommend").json("selection")
            cs = sel["cold_start"]
            rerank = dataclasses.replace(rerank, cold_beta=cs["beta"], cold_prior=cs["prior"],
                                         cold_mmr_lambda=cs["mmr_lambda"])
            alpha = sel["alpha"]["chosen"] if alpha is None else alpha
        except RecoptError:
            alpha = cfg.alpha if alpha is None else alpha
        out = recommend(cfg, args.user, alpha, args.k, args.fold, rerank)
    except (ConfigError, RecoptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_recommendation(out, args.hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
