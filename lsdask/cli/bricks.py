"""``lsdask bricks``: the brick list (bricks touched by usable CCDs), one name per line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger("lsdask.bricks")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bricks", help="list the bricks touched by usable CCDs (queue-calibs --touching)",
        description="Print brick names touched by usable CCDs, one per line, sorted by RA, on "
        "stdout (or to -o FILE). Diagnostics go to stderr.")
    p.add_argument("config", nargs="?", type=Path,
                   help="release TOML (gives the CCD table, bands and region); optional")
    p.add_argument("--ccds", nargs="+", type=Path, metavar="FILE",
                   help="survey-ccds file(s) (.fits, .fits.gz, .kd.fits)")
    p.add_argument("--touching", action="store_true", default=True,
                   help="bricks whose pixel grid a CCD footprint overlaps (the default and only "
                   "mode; accepted for queue-calibs compatibility)")
    p.add_argument("--region", help="named region (built-in or from the config's [regions])")
    p.add_argument("--minra", type=float)
    p.add_argument("--maxra", type=float)
    p.add_argument("--mindec", type=float)
    p.add_argument("--maxdec", type=float)
    p.add_argument("--bands", help="bands to use, e.g. grz (default: config bands, or all)")
    p.add_argument("--ignore-cuts", action="store_true", help="use CCDs whatever their ccd_cuts")
    p.add_argument("-o", "--output", type=Path, help="write the list to FILE instead of stdout")
    p.set_defaults(func=run)


def _region(args, cfg):
    from ..config import RegionSection, resolve_region

    box = [args.minra, args.maxra, args.mindec, args.maxdec]
    user = cfg.regions if cfg else {}
    src = str(cfg.path) if cfg else "command line"
    if args.region and any(v is not None for v in box):
        raise UsageError("give either --region or --minra/--maxra/--mindec/--maxdec, not both")
    if args.region:
        return resolve_region(RegionSection(name=args.region), user, src, "--region")
    if any(v is not None for v in box):
        if any(v is None for v in box):
            raise UsageError("--minra, --maxra, --mindec and --maxdec must be given together")
        from ..survey.regions import Region

        if not -90 <= args.mindec <= args.maxdec <= 90:
            raise UsageError("need -90 <= --mindec <= --maxdec <= 90")
        return Region(args.minra, args.maxra, args.mindec, args.maxdec)
    return cfg.region_box() if cfg else None


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..config import load_config
    from ..survey.ccds import read_ccds
    from ..survey.touching import bricks_touching_ccds

    cfg = load_config(args.config) if args.config else None
    paths = args.ccds
    if not paths:
        if cfg is None:
            raise UsageError("give --ccds FILE... or a release CONFIG")
        paths = [cfg.layout.survey_ccds]
    bands = list(args.bands) if args.bands else (cfg.bands if cfg else None)
    ignore = args.ignore_cuts or (cfg.stages.bricks.ignore_cuts if cfg else False)
    region = _region(args, cfg)
    ccds = read_ccds(paths)
    log.info("read %d CCDs from %d file(s)", len(ccds), len(paths))
    names = bricks_touching_ccds(ccds, region=region, bands=bands, ignore_cuts=ignore)
    text = "".join(f"{n}\n" for n in names)
    if args.output:
        write_text_atomic(args.output, text)
        log.info("wrote %d bricks to %s", len(names), args.output)
    else:
        sys.stdout.write(text)
    return 0
