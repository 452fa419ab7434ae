"""Command line: `python -m recopt recommend --user 1 --alpha 0.5 [--k 20] [--params params.yaml]`."""

from __future__ import annotations

import argparse
import sys

import polars as pl

from recopt.config import ConfigError, read_params
from recopt.recommend import recommend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recopt")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="show one user's ranked list with every component score")
    rec.add_argument("--user", type=int, required=True, help="MovieLens userId")
    rec.add_argument("--alpha", type=float, default=None, help="blend weight (default: alpha in params.yaml)")
    rec.add_argument("--k", type=int, default=20, help="list length to show")
    rec.add_argument("--params", default="params.yaml", help="composed config of the built pipeline")
    args = parser.parse_args(argv)
    try:
        cfg = read_params(args.params)
        table = recommend(cfg, args.user, cfg.alpha if args.alpha is None else args.alpha, args.k)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=220, fmt_str_lengths=40, float_precision=3):
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
