"""``lsdask survey-bricks``: write the official brick table (survey-bricks.fits.gz)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lsdask.survey_bricks")


def add_parser(sub) -> None:
    p = sub.add_parser("survey-bricks", help="write survey-bricks.fits.gz (the 0.25-deg grid)")
    p.add_argument("-o", "--output", type=Path, default=Path("survey-bricks.fits.gz"),
                   help="output file (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..survey.bricks import brick_grid

    grid = brick_grid()
    grid.write(args.output)
    log.info("wrote %d bricks to %s", len(grid), args.output)
    return 0
