"""``lsdask match CONFIG EXTERNAL.fits``: match an external catalogue to the primary sources."""

from __future__ import annotations

import argparse
from pathlib import Path

from .sweeps import add_scheduler_args, print_summary, scheduler


def add_parser(sub) -> None:
    p = sub.add_parser("match", help="match an external catalogue to the tractor sources",
                       description="Nearest brick_primary tractor source within --radius of "
                       "each external object (RA/DEC or PLUG_RA/PLUG_DEC); writes "
                       "external/survey-<release>-<name>.fits (EXTNAME MATCHED).")
    p.add_argument("config", type=Path, help="release TOML")
    p.add_argument("external", type=Path, help="external catalogue (FITS table)")
    p.add_argument("--radius", type=float, default=None,
                   help="match radius in arcsec (default: config, 1.5)")
    p.add_argument("--copy", nargs="+", default=[], metavar="COL",
                   help="external columns to copy into the output")
    p.add_argument("--name", help="output name (default: external file name stem)")
    p.add_argument("-o", "--output", type=Path, help="output path (default: the layout's)")
    p.add_argument("--no-convert", action="store_true",
                   help="do not bring the tractor Parquet dataset up to date first")
    add_scheduler_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..graphs.match import run_match
    from ..graphs.parquet import run_parquet

    cfg = load_config(args.config)
    radius = args.radius if args.radius is not None else cfg.stages.match.radius
    with scheduler(args) as client:
        if not args.no_convert:
            run_parquet(cfg.layout, client=client)
        summary = run_match(cfg.layout, args.external, client=client, radius=radius,
                            copy=args.copy, name=args.name, output=args.output)
    print_summary(summary)
    return 0
