"""Helpers for the runbrick tests and benchmark: a simulated survey around a brick with
*perfect* calibrations (the simulator's true PSF, sky and zeropoint per CCD), so runbrick
is checked against truth on its own, without calibration errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsdask.simulate import SimConfig, moffat_stamp, pixel_oversample, simulate_survey
from lsdask.survey.bricks import brick_grid
from lsdask.survey.ccds import SURVEY_CCDS_DTYPE
from lsdask.survey.layout import ReleaseLayout
from lsdask.survey.psfex import PsfExModel, write_psfex
from lsdask.survey.splinesky import SPLINESKY_DTYPE, write_splinesky

PSF_HALF = 31
FINE_HALF = 15


def noisy_ccd(img: np.ndarray, noise: float, rng: np.random.Generator, wcs, pixscale: float,
              fwhm_arcsec: float, beta: float, half_psf: int, row: int):
    """An in-memory r-band :class:`~lsdask.processors.lite.ccdimage.CcdImage` of the noise-free
    image ``img`` (nanomaggies) plus Gaussian noise ``noise`` per pixel, its PSF the Moffat
    the sources were rendered with (for the fitting functions; no files)."""
    from lsdask.processors.lite.ccdimage import CcdImage, CcdWcs

    img = img + rng.normal(0, noise, img.shape)
    psf = moffat_stamp(fwhm_arcsec / pixscale, beta, half_psf)
    psf /= psf.sum()
    return CcdImage(row=row, band="r", x0=0, y0=0, img=img.astype(np.float32),
                    ivar=np.full(img.shape, noise ** -2, np.float32),
                    dq=np.zeros(img.shape, np.int16), wcs=CcdWcs(wcs), pmap=None, psf=psf,
                    psfmodel=None, fwhm=fwhm_arcsec,
                    psfnorm=float(np.sqrt((psf ** 2).sum())), galnorm=0.0, mjd=0.0)


def _s(v) -> str:
    return v.decode().strip() if isinstance(v, bytes) else str(v).strip()


def _model_image(fw: float, beta: float, ov: int) -> np.ndarray:
    """The true PSF as a PsfEx basis image: natively sampled (``ov == 1``), else pixel-
    integrated and sampled ``ov`` times finer, as the simulator renders it."""
    if ov == 1:
        return moffat_stamp(fw, beta, PSF_HALF)
    from scipy.ndimage import uniform_filter

    fine = moffat_stamp(fw * ov, beta, FINE_HALF * ov)
    eff = uniform_filter(fine, size=ov, mode="constant")
    return eff / eff.sum()


def perfect_calibs(layout: ReleaseLayout) -> np.ndarray:
    """Write true-PSF PsfEx files (linear in y, as the simulator's FWHM gradient), flat
    spline skies at the true level, and return survey-ccds rows with the true zeropoints."""
    import fitsio

    ccdtruth = fitsio.read(str(layout.truth), ext="CCDS")
    rows = []
    by_file: dict[str, list] = {}
    for t in ccdtruth:
        by_file.setdefault(_s(t["image_filename"]), []).append(t)
    for fname, ts in by_file.items():
        models, skies = [], np.zeros(len(ts), dtype=SPLINESKY_DTYPE(2, 2))
        with fitsio.FITS(str(layout.image(fname))) as f:
            phdr = f[0].read_header()
            for k, t in enumerate(ts):
                ccd = _s(t["ccdname"])
                hdr = f[ccd].read_header()
                w, h = int(hdr["ZNAXIS1"]), int(hdr["ZNAXIS2"])
                fw = float(t["fwhm"])
                beta = float(t["psf_beta"])
                ov = pixel_oversample(fw)
                lo = _model_image(fw * (1 - 0.015), beta, ov)
                hi = _model_image(fw * (1 + 0.015), beta, ov)
                mid = _model_image(fw, beta, ov)
                mask = np.stack([mid, np.zeros_like(mid), 0.5 * (hi - lo)]).astype(np.float32)
                models.append(PsfExModel(mask, polzero=((w + 1) / 2.0, (h + 1) / 2.0),
                                         polscal=(w / 2.0, h / 2.0), poldeg=1, psf_fwhm=fw,
                                         psf_samp=1.0 / ov, ccdname=ccd,
                                         expnum=int(t["expnum"])))
                sk = skies[k]
                sk["gridw"], sk["gridh"] = 2, 2
                sk["gridvals"] = float(t["sky"])
                sk["xgrid"] = [0, w - 1]
                sk["ygrid"] = [0, h - 1]
                sk["order"] = 1
                sk["ccdname"] = ccd
                sk["expnum"] = int(t["expnum"])
                sk["sig1"] = 0
                r = np.zeros(1, dtype=SURVEY_CCDS_DTYPE)[0]
                r["image_filename"] = fname
                r["image_hdu"] = f[ccd].get_extnum()
                r["camera"] = "decam"
                r["expnum"] = int(t["expnum"])
                r["ccdname"] = ccd
                r["filter"] = _s(t["filter"])
                r["exptime"] = float(phdr["EXPTIME"])
                r["mjd_obs"] = float(phdr["MJD-OBS"])
                r["fwhm"] = fw
                r["width"], r["height"] = w, h
                for key in ("crpix1", "crpix2", "crval1", "crval2", "cd1_1", "cd1_2", "cd2_1",
                            "cd2_2"):
                    r[key] = float(hdr[key.upper()])
                r["ra"], r["dec"] = r["crval1"], r["crval2"]
                r["ccdzpt"] = r["zpt"] = float(t["zpt"])
                rows.append(r)
        write_psfex(layout.psfex(fname), models)
        write_splinesky(layout.splinesky(fname), skies)
    return np.array(rows, dtype=SURVEY_CCDS_DTYPE)


def simulate_brick(survey_dir: Path, brickname: str, width: int, pad_deg: float = 0.03,
                   seed: int = 7, passes: int = 2, **kw) -> tuple[ReleaseLayout, np.ndarray]:
    """Simulate a survey covering the central ``width`` pixels of a brick (+ pad)."""
    b = brick_grid().brick(brickname)
    half = width * 0.262 / 3600 / 2 + pad_deg
    cosd = np.cos(np.deg2rad(b.dec))
    cfg = SimConfig(ramin=b.ra - half / cosd, ramax=b.ra + half / cosd, decmin=b.dec - half,
                    decmax=b.dec + half, passes=passes, seed=seed, **kw)
    simulate_survey(survey_dir, cfg)
    layout = ReleaseLayout(survey_dir)
    return layout, perfect_calibs(layout)
