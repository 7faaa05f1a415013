"""``lsdask simulate``: write a small simulated survey in the CP format (see lsdask.simulate)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("lsdask.simulate")


def _floats(n: int):
    def parse(s: str) -> list[float]:
        v = [float(x) for x in s.split(",")]
        if len(v) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {s!r}")
        return v
    return parse


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="write a simulated survey (CP images, Gaia-like "
                       "reference chunks, truth catalogue)")
    p.add_argument("-o", "--out", type=Path, required=True, help="survey directory to write")
    p.add_argument("--region", default=None,
                   help="named region (e.g. demo) instead of --ra/--dec")
    p.add_argument("--ra", type=_floats(2), default=[180.0, 180.1], metavar="RAMIN,RAMAX")
    p.add_argument("--dec", type=_floats(2), default=[32.0, 32.1], metavar="DECMIN,DECMAX")
    p.add_argument("--bands", default="g,r,z", help="comma-separated bands (default g,r,z)")
    p.add_argument("--camera", default="decam", choices=["decam", "mosaic", "90prime"])
    p.add_argument("--passes", type=int, default=1, help="dithered passes per band")
    p.add_argument("--ccd-size", type=_floats(2), default=[512, 1024], metavar="WIDTH,HEIGHT",
                   help="CCD size in pixels (default 512,1024)")
    p.add_argument("--full-size", action="store_true",
                   help="real CCD size (DECam 2046x4094)")
    p.add_argument("--n-ccds", type=int, default=4,
                   help="innermost CCDs of the focal plane per exposure (0: all)")
    p.add_argument("--pixscale", type=float, default=None, help="arcsec/pixel (default camera's)")
    p.add_argument("--star-density", type=float, default=None, help="stars per deg^2")
    p.add_argument("--galaxy-density", type=float, default=None, help="galaxies per deg^2")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..simulate import SimConfig, simulate_survey

    ra, dec = args.ra, args.dec
    if args.region:
        from ..survey.regions import REGIONS

        if args.region not in REGIONS:
            raise UsageError(f"unknown region {args.region!r} (known: {', '.join(REGIONS)})")
        r = REGIONS[args.region]
        ra, dec = [r.ramin, r.ramax], [r.decmin, r.decmax]
    if dec[0] >= dec[1]:
        raise UsageError("--dec must be DECMIN,DECMAX with DECMIN < DECMAX")
    kw = dict(ramin=ra[0], ramax=ra[1], decmin=dec[0], decmax=dec[1],
              bands=tuple(b.strip() for b in args.bands.split(",") if b.strip()),
              camera=args.camera, passes=args.passes, ccd_width=int(args.ccd_size[0]),
              ccd_height=int(args.ccd_size[1]), full_size=args.full_size,
              n_ccds=args.n_ccds or None, pixscale=args.pixscale, seed=args.seed)
    if args.star_density is not None:
        kw["star_density"] = args.star_density
    if args.galaxy_density is not None:
        kw["galaxy_density"] = args.galaxy_density
    t0 = time.time()
    res = simulate_survey(args.out, SimConfig(**kw),
                          progress=lambda f: log.debug("wrote %s", f))
    log.info("wrote %d exposures (%d CCDs, %d sources) under %s in %.1f s", res["n_exposures"],
             res["n_ccds"], res["n_sources"], args.out, time.time() - t0)
    return 0
