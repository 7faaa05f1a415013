"""``lsdask depth CONFIG``: whole-release depth summary, per-brick table and plot."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .sweeps import add_scheduler_args, print_summary, scheduler

log = logging.getLogger("lsdask.depth")


def add_parser(sub) -> None:
    p = sub.add_parser("depth", help="summarise the bricks' depth tables",
                       description="Sum every brick's legacysurvey-<brick>-depth.fits into "
                       "<release>-depth-summary.fits, <release>-depth.fits (one row per brick) "
                       "and <release>-depth.png.")
    p.add_argument("config", type=Path, help="release TOML")
    add_scheduler_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..graphs.depth import run_depth

    cfg = load_config(args.config)
    with scheduler(args) as client:
        summary = run_depth(cfg.layout, client=client, bands=cfg.bands)
    for brick, msg in summary["failed"].items():
        log.error("%s: %s", brick, msg)
    print_summary(summary)
    return 1 if summary["failed"] else 0
