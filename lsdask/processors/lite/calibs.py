"""Lite calibrations: per CCD a sky model and a PSF model, merged per exposure.

Sky: ``sep`` background meshes (box 512 px for full-size CCDs, smaller for small
ones) with sources masked (detections dilated), sampled on a node grid and
stored in legacypipe's splinesky format (``gridvals, xgrid, ygrid, x0, y0,
order, sky_med, sky_john, sig1, percentiles ...``), one row per CCD.

PSF: bright, unsaturated, isolated, compact detections (neighbours masked with the
segmentation map) are fitted with circular Moffats for their centres (those whose FWHM
strays from the others', compact galaxies where pixels are coarse, are dropped), then jointly
(each with its own centre, flux and sky pedestal) for one beta and a FWHM linear in position
(degree 0 with fewer than 15 stars). The exposure's beta is the error-weighted mean
of its CCDs' betas, and each CCD's FWHM is refitted at it (a CCD fitted alone on the
fly keeps its own). The
model is written in the real merged PsfEx format (``psf_mask[3, 63, 63]`` basis for
a degree-1 polynomial in X_IMAGE, Y_IMAGE; unit sum; ``psf_fwhm`` in pixels), so
:mod:`lsdask.survey.psfex` reads lite and real models alike. Undersampled images
(FWHM < 3 px, e.g. the demo's 1"/px) get a pixel-integrated model sampled 5x finer
(``psf_samp = 0.2``, ``psf_mask[3, 151, 151]``). A CCD without usable stars gets a
fallback Moffat with the header's FWHM (or 1.3 arcsec) and ``accepted = 0``; the
summary lists it.

Options (``CalibsOptions``; extra attributes read with defaults): ``force``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.lib.recfunctions  # noqa: F401 (append_fields)

from ...phases import phase
from ...survey.camera import get_camera
from ...survey.layout import image_basename
from ...survey.psfex import PsfExModel, poly_terms, read_psfex_all, write_psfex
from ...survey.splinesky import SPLINESKY_DTYPE, read_splinesky_all, write_splinesky
from .ccdio import CcdData, header_float, open_exposure
from .psfphot import (
    BETA_BOUNDS,
    MoffatShape,
    fit_moffat,
    fit_moffat_shared,
    moffat_stamp,
    pixel_oversample,
)

log = logging.getLogger(__name__)

PSF_HALF = 31  # 63 x 63 stamps, as legacypipe's PsfEx models
N_PSF_STARS = 25  # the brightest usable stars a CCD's PSF is fitted to
LEGPIPEV = "lsdask-lite"


def _valid(path, nrows: int | None = None) -> bool:
    import fitsio

    try:
        with fitsio.FITS(str(path)) as f:
            n = f[1].get_nrows()
        return n > 0 and (nrows is None or n == nrows)
    except (OSError, ValueError, RuntimeError, IndexError):
        return False


def calibs_done(layout, image_filename: str) -> bool:
    """Both merged calib files exist and are readable tables."""
    return _valid(layout.psfex(image_filename)) and _valid(layout.splinesky(image_filename))


def _box_size(w: int, h: int) -> int:
    return int(np.clip(min(w, h) // 4 // 32 * 32, 32, 512))


def fit_sky(ccd: CcdData) -> tuple[np.ndarray, dict, np.ndarray]:
    """Sky image, a splinesky row (as a dict) and the source mask of one CCD."""
    import sep
    from scipy.ndimage import binary_dilation

    img, good = ccd.img, ccd.good
    h, w = img.shape
    if np.count_nonzero(good) < 0.05 * img.size:
        raise ValueError("fewer than 5% usable pixels (weight zero or DQ flagged)")
    box = _box_size(w, h)
    data = np.ascontiguousarray(img, dtype=np.float64)
    bad = ~good
    srcmask = np.zeros_like(bad)
    if min(w, h) >= 2 * box:
        bkg = sep.Background(data, mask=bad, bw=box, bh=box, fw=3, fh=3)
        rms = bkg.rms()
        try:
            _, seg = sep.extract(data - bkg.back(), 2.0, err=rms, mask=bad, minarea=5,
                                 segmentation_map=True)
            srcmask = binary_dilation(seg > 0, iterations=3)
        except Exception as e:  # noqa: BLE001 - sep raises plain Exception on overflow
            log.debug("sep.extract for the sky mask failed: %s", e)
        bkg = sep.Background(data, mask=bad | srcmask, bw=box, bh=box, fw=3, fh=3)
        sky = bkg.back().astype(float)
    else:  # tiny cutouts: a constant sky
        v = img[good]
        sky = np.full(img.shape, float(np.median(v)))
    nx = max(2, math.ceil(w / box) + 1)
    ny = max(2, math.ceil(h / box) + 1)
    xg = np.round(np.linspace(0, w - 1, nx)).astype(int)
    yg = np.round(np.linspace(0, h - 1, ny)).astype(int)
    gridvals = sky[np.ix_(yg, xg)]
    use = good & ~srcmask
    if np.count_nonzero(use) < 100:
        use = good
    resid = (img - sky)[use]
    med = float(np.median(img[use]))
    mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    clip = resid[np.abs(resid) < 3 * mad] if mad > 0 else resid
    pct = np.percentile(resid, [10, 50, 90])
    hist, edges = np.histogram(img[use], bins=200, range=(med - 5 * mad, med + 5 * mad + 1e-9))
    mode = float(0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1]))
    row = dict(gridw=nx, gridh=ny, gridvals=gridvals, xgrid=xg, ygrid=yg, x0=0, y0=0,
               order=min(3, nx - 1, ny - 1), skyclass="tractor.splinesky.SplineSky",
               legpipev=LEGPIPEV, sig1=mad, sky_mode=mode, sky_med=med,
               sky_john=float(med + np.mean(clip)), sky_fmasked=float(np.mean(srcmask)),
               sky_p10=pct[0], sky_p50=pct[1], sky_p90=pct[2], boxsize=box)
    return sky, row, srcmask


def _star_candidates(ccd: CcdData, sub: np.ndarray, half: int) -> np.ndarray:
    """Detections that look like bright, isolated, unsaturated point sources."""
    import sep

    err = np.where(ccd.ivar > 0, 1.0 / np.sqrt(np.maximum(ccd.ivar, 1e-30)), 0.0)
    data = np.ascontiguousarray(sub, dtype=np.float64)
    bad = ~ccd.good & ~ccd.saturated
    try:
        objs, seg = sep.extract(data, 5.0, err=np.ascontiguousarray(err), mask=bad, minarea=5,
                                segmentation_map=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"source detection failed: {e}") from None
    if len(objs) == 0:
        return objs, seg
    objs = np.lib.recfunctions.append_fields(objs, "segid", np.arange(1, len(objs) + 1),
                                             usemask=False)
    h, w = sub.shape
    sat_level = header_float(ccd.hdr, ("SATURATE", "SATURATA"), np.inf)
    x, y = objs["x"], objs["y"]
    keep = (x > half) & (x < w - 1 - half) & (y > half) & (y < h - 1 - half)
    keep &= objs["peak"] < 0.5 * (sat_level - np.median(ccd.img[ccd.good]))
    keep &= objs["flag"] == 0
    snr = objs["flux"] / np.sqrt(np.maximum(objs["npix"], 1)) / np.maximum(np.median(err[err > 0]),
                                                                           1e-9)
    keep &= snr > 20
    # isolation: no detection within the fitting box that is >20% as bright (fainter
    # neighbours are masked with the segmentation map when fitting)
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    near = (np.abs(dx) < half + 4) & (np.abs(dy) < half + 4)
    np.fill_diagonal(near, False)
    brightish = objs["flux"][None, :] > 0.2 * objs["flux"][:, None]
    keep &= ~np.any(near & brightish, axis=1)
    # saturated pixels nearby
    for i in np.flatnonzero(keep):
        ix, iy = int(round(x[i])), int(round(y[i]))
        if ccd.saturated[iy - half:iy + half + 1, ix - half:ix + half + 1].any():
            keep[i] = False
    cand = objs[keep]
    if len(cand) >= 3:
        # compact: stars have the smallest half-light radii within a fixed aperture (the
        # isophotal moments sep returns grow with brightness, so cutting on them kept the
        # faint stars and the noise that made them look compact)
        r50, _ = sep.flux_radius(data, cand["x"], cand["y"], np.full(len(cand), float(half)),
                                 0.5, seg_id=cand["segid"], segmap=seg, mask=bad, subpix=5)
        ref = np.percentile(r50, 25)
        cand = cand[(r50 > 0.8 * ref) & (r50 < 1.2 * ref)]
    return cand[np.argsort(-cand["flux"])][:2 * N_PSF_STARS], seg


def _stamp_ivar(ccd: CcdData, seg: np.ndarray, sl, segid: int) -> np.ndarray:
    """Inverse variance of a star stamp with other detections masked."""
    s = seg[sl]
    return ccd.ivar[sl] * ccd.good[sl] * ((s == 0) | (s == segid))


@dataclass
class PsfStars:
    """The star stamps of one CCD a PSF shape is fitted to."""
    stamps: np.ndarray
    ivars: np.ndarray
    offsets: np.ndarray  # sub-pixel centre of each star in its stamp
    uv: np.ndarray | None  # normalised positions (None: too few stars for a linear FWHM)
    oversample: int
    polzero: tuple[float, float]
    polscal: tuple[float, float]
    fwhm0: float
    beta0: float
    loaded: int
    chi2: float


def psf_stars(ccd: CcdData, sub: np.ndarray, pixscale: float) -> PsfStars:
    """Bright isolated stars of one CCD, each fitted alone for its centre (raises
    ValueError when fewer than 3 are usable)."""
    h, w = sub.shape
    fw_hdr = header_float(ccd.hdr, ("FWHM",), 1.3 / pixscale)
    half = int(np.clip(math.ceil(2.5 * fw_hdr), 6, 15))
    cand, seg = _star_candidates(ccd, sub, half)
    if len(cand) < 3:
        raise ValueError(f"only {len(cand)} usable PSF stars")
    ov = pixel_oversample(fw_hdr)
    fits, pos = [], []
    for c in cand:
        ix, iy = int(round(c["x"])), int(round(c["y"]))
        sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        f = fit_moffat(sub[sl], _stamp_ivar(ccd, seg, sl, c["segid"]), fwhm0=fw_hdr,
                       oversample=ov)
        if f.ok and np.isfinite(f.fwhm) and f.chi2 < 10:
            fits.append(f)
            pos.append((ix + f.dx, iy + f.dy, c["segid"]))
    fits, pos = _clip_fwhm(fits, pos)
    if len(fits) < 3:
        raise ValueError(f"only {len(fits)} PSF stars could be fitted")
    polzero = ((w + 1) / 2.0, (h + 1) / 2.0)
    polscal = (float(w), float(h))
    stamps, ivs, offs, uv = [], [], [], []
    for p in pos[:N_PSF_STARS]:
        ix, iy = int(round(p[0])), int(round(p[1]))
        sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        stamps.append(sub[sl])
        ivs.append(_stamp_ivar(ccd, seg, sl, p[2]))
        offs.append((p[0] - ix, p[1] - iy))
        uv.append(((p[0] + 1 - polzero[0]) / polscal[0], (p[1] + 1 - polzero[1]) / polscal[1]))
    return PsfStars(np.array(stamps), np.array(ivs), np.array(offs),
                    np.array(uv) if len(stamps) >= 15 else None, ov, polzero, polscal,
                    fwhm0=float(np.median([f.fwhm for f in fits])),
                    beta0=float(np.clip(np.median([f.beta for f in fits]), 2.0, 6.0)),
                    loaded=len(cand), chi2=float(np.median([f.chi2 for f in fits])))


def _clip_fwhm(fits: list, pos: list) -> tuple[list, list]:
    """The star fits whose own FWHM is within max(4 robust sigma, 5 %) of their median.

    Compact galaxies pass the half-light-radius cut where pixels are coarse (an r_e = 0.5"
    galaxy at 1"/px and 1.6" seeing fits a 20 % wider Moffat); two of them on one side of a
    CCD tilted its FWHM plane by 8 % and its PSF fluxes by 3 %."""
    if len(fits) < 5:
        return fits, pos
    fw = np.array([f.fwhm for f in fits])
    med = np.median(fw)
    tol = max(4 * 1.4826 * np.median(np.abs(fw - med)), 0.05 * med)
    keep = np.abs(fw - med) <= tol
    return [f for f, k in zip(fits, keep, strict=True) if k], \
        [p for p, k in zip(pos, keep, strict=True) if k]


def fit_shape(stars: PsfStars, beta: float | None = None) -> MoffatShape:
    """The CCD's Moffat shape from its stars, with beta free or held at ``beta``."""
    return fit_moffat_shared(stars.stamps, stars.ivars, stars.offsets, stars.fwhm0,
                             stars.beta0, uv=stars.uv, oversample=stars.oversample, beta=beta)


def exposure_beta(shapes: list[MoffatShape]) -> float | None:
    """One beta for an exposure: the error-weighted mean of its CCDs' free fits (beta
    is set by the atmosphere and barely changes over the focal plane, while one small
    CCD's stars constrain it only to ~0.3; a beta error biases PSF fluxes by
    ~0.03 mag). None with fewer than two CCDs fitted away from the bounds."""
    ok = [s for s in shapes if s.beta_err > 0 and BETA_BOUNDS[0] < s.beta < BETA_BOUNDS[1]]
    if len(ok) < 2:
        return None
    b = np.array([s.beta for s in ok])
    w = 1.0 / np.array([s.beta_err for s in ok]) ** 2
    return float(np.sum(w * b) / np.sum(w))


def psf_model(stars: PsfStars, shape: MoffatShape, ccdname: str) -> tuple[PsfExModel, dict]:
    """The PsfEx-format model of a Moffat shape (the basis fitted over a 3 x 3 grid)."""
    deg = 0 if stars.uv is None else 1
    nodes = [(a, b) for a in (-0.5, 0.0, 0.5) for b in (-0.5, 0.0, 0.5)]
    T = np.array([poly_terms(a, b, deg) for a, b in nodes])
    imgs = np.array([_model_image(max(0.5, shape.f0 + shape.fu * a + shape.fv * b), shape.beta,
                                  stars.oversample) for a, b in nodes])
    n = imgs.shape[-1]
    basis, *_ = np.linalg.lstsq(T, imgs.reshape(len(nodes), -1), rcond=None)
    model = PsfExModel(psf_mask=basis.reshape(-1, n, n), polzero=stars.polzero,
                       polscal=stars.polscal, poldeg=deg, psf_samp=1.0 / stars.oversample,
                       psf_fwhm=float(shape.f0), ccdname=ccdname)
    info = dict(accepted=len(stars.stamps), loaded=stars.loaded, chi2=stars.chi2,
                moffat_beta=shape.beta, oversample=stars.oversample)
    return model, info


FINE_HALF = 15  # native half-size of finely sampled models (undersampled images)


def _model_image(fwhm: float, beta: float, ov: int) -> np.ndarray:
    """Unit-sum PSF image for the PsfEx basis: 63 x 63 native pixels (``ov == 1``), else the
    pixel-integrated PSF sampled ``ov`` times finer (PsfEx ``psf_samp = 1/ov``)."""
    if ov == 1:
        m = moffat_stamp(fwhm, beta, PSF_HALF)
        return m / m.sum()
    from scipy.ndimage import uniform_filter

    fine = moffat_stamp(fwhm * ov, beta, FINE_HALF * ov)  # fine pixels: 1/ov native pixel
    eff = uniform_filter(fine, size=ov, mode="constant")  # average over one native pixel
    return eff / eff.sum()


def _fallback_psf(ccd: CcdData, pixscale: float) -> PsfExModel:
    h, w = ccd.img.shape
    fw = header_float(ccd.hdr, ("FWHM",), 1.3 / pixscale)
    ov = pixel_oversample(fw)
    return PsfExModel(psf_mask=_model_image(fw, 3.5, ov)[None],
                      polzero=((w + 1) / 2, (h + 1) / 2), polscal=(float(w), float(h)),
                      poldeg=0, psf_samp=1.0 / ov, psf_fwhm=fw, ccdname=ccd.ccdname)


@dataclass
class CcdCalib:
    """One CCD measured: its sky row, and its PSF stars with their own Moffat shape (or
    the fallback model and why), before the exposure's beta is known."""
    srow: dict
    extra: dict
    stars: PsfStars | None = None
    shape: MoffatShape | None = None
    fallback: PsfExModel | None = None
    failed: str | None = None


def measure_ccd(ccd: CcdData, expnum: int, meta: dict[str, str]) -> CcdCalib:
    """Fit one CCD's sky, pick its PSF stars and fit their Moffat shape with beta free."""
    pixscale = ccd.wcs.pixscale or 0.262
    h, w = ccd.img.shape
    failed = None
    try:
        sky, srow, _ = fit_sky(ccd)
    except ValueError as e:
        failed = f"sky: {e}"
        med = float(np.median(ccd.img)) if ccd.img.size else 0.0
        sky = np.full(ccd.img.shape, med)
        srow = dict(gridw=2, gridh=2, gridvals=np.full((2, 2), med),
                    xgrid=np.array([0, w - 1]), ygrid=np.array([0, h - 1]), x0=0, y0=0,
                    order=1, sky_med=med, sig1=np.nan, legpipev=LEGPIPEV)
    srow.update(expnum=expnum, ccdname=ccd.ccdname,
                **{k: v for k, v in meta.items() if k != "legpipev"})
    out = CcdCalib(srow, dict(meta))
    try:
        if failed:
            raise ValueError("no sky model")
        out.stars = psf_stars(ccd, ccd.img - sky, pixscale)
        out.shape = fit_shape(out.stars)
    except ValueError as e:
        out.failed = failed or f"psf: {e}"
        out.fallback = _fallback_psf(ccd, pixscale)
    out.failed = out.failed or failed
    return out


def ccd_model(c: CcdCalib, ccdname: str, expnum: int, beta: float | None = None
              ) -> tuple[PsfExModel, dict]:
    """The CCD's PSF model and its extra columns; with ``beta`` (the exposure's), the
    FWHM is refitted at that beta."""
    if c.stars is None:
        model, info = c.fallback, dict(accepted=0, loaded=0, chi2=0.0)
    else:
        shape = c.shape if beta is None else fit_shape(c.stars, beta)
        model, info = psf_model(c.stars, shape, ccdname)
    model.expnum = expnum
    return model, dict(c.extra, accepted=info["accepted"], loaded=info["loaded"],
                       chi2=info["chi2"])


def calibrate_ccd(ccd: CcdData, expnum: int, meta: dict[str, str]
                  ) -> tuple[dict, PsfExModel, dict, str | None]:
    """One CCD alone (its own beta): sky row, PSF model, the model's extra columns, and
    why the CCD fell back (or None)."""
    c = measure_ccd(ccd, expnum, meta)
    model, extra = ccd_model(c, ccd.ccdname, expnum)
    return c.srow, model, extra, c.failed


def _sky_table(sky_rows: list[dict]) -> np.ndarray:
    gw = max(r["gridw"] for r in sky_rows)
    gh = max(r["gridh"] for r in sky_rows)
    table = np.zeros(len(sky_rows), dtype=SPLINESKY_DTYPE(gh, gw))
    for i, r in enumerate(sky_rows):
        for k, v in r.items():
            if k == "gridvals":
                table["gridvals"][i][: r["gridh"], : r["gridw"]] = v
            elif k in ("xgrid", "ygrid"):
                table[k][i][: len(v)] = v
            elif k in table.dtype.names:
                table[k][i] = v
    return table


def _exposure_meta(ex) -> tuple[int, dict[str, str]]:
    prim = ex.primary
    expnum = get_camera(ex.camera or "decam").expnum(prim)
    return expnum, dict(plver=str(prim.get("PLVER", "")), plprocid=str(prim.get("PLPROCID", "")),
                        procdate=str(prim.get("PROCDATE", "")), legpipev=LEGPIPEV)


def run_calibs(layout, image_filename: str, options=None) -> dict[str, Any]:
    """Fit sky and PSF models of every CCD of one exposure; write the merged files.

    Skips a valid existing pair unless ``options.force``. Corrupt or missing input
    raises InputError; a CCD that fails gets a fallback row and is listed in
    ``failed`` of the returned summary.
    """
    t0 = time.time()
    force = bool(getattr(options, "force", False))
    if not force and calibs_done(layout, image_filename):
        return {"image_filename": image_filename, "skipped": True}
    sky_rows, psfs, extras, failed, fwhms = [], [], [], {}, {}
    with phase("fit"), open_exposure(layout, image_filename) as ex:
        expnum, meta = _exposure_meta(ex)
        measured = {name: measure_ccd(ex.read_ccd(ext, name), expnum, meta)
                    for ext, name in ex.exts}
        beta = exposure_beta([c.shape for c in measured.values() if c.shape is not None])
        for name, c in measured.items():
            model, extra = ccd_model(c, name, expnum, beta)
            if c.failed:
                failed[name] = c.failed
            sky_rows.append(c.srow)
            psfs.append(model)
            extras.append(extra)
            fwhms[name] = float(model.psf_fwhm)
    with phase("write"):
        table = _sky_table(sky_rows)
        spath = layout.splinesky(image_filename)
        ppath = layout.psfex(image_filename)
        spath.parent.mkdir(parents=True, exist_ok=True)
        ppath.parent.mkdir(parents=True, exist_ok=True)
        write_splinesky(spath, table)
        write_psfex(ppath, psfs, extras)
    for name, why in failed.items():
        print(f"{image_filename} CCD {name}: {why}; a fallback model is written (the "
              f"zeropoints cut the CCD if it cannot be measured)", flush=True)
    return {"image_filename": image_filename, "skipped": False, "nccd": len(psfs),
            "failed": failed, "fwhm": fwhms, "seconds": round(time.time() - t0, 3),
            "psfex": str(ppath), "splinesky": str(spath),
            "basename": image_basename(image_filename)}


def make_missing_calibs(layout, image_filename: str, ccdname: str,
                        kinds: tuple[str, ...]) -> list[str]:
    """Fit the missing calibrations (``kinds``: ``psfex``, ``splinesky``) of one CCD and write
    them as legacypipe's per-CCD files (``layout.calib_single``), as legacypipe's runbrick
    does unless ``--skip-calibs``; returns the files written."""
    with open_exposure(layout, image_filename) as ex:
        expnum, meta = _exposure_meta(ex)
        ext = {n.upper(): e for e, n in ex.exts}.get(ccdname.upper())
        if ext is None:
            from ...errors import InputError

            raise InputError(f"{layout.image(image_filename)}: no CCD {ccdname}")
        srow, model, extra, why = calibrate_ccd(ex.read_ccd(ext, ccdname), expnum, meta)
    if why:
        print(f"{image_filename} CCD {ccdname}: {why}; a fallback model is used", flush=True)
    out = []
    if "splinesky" in kinds:
        path = layout.calib_single(image_filename, ccdname, "splinesky")
        path.parent.mkdir(parents=True, exist_ok=True)
        out.append(str(write_splinesky(path, _sky_table([srow]))))
    if "psfex" in kinds:
        path = layout.calib_single(image_filename, ccdname, "psfex")
        path.parent.mkdir(parents=True, exist_ok=True)
        out.append(str(write_psfex(path, [model], [extra])))
    return out


def read_calibs(layout, image_filename: str):
    """(psf models, sky models) of an exposure, dicts keyed by CCD name (merged lite/legacypipe
    files at the layout paths)."""
    return read_psfex_all(layout.psfex(image_filename)), read_splinesky_all(
        layout.splinesky(image_filename))
