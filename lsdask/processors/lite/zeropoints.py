"""Lite zeropoints: PSF photometry of reference stars, one survey-ccds row per CCD.

Reference stars are legacyzpts': Gaia (``layout.gaia_dir``) for astrometry and, where
the PS1 catalogue (``layout.ps1_dir``) covers the exposure, PS1 stars with legacypipe's
PS1->DECam colour terms for photometry (:func:`photometric_refs`); elsewhere the Gaia
chunks' own magnitudes (legacypipe's Gaia->DECam transformation).

Per CCD: the reference stars inside the CCD, sky from the CCD's sky model, PSF
photometry with the CCD's PSF model (forced flux at the reference position, then flux +
position), and

- ``ccdzpt`` = median of ``ref_mag - inst_mag`` over stars with S/N > 10 and
  legacyzpts' magnitude limits (:data:`PHOTOCAL_MAG_LIMITS`), after its iterative
  2.5-sigma clip (``scipy.stats.sigmaclip``), ``inst_mag = -2.5 log10(counts/s)``
  (so ``flux_nmgy = counts/s * 10**(-0.4 (ccdzpt - 22.5))``; counts/s is the image
  divided by ``exptime`` for DECam, the image itself for Mosaic-3 and 90Prime, whose CP
  images are in e-/s, as legacypipe reads them);
  ``ccdphrms`` their clipped rms, ``ccdnphotom`` their number;
- ``ccdraoff/ccddecoff`` = median(ref - fit) in arcsec, ``ccdrarms/ccddecrms`` after
  a 3-sigma clip, ``ccdnastrom``;
- ``sig1 = 1/sqrt(median(ivar))`` per second, in nanomaggies; ``skyrms``, ``ccdskycounts``
  (counts/s/pixel), ``ccdskysb`` (mag/arcsec^2); ``fwhm`` (pixels, the PSF model's);
  ``psfnorm_mean``, ``galnorm_mean`` (0.45" exponential), ``psfdepth``, ``galdepth``;
- ``zpt`` = median ``ccdzpt`` of the exposure's good CCDs, ``phrms`` its rms.

``ccd_cuts`` bits set here: err_legacyzpts 0x1 (the CCD failed: message in the
ERRORS HDU and the summary), not_grz 0x2, exptime 0x8 (< ``min_exptime``),
ccdnmatch 0x10 (< ``min_nphotom`` stars), zpt_small 0x40 / zpt_large 0x80
(``ccdzpt`` below nominal - 0.5 / above nominal + 0.25, where nominal is the
camera's e-/s zeropoint - 2.5 log10(GAIN) - k (airmass - 1)), phrms 0x400
(> 0.2 mag), radecrms 0x800 (> 0.4"), seeing_bad 0x1000 (FWHM > 3").

Calibrations are read from the merged lite/legacypipe files at the layout paths,
falling back to legacypipe's per-CCD ``psfex-single`` / ``sky-single`` files.

Output: ``layout.zeropoints(image_filename)`` (HDU 1 ``CCDS`` with
:data:`lsdask.survey.ccds.SURVEY_CCDS_DTYPE` rows, HDU 2 ``ERRORS``: ccdname,
message) and ``layout.photom(image_filename)`` (one row per measured star).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from ...atomic import atomic_path
from ...errors import InputError
from ...phases import phase
from ...survey.camera import band_of_filter, get_camera
from ...survey.ccds import CCD_CUTS, SURVEY_CCDS_DTYPE
from ...survey.ps1cat import ps1_calibrators
from ...survey.psfex import PsfExModel, read_psfex, read_psfex_all
from ...survey.refcat import read_refstars
from ...survey.splinesky import SplineSky, read_splinesky, read_splinesky_all
from .ccdio import CcdData, header_float, open_exposure, parse_sexagesimal
from .psfphot import psf_photometry

log = logging.getLogger(__name__)

PHOTOM_DTYPE = np.dtype([("ccdname", "U5"), ("ra", "f8"), ("dec", "f8"), ("ref_mag", "f4"),
                         ("ref_mag_err", "f4"), ("x", "f4"), ("y", "f4"), ("x_fit", "f4"),
                         ("y_fit", "f4"), ("flux", "f4"), ("flux_ivar", "f4"),
                         ("forced_flux", "f4"), ("dmag", "f4"), ("dra", "f4"), ("ddec", "f4"),
                         ("used_photom", "?"), ("used_astrom", "?")])
ERRORS_DTYPE = np.dtype([("ccdname", "U5"), ("message", "U200")])

#: legacypipe's ``get_photocal_mag_limits``: reference magnitudes used for the zeropoint.
PHOTOCAL_MAG_LIMITS = dict(u=(16.0, 20.0), g=(16.0, 20.0), r=(16.0, 19.5), i=(16.0, 19.5),
                           z=(16.5, 19.0), Y=(16.5, 19.0))
DEFAULTS = dict(mag_lo=None, mag_hi=None, min_nphotom=5, min_exptime=30.0, max_phrms=0.2,
                max_radecrms=0.4, max_seeing=3.0, zpt_lo=0.5, zpt_hi=0.25)


def _opt(options, key):
    return getattr(options, key, DEFAULTS[key]) if options is not None else DEFAULTS[key]


def zeropoints_done(layout, image_filename: str) -> bool:
    """The per-exposure zeropoint table exists and is a readable, non-empty table."""
    import fitsio

    p = layout.zeropoints(image_filename)
    try:
        with fitsio.FITS(str(p)) as f:
            return f[1].get_nrows() > 0
    except (OSError, ValueError, RuntimeError, IndexError):
        return False


def _clipped(v: np.ndarray, nsig: float, iters: int = 5) -> tuple[float, float, np.ndarray]:
    """Median, rms and mask after iterative ``nsig`` clipping (rms from the MAD)."""
    keep = np.isfinite(v)
    for _ in range(iters):
        if keep.sum() == 0:
            return float("nan"), float("nan"), keep
        med = np.median(v[keep])
        sig = 1.4826 * np.median(np.abs(v[keep] - med))
        if sig == 0:
            sig = np.std(v[keep]) or 1e-3
        new = np.isfinite(v) & (np.abs(v - med) <= nsig * sig)
        if np.array_equal(new, keep):
            break
        keep = new
    if keep.sum() == 0:
        return float("nan"), float("nan"), keep
    return float(np.median(v[keep])), float(np.std(v[keep])), keep


def _load_calibs(layout, image_filename: str):
    psfs, skies = {}, {}
    p = layout.psfex(image_filename)
    if p.exists():
        psfs = read_psfex_all(p)
    s = layout.splinesky(image_filename)
    if s.exists():
        skies = read_splinesky_all(s)
    return psfs, skies


def _ccd_calib(layout, image_filename, ccdname, psfs, skies) -> tuple[PsfExModel, SplineSky]:
    psf = next((m for k, m in psfs.items() if k.upper() == ccdname.upper()), None)
    sky = next((m for k, m in skies.items() if k.upper() == ccdname.upper()), None)
    if psf is None:
        p = layout.psfex_single(image_filename, ccdname)
        if p.exists():
            psf = read_psfex(p)
    if sky is None:
        p = layout.splinesky_single(image_filename, ccdname)
        if p.exists():
            sky = read_splinesky(p)
    if psf is None or sky is None:
        missing = "PSF" if psf is None else "sky"
        raise ValueError(f"no {missing} model for CCD {ccdname} (run calibs first)")
    return psf, sky


def _galnorm(psf: np.ndarray, pixscale: float, re_arcsec: float = 0.45) -> float:
    from scipy.signal import fftconvolve

    half = psf.shape[0] // 2
    g = np.arange(-half, half + 1, dtype=float)
    r = np.hypot(g[None, :], g[:, None]) * pixscale / re_arcsec
    gal = np.exp(-1.678 * r)
    gal /= gal.sum()
    conv = fftconvolve(gal, psf, mode="same")
    conv /= conv.sum()
    return float(np.sqrt(np.sum(conv ** 2)))


def _segmentation(ccd: CcdData, sub: np.ndarray) -> np.ndarray | None:
    """sep segmentation map of the 3-sigma detections (None when detection fails)."""
    import sep

    err = np.where(ccd.ivar > 0, 1.0 / np.sqrt(np.maximum(ccd.ivar, 1e-30)), 0.0)
    try:
        _, seg = sep.extract(np.ascontiguousarray(sub, dtype=np.float64), 3.0,
                             err=np.ascontiguousarray(err), mask=~ccd.good & ~ccd.saturated,
                             minarea=5, segmentation_map=True)
    except Exception as e:  # noqa: BLE001 - sep raises plain Exception
        log.debug("%s: segmentation failed: %s", ccd.ccdname, e)
        return None
    return seg


def _measure_ccd(ccd: CcdData, psf: PsfExModel, sky: SplineSky, refs: np.ndarray, band: str,
                 per_second: float, options) -> tuple[dict, np.ndarray]:
    """Zeropoint quantities of one CCD (raises ValueError when it cannot be measured);
    ``per_second``: what the image is divided by to get counts per second (the exposure
    time, or 1 for cameras whose CP images are in e-/s)."""
    h, w = ccd.img.shape
    if not np.any(ccd.ivar > 0):
        raise ValueError("all-zero weight map")
    if np.count_nonzero(ccd.good) < 0.05 * ccd.img.size:
        raise ValueError("fewer than 5% usable pixels")
    skyimg = sky.evaluate(0, 0, w, h)
    sub = ccd.img - skyimg
    pixscale = ccd.wcs.pixscale
    fwhm = float(psf.fwhm)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    stamp = psf.at(cx, cy)
    psfnorm = float(np.sqrt(np.sum(stamp ** 2)))
    out: dict[str, Any] = dict(fwhm=fwhm, psfnorm_mean=psfnorm,
                               galnorm_mean=_galnorm(stamp, pixscale))
    med_ivar = float(np.median(ccd.ivar[ccd.good])) if ccd.good.any() else 0.0
    sig1_counts = 1.0 / math.sqrt(med_ivar) / per_second if med_ivar > 0 else float("nan")
    resid = sub[ccd.good]
    out["skyrms"] = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) / per_second
    sky_med = float(np.median(skyimg))
    out["ccdskycounts"] = sky_med / per_second
    # photometry; other detections are masked around each star
    rows = []
    seg = _segmentation(ccd, sub)
    if len(refs):
        x, y = ccd.sky2pix(refs["ra"], refs["dec"])
        mag = refs[f"mag_{band}"] if f"mag_{band}" in refs.dtype.names else np.full(len(refs),
                                                                                    np.nan)
        half = int(np.clip(math.ceil(2.5 * fwhm), 5, 20))  # wide: flux less model-dependent
        lim = PHOTOCAL_MAG_LIMITS.get(band, (16.0, 20.0))
        mag_lo = lim[0] if _opt(options, "mag_lo") is None else _opt(options, "mag_lo")
        mag_hi = lim[1] if _opt(options, "mag_hi") is None else _opt(options, "mag_hi")
        sat = ccd.saturated
        ivar = ccd.ivar * ccd.good
        for i in np.flatnonzero((x > half) & (x < w - 1 - half) & (y > half) & (y < h - 1 - half)):
            ix, iy = int(round(x[i])), int(round(y[i]))
            if sat[iy - 2:iy + 3, ix - 2:ix + 3].any():
                continue
            xi, yi = float(x[i]), float(y[i])

            def model(dx, dy, xi=xi, yi=yi):
                return psf.stamp(xi, yi, dx, dy, half + 2)

            ph = psf_photometry(sub, ivar, model, xi, yi, half, seg=seg)
            if ph is None:
                continue
            r = np.zeros(1, dtype=PHOTOM_DTYPE)[0]
            r["ccdname"], r["ra"], r["dec"] = ccd.ccdname, refs["ra"][i], refs["dec"][i]
            r["ref_mag"], r["ref_mag_err"] = mag[i], refs[f"mag_{band}_err"][i]
            r["x"], r["y"], r["x_fit"], r["y_fit"] = x[i], y[i], ph.x, ph.y
            r["flux"], r["flux_ivar"], r["forced_flux"] = ph.flux, ph.flux_ivar, ph.forced_flux
            snr = ph.flux * math.sqrt(ph.flux_ivar) if ph.flux_ivar > 0 else 0.0
            if ph.ok and ph.flux > 0:
                r["dmag"] = mag[i] + 2.5 * math.log10(ph.flux / per_second)  # NaN: astrometry only
                fra, fdec = (np.atleast_1d(v) for v in ccd.pix2sky(ph.x, ph.y))
                r["dra"] = float((refs["ra"][i] - fra[0] + 180) % 360 - 180) * math.cos(
                    math.radians(refs["dec"][i])) * 3600
                r["ddec"] = float(refs["dec"][i] - fdec[0]) * 3600
                r["used_photom"] = bool(snr > 10 and mag_lo <= mag[i] <= mag_hi)
                r["used_astrom"] = snr > 10
            else:
                r["dmag"] = r["dra"] = r["ddec"] = np.nan
            rows.append(r)
    phot = np.array(rows, dtype=PHOTOM_DTYPE)
    nphot = int(phot["used_photom"].sum()) if len(phot) else 0
    if nphot:
        from scipy.stats import sigmaclip

        dmag = phot["dmag"][phot["used_photom"]].astype(float)
        clipped, lo, hi = sigmaclip(dmag, 2.5, 2.5)
        zp, zrms, keep = float(np.median(clipped)), float(np.std(clipped)), (dmag >= lo) & (
            dmag <= hi)
        idx = np.flatnonzero(phot["used_photom"])
        phot["used_photom"][idx[~keep]] = False
        nphot = int(keep.sum())
    else:
        zp, zrms = float("nan"), float("nan")
    nast = int(phot["used_astrom"].sum()) if len(phot) else 0
    if nast:
        a = phot[phot["used_astrom"]]
        raoff, rarms, _ = _clipped(a["dra"].astype(float), 3.0)
        decoff, decrms, _ = _clipped(a["ddec"].astype(float), 3.0)
    else:
        raoff = rarms = decoff = decrms = float("nan")
    out.update(ccdzpt=zp, ccdphrms=zrms, ccdnphotom=nphot, ccdnastrom=nast, ccdraoff=raoff,
               ccddecoff=decoff, ccdrarms=rarms, ccddecrms=decrms, sig1_counts=sig1_counts)
    return out, phot


def photometric_refs(layout, refs: np.ndarray, ra: float, dec: float, radius: float,
                     band: str, match_arcsec: float = 1.0) -> tuple[np.ndarray, str]:
    """Reference stars with the magnitudes that calibrate ``band``, and the calibrator's name.

    Where ``layout.ps1_dir`` covers the cone, as legacyzpts: PS1 stars passing its cuts
    with their DECam magnitudes (:func:`lsdask.survey.ps1cat.ps1_calibrators`), at the
    Gaia position of the nearest Gaia star within ``match_arcsec``; other Gaia stars are
    kept for astrometry (magnitude NaN). Elsewhere the Gaia chunks' own magnitudes.
    """
    if f"mag_{band}" not in refs.dtype.names:
        return refs, "no"
    cal = ps1_calibrators(layout.ps1_dir, ra, dec, radius, band) if layout.ps1_dir.is_dir() \
        else ()
    if not len(cal):
        return refs, "gaia"
    out = refs.copy()
    out[f"mag_{band}"] = out[f"mag_{band}_err"] = np.nan
    matched = np.zeros(len(cal), bool)
    if len(refs):
        from scipy.spatial import cKDTree

        from ...survey.wcs import chord, unit_vectors

        dist, j = cKDTree(unit_vectors(refs["ra"], refs["dec"])).query(
            unit_vectors(cal["ra"], cal["dec"]), distance_upper_bound=chord(match_arcsec))
        matched = np.isfinite(dist)
        out[f"mag_{band}"][j[matched]] = cal["mag"][matched]
        out[f"mag_{band}_err"][j[matched]] = cal["mag_err"][matched]
    extra = np.zeros(int((~matched).sum()), refs.dtype)
    for k in ("g", "r", "z"):
        extra[f"mag_{k}"] = extra[f"mag_{k}_err"] = np.nan
    extra["ra"], extra["dec"] = cal["ra"][~matched], cal["dec"][~matched]
    extra[f"mag_{band}"], extra[f"mag_{band}_err"] = cal["mag"][~matched], cal["mag_err"][~matched]
    extra["ref_epoch"] = 2015.5
    return np.concatenate([out, extra]), "PS1"


def _nmgy(counts_per_s: float, zpt: float) -> float:
    return counts_per_s * 10 ** (-0.4 * (zpt - 22.5))


def run_zeropoints(layout, image_filename: str, options=None) -> dict[str, Any]:
    """Measure the zeropoints of one exposure and write its survey-ccds rows.

    Corrupt or missing image files raise InputError naming the file; a CCD that
    cannot be measured gets a row with ``ccd_cuts`` err bit 0x1 and a message.
    """
    import fitsio

    t0 = time.time()
    if not getattr(options, "force", False) and zeropoints_done(layout, image_filename):
        return {"image_filename": image_filename, "skipped": True}
    psfs, skies = _load_calibs(layout, image_filename)
    rows, phots, errors = [], [], []
    with phase("measure"), open_exposure(layout, image_filename) as ex:
        prim = ex.primary
        cam = get_camera(ex.camera or "decam")
        band = band_of_filter(prim.get("FILTER", "")) or str(prim.get("BAND", "")).strip()[:1]
        exptime = header_float(prim, ("EXPTIME",), 0.0)
        airmass = header_float(prim, ("AIRMASS",), 1.0)
        gain = header_float(prim, ("GAIN", "GAINA"), cam.gain)
        ra_bore = parse_sexagesimal(prim.get("RA", prim.get("TELRA")), True)
        dec_bore = parse_sexagesimal(prim.get("DEC", prim.get("TELDEC")), False)
        refs = None
        ccds = []
        for ext, name in ex.exts:
            ccd = ex.read_ccd(ext, name)
            ccds.append(ccd)
        if not psfs and not layout.psfex_single(image_filename, ccds[0].ccdname).exists():
            raise InputError(f"{layout.psfex(image_filename)}: calibrations missing "
                             "(run calibs first)")
        # reference stars once for the whole exposure
        ras, decs = [], []
        for ccd in ccds:
            r, d = ccd.wcs.corners()
            ras.extend(r)
            decs.extend(d)
        rc, dc = ccds[0].wcs.center()
        from ...survey.wcs import angular_separation

        radius = float(np.max(angular_separation(rc, dc, np.array(ras), np.array(decs)))) + 0.01
        refs, calibrator = photometric_refs(layout, read_refstars(layout.gaia_dir, rc, dc, radius),
                                            rc, dc, radius, band)
        log.info("%s: %d reference stars, %s photometric calibrators", image_filename,
                 len(refs), calibrator)
        for ccd in ccds:
            row = np.zeros(1, dtype=SURVEY_CCDS_DTYPE)[0]
            h, w = ccd.img.shape
            row["image_filename"] = image_filename
            row["image_hdu"] = ccd.ext
            row["camera"] = cam.name
            row["expnum"] = cam.expnum(prim)
            for k, key in (("plver", "PLVER"), ("procdate", "PROCDATE"), ("plprocid", "PLPROCID"),
                           ("object", "OBJECT"), ("propid", "PROPID")):
                row[k] = str(prim.get(key, ""))[: SURVEY_CCDS_DTYPE[k].itemsize // 4]
            row["ccdname"] = ccd.ccdname
            row["filter"] = band
            row["exptime"] = exptime
            row["mjd_obs"] = header_float(prim, ("MJD-OBS",), 0.0)
            row["airmass"] = airmass
            row["width"], row["height"] = w, h
            row["ra_bore"], row["dec_bore"] = ra_bore, dec_bore
            for k in ("crpix1", "crpix2", "crval1", "crval2", "cd1_1", "cd1_2", "cd2_1", "cd2_2"):
                row[k] = getattr(ccd.wcs, k)
            row["ra"], row["dec"] = ccd.wcs.center()
            cuts = 0
            if band not in ("g", "r", "z"):
                cuts |= CCD_CUTS["not_grz"]
            if exptime < _opt(options, "min_exptime"):
                cuts |= CCD_CUTS["exptime"]
            try:
                psf, sky = _ccd_calib(layout, image_filename, ccd.ccdname, psfs, skies)
                m, phot = _measure_ccd(ccd, psf, sky, refs, band,
                                       cam.counts_per_second(max(exptime, 1e-3)), options)
                phots.append(phot)
                for k in ("fwhm", "ccdzpt", "ccdphrms", "ccdnphotom", "ccdnastrom", "ccdraoff",
                          "ccddecoff", "ccdrarms", "ccddecrms", "skyrms", "ccdskycounts",
                          "psfnorm_mean", "galnorm_mean"):
                    row[k] = m[k]
                row["yshift"] = False
                row["sig1"] = m["sig1_counts"]  # counts/s for now; nanomaggies below
            except ValueError as e:
                cuts |= CCD_CUTS["err_legacyzpts"]
                errors.append((ccd.ccdname, str(e)[:200]))
                print(f"{image_filename} CCD {ccd.ccdname}: cut (err_legacyzpts): {e}",
                      flush=True)  # in the task's log
                for k in ("ccdzpt", "ccdphrms", "ccdraoff", "ccddecoff", "ccdrarms", "ccddecrms",
                          "fwhm", "sig1", "skyrms", "ccdskycounts"):
                    row[k] = np.nan
            row["ccd_cuts"] = cuts
            rows.append(row)
    ccdrows = np.array(rows, dtype=SURVEY_CCDS_DTYPE)
    ok = np.isfinite(ccdrows["ccdzpt"]) & (ccdrows["ccdnphotom"] >= _opt(options, "min_nphotom"))
    zpt = float(np.median(ccdrows["ccdzpt"][ok])) if ok.any() else float("nan")
    phrms = float(np.std(ccdrows["ccdzpt"][ok])) if ok.sum() > 1 else 0.0
    ccdrows["zpt"] = zpt
    ccdrows["phrms"] = phrms
    nominal = cam.zp0.get(band, np.nan) - 2.5 * math.log10(gain) - cam.k_ext.get(band, 0.0) * (
        airmass - 1.0)
    for r in ccdrows:
        cuts = int(r["ccd_cuts"])
        # sig1 etc. need a zeropoint: the CCD's, else the exposure's, else the nominal one
        zp = next((float(v) for v in (r["ccdzpt"], zpt, nominal) if np.isfinite(v)), np.nan)
        if not cuts & CCD_CUTS["err_legacyzpts"]:
            if r["ccdnphotom"] < _opt(options, "min_nphotom"):
                cuts |= CCD_CUTS["ccdnmatch"]
            if np.isfinite(r["ccdzpt"]) and np.isfinite(nominal):
                if r["ccdzpt"] < nominal - _opt(options, "zpt_lo"):
                    cuts |= CCD_CUTS["zpt_small"]
                if r["ccdzpt"] > nominal + _opt(options, "zpt_hi"):
                    cuts |= CCD_CUTS["zpt_large"]
            if np.isfinite(r["ccdphrms"]) and r["ccdphrms"] > _opt(options, "max_phrms"):
                cuts |= CCD_CUTS["phrms"]
            if max(np.nan_to_num(r["ccdrarms"]), np.nan_to_num(r["ccddecrms"])) > _opt(
                    options, "max_radecrms"):
                cuts |= CCD_CUTS["radecrms"]
            pixscale = 3600 * math.sqrt(abs(r["cd1_1"] * r["cd2_2"] - r["cd1_2"] * r["cd2_1"]))
            if np.isfinite(r["fwhm"]) and r["fwhm"] * pixscale > _opt(options, "max_seeing"):
                cuts |= CCD_CUTS["seeing_bad"]
            if np.isfinite(zp):
                sig1 = _nmgy(float(r["sig1"]), zp)
                r["sig1"] = sig1
                r["skyrms"] = r["skyrms"]
                if r["ccdskycounts"] > 0:
                    r["ccdskysb"] = -2.5 * math.log10(r["ccdskycounts"] / pixscale ** 2) + zp
                if sig1 > 0 and r["psfnorm_mean"] > 0:
                    r["psfdepth"] = 22.5 - 2.5 * math.log10(5 * sig1 / r["psfnorm_mean"])
                    r["galdepth"] = 22.5 - 2.5 * math.log10(5 * sig1 / r["galnorm_mean"])
            else:
                r["sig1"] = np.nan
        r["ccd_cuts"] = cuts
    with phase("write"):
        out = layout.zeropoints(image_filename)
        out.parent.mkdir(parents=True, exist_ok=True)
        errs = np.array(errors, dtype=ERRORS_DTYPE)
        with atomic_path(out) as tmp:
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                hdr = {"ZPT": zpt if np.isfinite(zpt) else -1.0,
                       "PHRMS": phrms if np.isfinite(phrms) else -1.0, "NFAILED": len(errors)}
                f.write(ccdrows, extname="CCDS", header=hdr)
                f.write(errs if len(errs) else np.zeros(0, dtype=ERRORS_DTYPE), extname="ERRORS")
        phot = np.concatenate(phots) if phots else np.zeros(0, dtype=PHOTOM_DTYPE)
        with atomic_path(layout.photom(image_filename)) as tmp:
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                f.write(phot, extname="PHOTOM")
    return {"image_filename": image_filename, "skipped": False, "nccd": len(ccdrows),
            "zpt": zpt, "failed": dict(errors),
            "ccd_cuts": {str(r["ccdname"]): int(r["ccd_cuts"]) for r in ccdrows},
            "seconds": round(time.time() - t0, 3), "path": str(out)}


__all__ = ["run_zeropoints", "zeropoints_done", "InputError"]
