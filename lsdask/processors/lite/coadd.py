"""Inverse-variance-weighted coadds of resampled CCDs on the brick grid.

Per band: ``image`` (nanomaggies), ``invvar``, ``nexp`` (good exposures per
pixel), ``psfsize`` (ivar-weighted FWHM, arcsec), ``psfdepth`` and ``galdepth``
(flux inverse variances of a point source / 0.45" exponential galaxy: sums over good CCD
pixels of ``norm**2 / sig1**2`` with the CCD's sky-only ``sig1``, legacypipe's
definition) and data-quality summaries used for maskbits (``satur``, ``allmask``). The
image is interpolated with the chosen kernel; the ivar is taken from the nearest CCD
pixel and zeroed wherever a bad pixel lies within the kernel's reach. CCDs are
accumulated in table order, so results do not depend on the number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .ccdimage import CcdImage
from .resample import interpolate

#: CP data-quality bit of saturated pixels (legacypipe's DQ_BITS['satur']).
DQ_SATUR = 2


@dataclass
class Resampled:
    """One CCD resampled onto its brick-pixel bounding box."""

    row: int
    band: str
    slc: tuple[slice, slice]
    img: np.ndarray
    ivar: np.ndarray
    covered: np.ndarray  # bool: inside the CCD
    satur: np.ndarray    # bool: nearest CCD pixel saturated
    fwhm: float
    psfnorm: float
    galnorm: float
    psf_r50: float  # arcsec, half-light radius of the PSF stamp within 3 sigma
    sky_iv: float = 0.0  # 1 / sig1^2: the CCD's sky-only pixel inverse variance


def psf_half_light(psf: np.ndarray, fwhm_pix: float) -> float:
    """Half-light radius (pixels) of a unit-sum stamp within 3 sigma, measured as for sources."""
    import sep

    c = (psf.shape[0] - 1) / 2.0
    r, _ = sep.flux_radius(np.ascontiguousarray(psf, np.float32), np.array([c]), np.array([c]),
                           np.array([3 * fwhm_pix / 2.3548]), 0.5, subpix=5)
    return float(r[0])


def resample_ccd(im: CcdImage, kernel: str) -> Resampled:
    """Resample a calibrated CCD overlap onto the brick grid."""
    pm = im.pmap
    x = pm.x - im.x0
    y = pm.y - im.y0
    # Lanczos-3 as two separable 1-D passes on the (smooth, near axis-aligned) map
    img = interpolate(im.img, x, y, "lanczos3_map" if kernel == "lanczos3" else kernel)
    h, w = im.img.shape
    # nearest CCD pixel (0-based) of each brick pixel; inside the CCD sub-image <=> covered
    # (the sub-image edges are the CCD edges wherever the CCD ends inside the brick)
    xi = np.floor(x + 0.5)
    yi = np.floor(y + 0.5)
    covered = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = np.clip(yi, 0, h - 1).astype(np.intp)
    idx *= w
    idx += np.clip(xi, 0, w - 1).astype(np.intp)
    del xi, yi
    bad = im.ivar <= 0
    reach = 3 if kernel == "lanczos3" else 2
    src = im.ivar
    if bad.any():
        bad = ndimage.binary_dilation(bad, iterations=reach)
        src = np.where(bad, np.float32(0), im.ivar)
    ivar = src.ravel().take(idx).reshape(x.shape).astype(np.float32, copy=False)
    ivar[~covered] = 0
    img[ivar <= 0] = 0
    sat = (im.dq & DQ_SATUR) != 0
    satur = (sat.ravel().take(idx).reshape(x.shape) & covered) if sat.any() \
        else np.zeros(x.shape, bool)
    slc = (slice(pm.by0, pm.by1), slice(pm.bx0, pm.bx1))
    pixscale = im.wcs.tan.pixscale
    r50 = psf_half_light(im.psf, im.fwhm / pixscale) * pixscale
    # sig1 as legacypipe's tims: the median pixel ivar (sky only; sources are few pixels)
    pos = im.ivar[im.ivar > 0]
    sky_iv = float(np.median(pos)) if pos.size else 0.0
    return Resampled(im.row, im.band, slc, img.astype(np.float32, copy=False), ivar, covered,
                     satur, im.fwhm, im.psfnorm, im.galnorm, r50, sky_iv)


@dataclass
class BandCoadd:
    """Accumulators and results of one band."""

    band: str
    shape: tuple[int, int]
    num: np.ndarray = field(init=False)
    invvar: np.ndarray = field(init=False)
    nexp: np.ndarray = field(init=False)
    ncov: np.ndarray = field(init=False)
    psfdepth: np.ndarray = field(init=False)
    galdepth: np.ndarray = field(init=False)
    psfsize: np.ndarray = field(init=False)
    satur: np.ndarray = field(init=False)

    def __post_init__(self):
        z = lambda dt: np.zeros(self.shape, dtype=dt)  # noqa: E731
        self.num, self.invvar = z(np.float32), z(np.float32)
        self.nexp, self.ncov = z(np.int16), z(np.int16)
        self.psfdepth, self.galdepth, self.psfsize = z(np.float32), z(np.float32), z(np.float32)
        self.satur = z(bool)
        self.r50_sum = 0.0
        self.r50_w = 0.0

    def add(self, r: Resampled) -> None:
        s = r.slc
        tmp = np.multiply(r.img, r.ivar, dtype=np.float32)
        self.num[s] += tmp
        self.invvar[s] += r.ivar
        self.nexp[s] += r.ivar > 0
        self.ncov[s] += r.covered
        np.multiply(r.ivar, np.float32(r.fwhm), out=tmp)
        self.psfsize[s] += tmp
        # depths as legacypipe: sky-only ivar (1/sig1^2) of every good CCD pixel, times norm^2
        good = r.ivar > 0
        for acc, k in ((self.psfdepth, r.psfnorm ** 2), (self.galdepth, r.galnorm ** 2)):
            acc[s] += good * np.float32(r.sky_iv * k)
        if r.satur.any():
            self.satur[s] |= r.satur
        w = float(r.ivar.sum())
        self.r50_sum += w * r.psf_r50
        self.r50_w += w

    def finish(self) -> dict[str, np.ndarray]:
        """The coadd images of this band (accumulators are released)."""
        iv = self.invvar
        with np.errstate(invalid="ignore", divide="ignore"):
            image = np.where(iv > 0, self.num / iv, 0).astype(np.float32)
            psfsize = np.where(iv > 0, self.psfsize / iv, 0).astype(np.float32)
        out = dict(image=image, invvar=iv, nexp=self.nexp, psfdepth=self.psfdepth,
                   galdepth=self.galdepth, psfsize=psfsize, satur=self.satur,
                   allmask=(self.ncov > 0) & (self.nexp == 0),
                   psf_r50=np.float64(self.r50_sum / self.r50_w if self.r50_w > 0 else 0.0))
        del self.num
        return out
