"""Reading the CCDs of a CP exposure (image, weight, data-quality) for the lite processors.

``open_exposure(layout, image_filename)`` opens the ``ooi`` file and its ``oow`` /
``ood`` companions (missing companions: weights from the image header's sky
noise are not invented; a missing weight file is an InputError, a missing DQ
file means "all good"). Any FITS failure names the file (``InputError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...survey.camera import camera_of, companion
from ...survey.wcs import TanWCS


@dataclass
class CcdData:
    """Pixels and headers of one CCD."""

    ccdname: str
    ext: int
    img: np.ndarray  # float64, image units (ADU)
    ivar: np.ndarray  # float64, 1 / ADU^2
    good: np.ndarray  # bool: ivar > 0 and DQ == 0
    hdr: dict
    wcs: TanWCS
    saturated: np.ndarray = field(default=None)  # bool: DQ saturated (code 3 / bit 2)
    astropy_wcs: object = None  # set for TPV (distorted) headers

    def sky2pix(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) -> 0-based pixel (x, y), through TPV distortions when present."""
        if self.astropy_wcs is not None:
            x, y = self.astropy_wcs.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
            return np.asarray(x), np.asarray(y)
        x, y = self.wcs.radec_to_pixel(ra, dec)
        return np.asarray(x) - 1.0, np.asarray(y) - 1.0

    def pix2sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel (x, y) -> (ra, dec)."""
        if self.astropy_wcs is not None:
            r, d = self.astropy_wcs.all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
            return np.asarray(r), np.asarray(d)
        return self.wcs.pixel_to_radec(np.asarray(x) + 1.0, np.asarray(y) + 1.0)


def _fits_open(path: Path):
    import fitsio

    try:
        return fitsio.FITS(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: cannot open FITS file: {e}") from None


def _hdr_dict(h) -> dict:
    return {k.upper(): h[k] for k in h.keys() if k}


class Exposure:
    """An open CP exposure: the ooi file and its companions."""

    def __init__(self, layout, image_filename: str):
        self.image_filename = image_filename
        self.path = layout.image(image_filename)
        if not self.path.exists():
            raise InputError(f"{self.path}: image file not found")
        self.camera = camera_of(image_filename)
        self.f = _fits_open(self.path)
        oow = companion(image_filename, "oow")
        ood = companion(image_filename, "ood")
        self.wpath = layout.image(oow) if oow else None
        self.dpath = layout.image(ood) if ood else None
        if self.wpath is None or not self.wpath.exists():
            raise InputError(f"{self.path}: weight map {self.wpath} not found")
        self.w = _fits_open(self.wpath)
        self.d = _fits_open(self.dpath) if self.dpath is not None and self.dpath.exists() else None
        try:
            self.primary = _hdr_dict(self.f[0].read_header())
            self.exts = []
            for h in self.f:
                info = h.get_info()
                if h.get_exttype() == "IMAGE_HDU" and len(info.get("dims", [])) == 2:
                    self.exts.append((h.get_extnum(), h.get_extname().strip()))
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{self.path}: cannot read FITS headers: {e}") from None
        if not self.exts:
            raise InputError(f"{self.path}: no image extensions")

    def close(self) -> None:
        for f in (self.f, self.w, self.d):
            if f is not None:
                f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def read_ccd(self, ext: int, name: str) -> CcdData:
        """Read one CCD; corrupt pixel data raises InputError naming the file."""
        try:
            hdr = _hdr_dict(self.f[ext].read_header())
            img = self.f[ext].read().astype(float)
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{self.path}[{name}]: cannot read image: {e}") from None
        try:
            ivar = self.w[name if name else ext].read().astype(float)
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{self.wpath}[{name}]: cannot read weight map: {e}") from None
        dq = None
        if self.d is not None:
            try:
                dq = self.d[name if name else ext].read()
            except (OSError, ValueError, RuntimeError) as e:
                raise InputError(f"{self.dpath}[{name}]: cannot read DQ mask: {e}") from None
        if ivar.shape != img.shape or (dq is not None and dq.shape != img.shape):
            raise InputError(f"{self.path}[{name}]: image, weight and DQ shapes differ")
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
        good = (ivar > 0) & np.isfinite(img)
        sat = np.zeros(img.shape, dtype=bool)
        if dq is not None:
            good &= dq == 0
            sat = dq == 3
        img = np.where(np.isfinite(img), img, 0.0)
        merged = dict(self.primary)
        merged.update(hdr)
        h, w = img.shape
        wcs = TanWCS.from_header(merged, width=w, height=h)
        # upper case, as legacyzpts names CCDs (Mosaic-3/90Prime EXTNAMEs are 'ccd1'...)
        ccdname = str(hdr.get("CCDNAME", hdr.get("DETPOS", name)) or name).strip().upper()
        aw = None
        if "TPV" in str(merged.get("CTYPE1", "")):
            import warnings

            from astropy.io.fits import Header
            from astropy.wcs import WCS

            keep = {k: v for k, v in hdr.items()
                    if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD", "PV", "CUNIT", "WCSAXES",
                                     "NAXIS", "EQUINOX", "RADESYS"))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aw = WCS(Header(keep))
        return CcdData(ccdname=ccdname, ext=ext, img=img, ivar=ivar, good=good, hdr=merged,
                       wcs=wcs, saturated=sat, astropy_wcs=aw)


def open_exposure(layout, image_filename: str) -> Exposure:
    return Exposure(layout, image_filename)


def header_float(hdr: dict, keys, default: float) -> float:
    """First numeric header value among ``keys`` (else ``default``)."""
    for k in keys:
        v = hdr.get(k)
        try:
            if v is not None and np.isfinite(float(v)):
                return float(v)
        except (TypeError, ValueError):
            continue
    return default


def parse_sexagesimal(v, hours: bool) -> float:
    """'hh:mm:ss.s' / 'dd:mm:ss' (or a number) -> degrees; NaN when unparsable."""
    if v is None:
        return float("nan")
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    try:
        parts = [float(p) for p in s.replace(" ", ":").split(":")]
    except ValueError:
        return float("nan")
    sign = -1.0 if s.startswith("-") else 1.0
    val = abs(parts[0]) + (parts[1] if len(parts) > 1 else 0) / 60 + (
        parts[2] if len(parts) > 2 else 0) / 3600
    return sign * val * (15.0 if hours else 1.0)
