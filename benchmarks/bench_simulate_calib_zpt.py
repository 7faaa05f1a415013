"""Benchmark: simulation time per exposure, lite calibs + zeropoints time per CCD.

Three configurations: the small default (4 CCDs of 512 x 1024 per exposure, g/r/z),
the demo's 1"/px pixels, and one full-size DECam CCD (2046 x 4094). Baseline in the
same run: reading the exposure's pixels (ooi+oow+ood, all CCDs) with fitsio, the
unavoidable I/O floor.
Usage::

    python benchmarks/bench_simulate_calib_zpt.py [--skip-full] [--only-demo]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import fitsio

from lsdask.processors.lite import run_calibs, run_zeropoints
from lsdask.simulate import SimConfig, simulate_survey
from lsdask.survey.camera import companion
from lsdask.survey.layout import ReleaseLayout


def read_pixels(layout, f) -> None:
    for kind in ("ooi", "oow", "ood"):
        rel = f if kind == "ooi" else companion(f, kind)
        with fitsio.FITS(str(layout.image(rel))) as ff:
            for h in ff[1:]:
                h.read()


def run(label: str, cfg: SimConfig, root: Path) -> None:
    layout = ReleaseLayout(root / label)
    t0 = time.time()
    res = simulate_survey(layout.survey_dir, cfg)
    t_sim = time.time() - t0
    nexp, nccd = res["n_exposures"], res["n_ccds"]
    t0 = time.time()
    for f in res["image_filenames"]:
        read_pixels(layout, f)
    t_read = time.time() - t0
    t0 = time.time()
    for f in res["image_filenames"]:
        run_calibs(layout, f, None)
    t_cal = time.time() - t0
    t0 = time.time()
    for f in res["image_filenames"]:
        run_zeropoints(layout, f, None)
    t_zpt = time.time() - t0
    w, h = (2046, 4094) if cfg.full_size else (cfg.ccd_width, cfg.ccd_height)
    print(f"[{label}] {nexp} exposures, {nccd} CCDs of {w}x{h} px")
    print(f"  simulate (incl. survey-bricks, refcat): {t_sim:.2f} s total, "
          f"{t_sim / nexp:.2f} s/exposure, {t_sim / nccd:.2f} s/CCD")
    print(f"  calibs:     {t_cal / nccd:.2f} s/CCD   zeropoints: {t_zpt / nccd:.2f} s/CCD   "
          f"(calib+zpt {(t_cal + t_zpt) / nccd:.2f} s/CCD)")
    print(f"  baseline pixel read (ooi+oow+ood): {t_read / nccd:.3f} s/CCD -> calib+zpt is "
          f"{(t_cal + t_zpt) / max(t_read, 1e-9):.0f}x the I/O floor")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "--only-demo" not in sys.argv:
            run("small", SimConfig(ramin=180.0, ramax=180.1, decmin=32.0, decmax=32.1), root)
        # the demo's pixel scale (1"/px: undersampled, finely sampled PSF models)
        run("demo-1arcsec-px", SimConfig(ramin=180.0, ramax=180.25, decmin=32.0, decmax=32.25,
                                         pixscale=1.0), root)
        if "--only-demo" in sys.argv:
            return
        if "--skip-full" not in sys.argv:
            run("full-decam-ccd", SimConfig(ramin=180.0, ramax=180.02, decmin=32.0,
                                            decmax=32.02, bands=("r",), n_ccds=1,
                                            full_size=True), root)


if __name__ == "__main__":
    main()
