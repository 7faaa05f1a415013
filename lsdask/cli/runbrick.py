"""``lsdask runbrick --brick NAME``: process one brick (as legacypipe's runbrick).

Either a release CONFIG (layout, bands, release number, processor and
``[stages.runbrick]`` options) or ``--survey-dir`` / ``--outdir`` / ``--ccds``;
command-line options override the config's. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path

from ..errors import UsageError
from ..survey.releases import DEFAULT_RELEASE

log = logging.getLogger("lsdask.runbrick")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "runbrick", help="process one brick: coadds, detection, photometry, tractor catalogue",
        description="Run the brick processor on one brick from a release CONFIG or from "
        "--survey-dir/--outdir/--ccds (legacypipe runbrick style). Prints a JSON summary.")
    p.add_argument("config", nargs="?", type=Path, help="release TOML (optional)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--brick", help="brick name, e.g. 1804p325")
    where.add_argument("--radec", type=float, nargs=2, metavar=("RA", "DEC"),
                       help="legacypipe processor: a custom brick centred here "
                       "(named custom-<ra><p|m><dec>, as legacypipe does)")
    p.add_argument("--survey-dir", type=Path, help="LEGACY_SURVEY_DIR (inputs)")
    p.add_argument("--outdir", "-d", type=Path, help="output (release) directory")
    p.add_argument("--ccds", nargs="+", type=Path, metavar="FILE",
                   help="survey-ccds file(s) (default: the layout's, else survey-ccds-*.fits.gz "
                   "in the survey dir)")
    p.add_argument("--bands", help="bands, e.g. grz (default: config bands, else grz)")
    p.add_argument("--release", type=int, help="tractor release number (default 9010, DR9 DECam)")
    p.add_argument("--threads", type=int)
    p.add_argument("--width", "-W", type=int)
    p.add_argument("--height", "-H", type=int)
    p.add_argument("--pixscale", type=float)
    p.add_argument("--nsigma", type=float)
    p.add_argument("--zoom", type=int, nargs=4, metavar=("X0", "X1", "Y0", "Y1"))
    p.add_argument("--resample-kernel", choices=("lanczos3", "spline3"))
    p.add_argument("--memory-limit-gb", type=float)
    p.add_argument("--keep-checkpoints", action="store_true", default=None)
    p.add_argument("--force", action="store_true", default=None,
                   help="rerun even when the tractor catalogue exists")
    p.add_argument("--processor", choices=("lite", "legacypipe"),
                   help="brick processor (default: the config's, else lite); legacypipe "
                   "runs the real runbrick through the config's [legacypipe] launcher or "
                   "$LSDASK_LEGACYPIPE_PREFIX")
    p.add_argument("--legacypipe-arg", action="append", default=[], metavar="ARG",
                   dest="legacypipe_args",
                   help="extra argument passed to legacypipe's runbrick (repeat; e.g. "
                   "--legacypipe-arg=--no-gaia)")
    p.set_defaults(func=run)


def _find_ccds(survey_dir: Path) -> list[Path]:
    found = sorted(survey_dir.glob("survey-ccds-*.fits*"))
    fits = [f for f in found if not f.name.endswith(".kd.fits")]
    return fits or found


def run(args: argparse.Namespace) -> int:
    from ..config import LegacypipeSection, RunbrickOptions, load_config
    from ..processors import ProcessorRef
    from ..survey.ccds import read_ccds
    from ..survey.layout import ReleaseLayout

    cfg = load_config(args.config) if args.config else None
    if cfg is not None:
        layout = cfg.layout
        if args.survey_dir or args.outdir:
            layout = ReleaseLayout(args.survey_dir or layout.survey_dir,
                                   args.outdir or layout.release_dir, layout.name)
        options = dataclasses.replace(cfg.stages.runbrick)
        bands = cfg.bands
        release = cfg.release.release
        processor = cfg.processor_name("runbrick")
        settings = cfg.legacypipe
        config_hash = cfg.hash()
    else:
        if not args.survey_dir:
            raise UsageError("give a release CONFIG or --survey-dir")
        layout = ReleaseLayout(args.survey_dir, args.outdir)
        options = RunbrickOptions()
        bands = ["g", "r", "z"]
        release, processor, config_hash = DEFAULT_RELEASE, "lite", ""
        settings = LegacypipeSection()
    processor = args.processor or processor
    if args.legacypipe_args:
        settings = dataclasses.replace(settings,
                                       extra_args=[*settings.extra_args, *args.legacypipe_args])
    if args.radec is not None:
        from ..processors.legacypipe.runbrick import custom_brickname

        options.radec = list(args.radec)
        args.brick = custom_brickname(*args.radec)
    for opt in ("threads", "width", "height", "pixscale", "nsigma", "zoom", "resample_kernel",
                "memory_limit_gb", "keep_checkpoints", "force"):
        v = getattr(args, opt)
        if v is not None:
            setattr(options, opt, v)
    if args.width is not None and args.height is None:
        options.height = args.width
    if args.bands:
        bands = list(args.bands.replace(",", ""))
    if args.release is not None:
        release = args.release
    proc = ProcessorRef(processor, settings if processor == "legacypipe" else None)
    if not options.force and proc.call("runbrick_done", layout, args.brick):
        log.info("brick %s is done (%s); use --force to rerun", args.brick,
                 layout.tractor(args.brick))
        print(json.dumps({"brick": args.brick, "skipped": True}))
        return 0
    paths = args.ccds
    if not paths:
        paths = [layout.survey_ccds] if layout.survey_ccds.exists() else _find_ccds(
            layout.survey_dir)
        if not paths:
            raise UsageError(f"no survey-ccds file in {layout.survey_dir}; give --ccds FILE")
    ccds = read_ccds(paths)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON summary alone
        res = proc.call("run_runbrick", layout, args.brick, ccds, bands, options,
                        release=release, config_hash=config_hash)
    json.dump(res, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0
