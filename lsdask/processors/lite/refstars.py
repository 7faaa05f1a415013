"""Reference (Gaia) stars of a brick, as legacypipe's ``get_reference_sources``.

Every Gaia star on the brick grid gets legacypipe's masking radius
``1630" * 1.396**(-mask_mag)`` with ``mask_mag = min(G, z + 1)``; ``isbright`` (mask_mag
< 13) and ``ismedium`` (< 16) set the BRIGHT and MEDIUM maskbits within that radius.
Gaia point sources (:func:`gaia_pointsource`: G < 13; G < 18 with astrometric excess
noise < 1 mas; proper motion or parallax at S/N > 5, as the vendored legacypipe) become
catalogue sources at their catalogue positions (``ref_cat = 'G2'``), typed PSF;
detections that are not separated from them by a saddle, or that lie on the saturated
core of a MEDIUM/BRIGHT star, are dropped (:func:`.detect.find_peaks`).
"""

from __future__ import annotations

import logging

import numpy as np

from ...survey.layout import ReleaseLayout
from ...survey.refcat import read_refstars

log = logging.getLogger(__name__)

REF_DTYPE = np.dtype([("ra", "f8"), ("dec", "f8"), ("x", "f8"), ("y", "f8"), ("gaia_g", "f4"),
                      ("source_id", "i8"), ("pmra", "f4"), ("pmdec", "f4"),
                      ("ref_epoch", "f4"), ("radius", "f4"), ("isbright", "?"),
                      ("ismedium", "?"), ("pointsource", "?")])


def mask_radius_for_mag(mag: np.ndarray) -> np.ndarray:
    """legacypipe's masking radius (arcsec) of a star of magnitude ``mag``."""
    return 1630.0 * 1.396 ** (-np.asarray(mag, dtype=float))


def gaia_pointsource(refs: np.ndarray) -> np.ndarray:
    """legacypipe's (``read_gaia``) forced point sources: G < 13, or G < 18 with astrometric
    excess noise < 1 mas, or a proper motion or parallax measured at S/N > 5."""
    g = np.where(np.isfinite(refs["gaia_g"]) & (refs["gaia_g"] != 0), refs["gaia_g"], 99.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pm_snr = np.nan_to_num(np.hypot(refs["pmra"] / refs["pmra_error"],
                                        refs["pmdec"] / refs["pmdec_error"]), posinf=0.0)
        plx_snr = np.nan_to_num(refs["parallax"] / refs["parallax_error"], posinf=0.0,
                                neginf=0.0)
    aen = np.nan_to_num(refs["astrometric_excess_noise"], nan=np.inf)
    return (g < 13.0) | ((g < 18.0) & (aen < 1.0)) | (pm_snr > 5.0) | (plx_snr > 5.0)


def brick_refs(layout: ReleaseLayout, wcs, pad_pix: float = 0.5) -> np.ndarray:
    """Gaia stars on the brick grid ``wcs`` (0-based pixel ``x, y``), as :data:`REF_DTYPE`;
    empty without reference chunks."""
    if not layout.gaia_dir.is_dir():
        return np.zeros(0, REF_DTYPE)
    H, W = wcs.height, wcs.width
    cx, cy = (W + 1) / 2.0, (H + 1) / 2.0
    ra0, dec0 = wcs.pixel_to_radec(cx, cy)
    rad = np.hypot(W, H) / 2.0 * wcs.pixscale / 3600.0 + 0.01
    refs = read_refstars(layout.gaia_dir, float(ra0), float(dec0), rad)
    out = np.zeros(len(refs), REF_DTYPE)
    if not len(refs):
        return out
    x, y = wcs.radec_to_pixel(refs["ra"], refs["dec"])
    x, y = np.asarray(x) - 1.0, np.asarray(y) - 1.0
    for k in ("ra", "dec", "gaia_g", "source_id", "pmra", "pmdec", "ref_epoch"):
        out[k] = refs[k]
    out["x"], out["y"] = x, y
    g = np.where(np.isfinite(refs["gaia_g"]), refs["gaia_g"], 99.0)
    zg = np.where(np.isfinite(refs["mag_z"]), refs["mag_z"] + 1.0, 99.0)
    mask_mag = np.minimum(g, zg)
    out["radius"] = np.where(mask_mag < 99, mask_radius_for_mag(mask_mag), 0.0)
    out["isbright"] = mask_mag < 13.0
    out["ismedium"] = mask_mag < 16.0
    out["pointsource"] = gaia_pointsource(refs)
    on = (x > -pad_pix) & (x < W - 1 + pad_pix) & (y > -pad_pix) & (y < H - 1 + pad_pix)
    # masks reach onto the grid from stars off it
    near = (x > -out["radius"] / wcs.pixscale) & (x < W + out["radius"] / wcs.pixscale) & \
        (y > -out["radius"] / wcs.pixscale) & (y < H + out["radius"] / wcs.pixscale)
    return out[on | (near & out["ismedium"])]


def on_grid(refs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    H, W = shape
    return (refs["x"] > -0.5) & (refs["x"] < W - 0.5) & (refs["y"] > -0.5) & \
        (refs["y"] < H - 0.5)


def star_masks(refs: np.ndarray, shape: tuple[int, int], pixscale: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """(BRIGHT, MEDIUM) boolean maps: pixels within the masking radius of such stars."""
    bright = np.zeros(shape, bool)
    medium = np.zeros(shape, bool)
    H, W = shape
    for r in refs[refs["ismedium"]]:
        rp = r["radius"] / pixscale
        x0, x1 = int(max(0, np.floor(r["x"] - rp))), int(min(W, np.ceil(r["x"] + rp) + 1))
        y0, y1 = int(max(0, np.floor(r["y"] - rp))), int(min(H, np.ceil(r["y"] + rp) + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = (xx - r["x"]) ** 2 + (yy - r["y"]) ** 2 <= rp * rp
        medium[y0:y1, x0:x1] |= inside
        if r["isbright"]:
            bright[y0:y1, x0:x1] |= inside
    return bright, medium


def avoid_circles(refs: np.ndarray, satur: np.ndarray, fwhm_pix: float, pixscale: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, r) pixel circles where peaks are not detections: around each reference star,
    its saturated core (the connected saturated pixels near it) plus two PSF FWHM; around
    MEDIUM/BRIGHT stars at least two FWHM."""
    from scipy import ndimage

    m = refs
    r_out = np.where(m["ismedium"], 2.0 * fwhm_pix, 0.0)
    if len(m) and satur.any():
        lab, _ = ndimage.label(satur)
        H, W = satur.shape
        for k, r in enumerate(m):
            ix, iy = int(round(r["x"])), int(round(r["y"]))
            rpix = max(float(r["radius"]) / pixscale, 3.0 * fwhm_pix)
            rp = int(np.ceil(rpix))
            x0, x1 = max(0, ix - rp), min(W, ix + rp + 1)
            y0, y1 = max(0, iy - rp), min(H, iy + rp + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            sub = lab[y0:y1, x0:x1]
            ids = np.unique(sub[sub > 0])
            if ids.size == 0:
                continue
            yy, xx = np.nonzero(np.isin(sub, ids))
            d = np.hypot(xx + x0 - r["x"], yy + y0 - r["y"])
            close = d <= max(3.0 * fwhm_pix, 0.5 * rpix)
            if close.any():
                r_out[k] = max(r_out[k], float(d[close].max()) + 2.0 * fwhm_pix)
    use = r_out > 0
    return m["x"][use], m["y"][use], r_out[use]
