"""One CCD's calibrated pixels over a brick: read, sky-subtract, scale to nanomaggies.

Only the part of the CCD that overlaps the brick is read (fitsio subset reads,
which decompress only the needed tiles of a ``.fits.fz`` HDU). The CCD WCS is
the image header's (TPV through astropy when the header has distortion terms,
else TAN from the survey-ccds row), shifted by the survey-ccds astrometric
offsets ``ccdraoff/ccddecoff`` as legacypipe does. Pixels with a non-zero
data-quality value or a non-positive weight get zero inverse variance.

Calibration files are looked up in the lite/merged layout first
(``layout.psfex/splinesky``), then in the real per-CCD ``psfex-single`` /
``sky-single`` layouts of legacypipe's test cases
(``calib/<kind>-single/<imgdir>/<base>/<base>-<ccd>-<kind>.fits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...survey.camera import camera_for, companion
from ...survey.layout import ReleaseLayout, image_basename, image_dir
from ...survey.psfex import read_psfex
from ...survey.splinesky import read_splinesky
from ...survey.wcs import TanWCS
from .resample import PixelMap, brick_to_ccd_map

#: Pixels of padding read around the overlap (interpolation-kernel support).
READ_PAD = 5
#: Round-exponential half-light radius (arcsec) used for galdepth (as legacypipe).
GALDEPTH_RE = 0.45


def _s(v) -> str:
    return v.decode().strip() if isinstance(v, bytes) else str(v).strip()


def calib_path(layout: ReleaseLayout, image_filename: str, ccdname: str, kind: str) -> Path:
    """The PSF (``kind='psfex'``) or sky (``'splinesky'``) file of a CCD, where legacypipe
    looks, in its order: the per-CCD ``*-single`` file, the merged per-exposure file, the
    older merged layout (``calib/<imgdir>/<base>-<kind>.fits``)."""
    merged = layout.psfex(image_filename) if kind == "psfex" else layout.splinesky(image_filename)
    single = layout.calib_single(image_filename, ccdname, kind)
    old = (layout.calib_dir / image_dir(image_filename)
           / f"{image_basename(image_filename)}-{kind}.fits")
    for path in (single, merged, old):
        if path.is_file():
            return path
    raise InputError(f"{merged}: {kind} calibration missing (also looked for {single} "
                     f"and {old})")


class CcdWcs:
    """Sky <-> 0-based pixel transforms of one CCD."""

    def __init__(self, tan: TanWCS, astropy_wcs=None, dra: float = 0.0, ddec: float = 0.0):
        self.tan = tan
        self.aw = astropy_wcs
        self.dra = dra  # degrees of RA to add to WCS positions
        self.ddec = ddec

    def sky_to_pix(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ra = np.asarray(ra, dtype=float) - self.dra
        dec = np.asarray(dec, dtype=float) - self.ddec
        if self.aw is not None:
            x, y = self.aw.all_world2pix(ra, dec, 0, quiet=True)
            return np.asarray(x), np.asarray(y)
        x, y = self.tan.radec_to_pixel(ra, dec)
        return x - 1.0, y - 1.0

    def pix_to_sky(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.aw is not None:
            ra, dec = self.aw.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        else:
            ra, dec = self.tan.pixel_to_radec(np.asarray(x) + 1.0, np.asarray(y) + 1.0)
        return np.mod(np.asarray(ra) + self.dra, 360.0), np.asarray(dec) + self.ddec

    def corners(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        w, h = self.tan.width, self.tan.height
        x = np.array([-0.5 - pad, w - 0.5 + pad, w - 0.5 + pad, -0.5 - pad, (w - 1) / 2, -0.5,
                      (w - 1) / 2, w - 0.5])
        y = np.array([-0.5 - pad, -0.5 - pad, h - 0.5 + pad, h - 0.5 + pad, -0.5, (h - 1) / 2,
                      h - 0.5, (h - 1) / 2])
        return self.pix_to_sky(x, y)


def ccd_wcs(ccd: np.void, header=None) -> CcdWcs:
    """The CCD's WCS: from ``header`` when it has TPV/SIP terms, else the survey-ccds TAN."""
    tan = TanWCS(*(float(ccd[k]) for k in ("crval1", "crval2", "crpix1", "crpix2", "cd1_1",
                                           "cd1_2", "cd2_1", "cd2_2")),
                 int(ccd["width"]), int(ccd["height"]))
    aw = None
    if header is not None and ("TPV" in str(header.get("CTYPE1", ""))
                               or "SIP" in str(header.get("CTYPE1", ""))):
        import warnings

        from astropy.io.fits import Header
        from astropy.wcs import WCS, FITSFixedWarning

        h = Header()
        for rec in header.records():
            k = rec.get("name")
            if k and (k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD", "PV", "CUNIT", "A_", "B_",
                                    "AP_", "BP_")) or k in ("WCSAXES", "NAXIS", "NAXIS1",
                                                            "NAXIS2", "EQUINOX", "RADESYS")):
                h[k] = rec.get("value")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            aw = WCS(h)
    dra = ddec = 0.0
    names = ccd.dtype.names
    if "ccdraoff" in names and np.isfinite(ccd["ccdraoff"]):
        dec = float(ccd["dec"]) if "dec" in names else float(ccd["crval2"])
        dra = float(ccd["ccdraoff"]) / 3600.0 / np.cos(np.deg2rad(dec))
        ddec = float(ccd["ccddecoff"]) / 3600.0
    return CcdWcs(tan, aw, dra, ddec)


@dataclass
class CcdImage:
    """Calibrated pixels of the part of one CCD that overlaps a brick."""

    row: int              # index into the brick's selected-CCD table
    band: str
    x0: int               # sub-image origin in CCD pixels (0-based)
    y0: int
    img: np.ndarray       # nanomaggies, sky subtracted, 0 where ivar == 0
    ivar: np.ndarray      # nanomaggies^-2
    dq: np.ndarray        # data-quality bits (i2, DR9 DQ_BITS), 0 = good
    wcs: CcdWcs
    pmap: PixelMap        # brick pixels covered and their CCD coordinates
    psf: np.ndarray       # unit-sum PSF stamp at the overlap centre (native pixels)
    psfmodel: object      # the PsfExModel (per-source stamps in forced photometry)
    fwhm: float           # arcsec
    psfnorm: float        # sqrt(sum psf^2)
    galnorm: float        # same for a 0.45" round exponential convolved with the PSF
    mjd: float

    @property
    def nbytes(self) -> int:
        return self.img.nbytes + self.ivar.nbytes + self.dq.nbytes


#: DR9 (legacypipe ``DQ_BITS``) meanings of the ANYMASK/ALLMASK bits.
DQ_BITS = {"badpix": 1, "satur": 2, "interp": 4, "cr": 16, "bleed": 64, "trans": 128,
           "edge": 256, "edge2": 512, "outlier": 2048}
#: CP data-quality codes -> DR9 bits (as legacypipe's ``remap_dq_cp_codes``); other
#: non-zero codes read as bad pixels.
CP_DQ_CODES = {1: "badpix", 2: "badpix", 3: "satur", 4: "bleed", 5: "cr", 6: "badpix",
               7: "trans", 8: "trans"}


def remap_dq(dq: np.ndarray) -> np.ndarray:
    """CP data-quality codes to DR9 ``DQ_BITS`` (i2)."""
    lut = np.full(9, DQ_BITS["badpix"], np.int16)
    lut[0] = 0
    for code, name in CP_DQ_CODES.items():
        lut[code] = DQ_BITS[name]
    d = np.asarray(dq).astype(np.int64)
    out = np.where((d >= 0) & (d <= 8), lut[np.clip(d, 0, 8)], DQ_BITS["badpix"])
    return out.astype(np.int16)


def _galnorm(psf: np.ndarray, pixscale: float) -> float:
    """Norm of a round exponential (r_e = 0.45") convolved with the PSF stamp."""
    n = psf.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(xx - c, yy - c) * pixscale
    gal = np.exp(-1.678 * r / GALDEPTH_RE)
    gal /= gal.sum()
    m = 2 * n
    # linear convolution through zero-padded FFTs, cropped back to the stamp ("same")
    full = np.fft.irfft2(np.fft.rfft2(psf, (m, m)) * np.fft.rfft2(gal, (m, m)), (m, m))
    conv = full[n // 2:n // 2 + n, n // 2:n // 2 + n]
    conv = np.clip(conv, 0, None)
    conv /= conv.sum()
    return float(np.sqrt(np.sum(conv ** 2)))


def _smooth_sky(sky, x0: int, y0: int, w: int, h: int, step: int = 16) -> np.ndarray:
    """The spline sky over a sub-image, evaluated every ``step`` pixels and interpolated
    bilinearly (the spline's nodes are hundreds of pixels apart, so this is exact to
    ~1e-6 of the sky level and much faster than a dense evaluation)."""
    from .resample import upsample_bilinear

    gx = np.unique(np.r_[np.arange(0, w, step), w - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, h, step), h - 1]).astype(float)
    if len(gx) < 2 or len(gy) < 2:
        return sky.evaluate(x0, y0, w, h).astype(np.float32)
    GX, GY = np.meshgrid(gx + x0, gy + y0)
    vals = np.asarray(sky.at(GX.ravel(), GY.ravel()), dtype=float).reshape(GX.shape)
    return upsample_bilinear(vals, gy, gx, h, w, dtype=np.float32)


def overlap_map(ccd: np.void, brick_wcs, header=None) -> tuple[CcdWcs, PixelMap | None]:
    """The CCD's WCS and the brick pixels it covers (None when it misses the brick)."""
    w = ccd_wcs(ccd, header)
    pmap = brick_to_ccd_map(brick_wcs, w.sky_to_pix, int(ccd["width"]), int(ccd["height"]),
                            w.corners(pad=2.0))
    return w, pmap


def overlap_box(ccd: np.void, brick_wcs, nsamp: int = 48
                ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
    """Cheap overlap test from the survey-ccds TAN WCS: ((bx0, bx1, by0, by1) brick-pixel box,
    (x0, x1, y0, y1) CCD-pixel box), half-open 0-based, or None when the CCD misses the brick.
    Boxes are approximate to one sampling step (brick size / ``nsamp``)."""
    w = ccd_wcs(ccd)
    W, H = brick_wcs.width, brick_wcs.height
    gx = np.linspace(0, W - 1, nsamp)
    gy = np.linspace(0, H - 1, nsamp)
    GX, GY = np.meshgrid(gx, gy)
    ra, dec = brick_wcs.pixel_to_radec(GX + 1, GY + 1)
    cx, cy = w.sky_to_pix(ra, dec)
    cw, ch = int(ccd["width"]), int(ccd["height"])
    step = max(W, H) / (nsamp - 1) + 2
    ins = (cx > -step) & (cx < cw - 1 + step) & (cy > -step) & (cy < ch - 1 + step)
    if not ins.any():
        return None
    bx0 = max(0, int(GX[ins].min() - step))
    bx1 = min(W, int(GX[ins].max() + step) + 1)
    by0 = max(0, int(GY[ins].min() - step))
    by1 = min(H, int(GY[ins].max() + step) + 1)
    x0 = max(0, int(cx[ins].min()))
    x1 = min(cw, int(np.ceil(cx[ins].max())) + 1)
    y0 = max(0, int(cy[ins].min()))
    y1 = min(ch, int(np.ceil(cy[ins].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return (bx0, bx1, by0, by1), (x0, x1, y0, y1)


def read_ccd_image(layout: ReleaseLayout, ccd: np.void, row: int, brick_wcs) -> CcdImage | None:
    """Read and calibrate the overlap of one CCD with the brick (None when they do not overlap)."""
    import fitsio

    fn = _s(ccd["image_filename"])
    hdu = int(ccd["image_hdu"])
    ccdname = _s(ccd["ccdname"])
    band = _s(ccd["filter"])
    path = layout.image(fn)
    try:
        with fitsio.FITS(str(path)) as f:
            header = f[hdu].read_header()
    except (OSError, ValueError, IndexError) as e:
        raise InputError(f"{path}: cannot read HDU {hdu}: {e}") from None
    wcs, pmap = overlap_map(ccd, brick_wcs, header)
    if pmap is None:
        return None
    W, H = int(ccd["width"]), int(ccd["height"])
    x0 = max(0, int(np.floor(np.nanmin(pmap.x))) - READ_PAD)
    x1 = min(W, int(np.ceil(np.nanmax(pmap.x))) + READ_PAD + 1)
    y0 = max(0, int(np.floor(np.nanmin(pmap.y))) - READ_PAD)
    y1 = min(H, int(np.ceil(np.nanmax(pmap.y))) + READ_PAD + 1)
    if x1 <= x0 or y1 <= y0:
        return None

    def subset(p: Path, what: str) -> np.ndarray:
        try:
            with fitsio.FITS(str(p)) as f:
                return f[hdu][y0:y1, x0:x1]
        except (OSError, ValueError, IndexError) as e:
            raise InputError(f"{p}: cannot read {what} HDU {hdu}: {e}") from None

    img = subset(path, "image").astype(np.float32, copy=False)
    wname = companion(fn, "oow")
    if wname is None:
        raise InputError(f"{path}: no weight-map name for this image")
    wt = subset(layout.image(wname), "weight").astype(np.float32, copy=False)
    dname = companion(fn, "ood")
    dq = (subset(layout.image(dname), "mask") if dname is not None
          else np.zeros(img.shape, np.int16))
    if img.shape != (y1 - y0, x1 - x0) or wt.shape != img.shape or dq.shape != img.shape:
        raise InputError(f"{path}: HDU {hdu} is smaller than its survey-ccds size {W}x{H}")

    sky = read_splinesky(calib_path(layout, fn, ccdname, "splinesky"), ccdname)
    skyimg = _smooth_sky(sky, x0, y0, x1 - x0, y1 - y0)
    psfmodel = read_psfex(calib_path(layout, fn, ccdname, "psfex"), ccdname)
    cx = float(np.clip(pmap.x[pmap.shape[0] // 2, pmap.shape[1] // 2], 0, W - 1))
    cy = float(np.clip(pmap.y[pmap.shape[0] // 2, pmap.shape[1] // 2], 0, H - 1))
    psf = psfmodel.at(cx, cy).astype(np.float32)

    exptime = float(ccd["exptime"])
    zpt = float(ccd["ccdzpt"])
    if not (exptime > 0 and np.isfinite(zpt) and zpt > 0):
        raise InputError(f"{path}: CCD {ccdname} has no usable zeropoint/exptime "
                         f"(ccdzpt={zpt}, exptime={exptime})")
    # image -> nanomaggies: flux = counts per second * 10**((22.5 - zpt) / 2.5), counts per
    # second being the image / exptime (DECam) or the image itself (Mosaic-3, 90Prime: e-/s)
    cam = camera_for(fn, _s(ccd["camera"]) if "camera" in ccd.dtype.names else "")
    scale = np.float32(10.0 ** ((22.5 - zpt) / 2.5) / cam.counts_per_second(exptime))
    good = wt > 0  # (False for NaN)
    good &= dq == 0
    good &= np.isfinite(img)
    good &= np.isfinite(wt)
    bad = ~good
    ivar = np.multiply(wt, np.float32(1.0 / scale ** 2), dtype=np.float32)
    ivar[bad] = 0
    img = np.subtract(img, skyimg, dtype=np.float32)
    img *= scale
    img[bad] = 0
    del skyimg, wt, good, bad
    dq = remap_dq(dq)
    pixscale = wcs.tan.pixscale
    fwhm_pix = float(psfmodel.fwhm)
    if not np.isfinite(fwhm_pix) or fwhm_pix <= 0:
        fwhm_pix = float(ccd["fwhm"])
    return CcdImage(row=row, band=band, x0=x0, y0=y0, img=img, ivar=ivar,
                    dq=dq, wcs=wcs, pmap=pmap, psf=psf,
                    psfmodel=psfmodel,
                    fwhm=fwhm_pix * pixscale,
                    psfnorm=float(np.sqrt(np.sum(psf.astype(float) ** 2))),
                    galnorm=_galnorm(psf.astype(float), pixscale),
                    mjd=float(ccd["mjd_obs"]) if "mjd_obs" in ccd.dtype.names else 0.0)
