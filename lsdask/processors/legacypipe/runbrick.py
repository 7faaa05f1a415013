"""legacypipe's runbrick for one brick, as a child process.

Checkpoints and stage pickles live in the release directory
(``layout.checkpoint(brick)``, ``layout.stage_pickle(brick, stage)``), so a brick killed at
walltime or by a lost node resumes on another worker from its last stage pickle and
checkpoint; both are removed after success unless ``keep_checkpoints``. A brick is done
when its tractor file and ``brick-<brick>.sha256sum`` exist and every checksum verifies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import sha256_file
from ...errors import InputError
from ...survey.layout import ReleaseLayout
from ...survey.releases import DEFAULT_RELEASE
from .launcher import make_launcher, run

log = logging.getLogger(__name__)


def read_sha256sum(path: Path) -> list[tuple[str, str]]:
    """``(hexdigest, relative path)`` pairs of a ``sha256sum`` file."""
    out = []
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        digest, _, name = ln.partition(" ")
        out.append((digest.strip().lower(), name.strip().lstrip("*")))
    return out


def verify_checksums(layout: ReleaseLayout, brick: str) -> list[str]:
    """Problems with the brick's products: missing files or checksum mismatches ([] = ok)."""
    tractor, sums = layout.tractor(brick), layout.sha256sum(brick)
    if not tractor.is_file():
        return [f"{tractor}: missing"]
    if not sums.is_file():
        return [f"{sums}: missing"]
    try:
        entries = read_sha256sum(sums)
    except (OSError, UnicodeDecodeError) as e:
        return [f"{sums}: unreadable: {e}"]
    problems = []
    listed = set()
    for digest, name in entries:
        path = layout.release_dir / name
        listed.add(path.resolve())
        if not path.is_file():
            problems.append(f"{path}: listed in {sums.name} but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: checksum differs from {sums.name}")
    if tractor.resolve() not in listed:
        problems.append(f"{tractor}: not listed in {sums.name}")
    return problems


def runbrick_done(layout: ReleaseLayout, brickname: str, settings: Any = None) -> bool:
    """The tractor file and sha256sum exist and every listed checksum verifies."""
    problems = verify_checksums(layout, brickname)
    for p in problems[:3]:
        if "missing" not in p or layout.tractor(brickname).is_file():
            log.warning("brick %s not done: %s", brickname, p)
    return not problems


def runbrick_args(layout: ReleaseLayout, brickname: str, bands: list[str], options: Any,
                  release: int, settings: Any) -> list[str]:
    """runbrick's command-line arguments for one brick of the release."""
    radec = getattr(options, "radec", None)
    where = (["--radec", *(repr(float(v)) for v in radec)] if radec
             else ["--brick", brickname])
    args = [*where, "--skip", "--threads", str(int(options.threads)),
            "--release", str(int(release)), "--bands", ",".join(bands),
            "--survey-dir", str(layout.survey_dir), "--outdir", str(layout.release_dir),
            "--checkpoint", str(layout.checkpoint(brickname)),
            "--checkpoint-period", str(int(settings.checkpoint_period)),
            "--pickle", layout.stage_pickle_pattern(brickname),
            "--width", str(int(options.width)), "--height", str(int(options.height)),
            "--pixscale", str(float(options.pixscale)), "--nsigma", str(float(options.nsigma))]
    for stage in settings.write_stages:
        args += ["--write-stage", str(stage)]
    if options.zoom:
        args += ["--zoom", *(str(int(v)) for v in options.zoom)]
    if settings.skip_calibs:
        args.append("--skip-calibs")
    if not settings.wise:
        args.append("--no-wise")
    elif settings.unwise_coadds_dir is not None:
        args += ["--unwise-dir", str(settings.unwise_coadds_dir)]
        if settings.unwise_coadds_timeresolved_dir is not None:
            args += ["--unwise-tr-dir", str(settings.unwise_coadds_timeresolved_dir)]
    if not settings.gaia_stars:
        args.append("--no-gaia")
    if not settings.tycho_stars:
        args.append("--no-tycho")
    if not settings.large_galaxies:
        args.append("--no-large-galaxies")
    if options.memory_limit_gb:
        args += ["--max-memory-gb", str(float(options.memory_limit_gb))]
    return args + [str(a) for a in settings.extra_args]


def custom_brickname(ra: float, dec: float) -> str:
    """legacypipe's name of the custom brick centred at (ra, dec): ``custom-RRRRRRpDDDDD``."""
    sign = "m" if dec < 0 else "p"
    return f"custom-{int(1000 * ra):06d}{sign}{int(1000 * abs(dec)):05d}"


def clean_checkpoints(layout: ReleaseLayout, brickname: str) -> list[Path]:
    """Remove the brick's checkpoint and stage pickles; returns what was removed."""
    gone = []
    ckpt = layout.checkpoint(brickname)
    pickles = sorted(layout.stage_pickle(brickname, "x").parent.glob(
        f"runbrick-{brickname}-*.pickle"))
    for p in [ckpt, *pickles]:
        if p.exists():
            p.unlink()
            gone.append(p)
    return gone


def run_runbrick(layout: ReleaseLayout, brickname: str, ccds: np.ndarray, bands: list[str],
                 options: Any, release: int = DEFAULT_RELEASE, config_hash: str = "",
                 settings: Any = None) -> dict[str, Any]:
    """Run legacypipe's runbrick on one brick (resuming from its pickles/checkpoint)."""
    if settings is None:
        from ...config import LegacypipeSection

        settings = LegacypipeSection()
    if getattr(options, "force", False):
        removed = clean_checkpoints(layout, brickname)
        if removed:
            print(f"{brickname}: --force: removed {len(removed)} checkpoint/pickle files",
                  flush=True)
    resumed = [p.name for p in sorted(layout.stage_pickle(brickname, "x").parent.glob(
        f"runbrick-{brickname}-*.pickle"))]
    if layout.checkpoint(brickname).exists():
        resumed.append(layout.checkpoint(brickname).name)
    if resumed:
        print(f"{brickname}: resuming from {', '.join(resumed)}", flush=True)
    layout.checkpoint(brickname).parent.mkdir(parents=True, exist_ok=True)
    layout.stage_pickle(brickname, "x").parent.mkdir(parents=True, exist_ok=True)
    launcher = make_launcher(settings, layout.survey_dir)
    if getattr(options, "force", False):
        for p in (layout.tractor(brickname), layout.sha256sum(brickname)):
            p.unlink(missing_ok=True)
    args = runbrick_args(layout, brickname, bands, options, release, settings)
    out = run(launcher, settings.runbrick_module, args, what=f"runbrick {brickname}")
    tractor = layout.tractor(brickname)
    if not tractor.exists():
        if out.nothing_to_do:
            print(f"{brickname}: legacypipe: nothing to do (no sources or no CCDs)", flush=True)
            if not options.keep_checkpoints:
                clean_checkpoints(layout, brickname)
            return {"brickname": brickname, "nccds": int(len(ccds)), "nsources": 0,
                    "empty": True, "resumed_from": resumed}
        raise InputError(f"runbrick {brickname}: legacypipe exited 0 but wrote no {tractor}")
    problems = verify_checksums(layout, brickname)
    if problems:
        raise InputError(f"runbrick {brickname}: products do not verify: {problems[0]}")
    import fitsio

    nsrc = int(fitsio.FITS(str(tractor))[1].get_nrows())
    removed = [] if options.keep_checkpoints else clean_checkpoints(layout, brickname)
    return {"brickname": brickname, "nccds": int(len(ccds)), "nsources": nsrc,
            "tractor": str(tractor), "resumed_from": resumed,
            "checkpoints_removed": len(removed)}

