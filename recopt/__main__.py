"""Command line of the library:

    python -m recopt recommend --user 1 [--alpha 0.5] [--k 20] [--fold test] [--hits] [--strict]
    python -m recopt plots [REV ...] [--out DIR]     (dvc plots diff as a page that renders offline)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recopt.config import FOLDS, ConfigError, read_params
from recopt.errors import RecoptError
from recopt.plots import offline_plots
from recopt.recommend import format_recommendation, recommend
from recopt.selection import config_cold_rule
from recopt.study import read_selection


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
    rec.add_argument("--strict", action="store_true",
                     help="refuse, rather than fall back to the config's alpha and cold rule, when the choices made "
                          "on validation cannot be read")
    plots = sub.add_parser("plots", help="`dvc plots diff` as a page that renders without a network")
    plots.add_argument("revs", nargs="*", help="git revisions or experiment names (default: the workspace)")
    plots.add_argument("--out", default="dvc_plots", help="folder of the page (default: dvc_plots)")
    plots.add_argument("--params", default="params.yaml", help="composed config of the built pipeline")
    args = parser.parse_args(argv)
    if args.command == "plots":
        try:
            page = offline_plots(read_params(args.params).paths, args.revs, Path(args.out))
        except (ConfigError, RecoptError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"file://{page.resolve()}")
        return 0
    try:
        cfg = read_params(args.params)
        try:  # the choices made on validation, when evaluate@tune is current
            sel = read_selection(cfg, "recommend")
            alpha, cold = sel.alpha.chosen if args.alpha is None else args.alpha, sel.cold
        except RecoptError as err:
            if args.strict:
                raise
            alpha, cold = cfg.alpha if args.alpha is None else args.alpha, config_cold_rule(cfg)
            print(f"warning: not the choices made on validation -- alpha={alpha!r} and the config's cold rule "
                  f"({cold.label}) instead, because {err}", flush=True)
        out = recommend(cfg, args.user, alpha, cold, args.k, args.fold)
    except (ConfigError, RecoptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_recommendation(out, args.hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
