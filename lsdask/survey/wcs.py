"""Vectorised gnomonic (TAN) world coordinate systems.

All arrays broadcast, so one call can transform points through many different
WCSs at once (e.g. the corners of 10^6 CCDs, or CCD corners into candidate
bricks). Pixel coordinates follow FITS: the first pixel centre is (1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_D2R = np.pi / 180.0


def tan_pixel_to_radec(x, y, crval1, crval2, crpix1, crpix2, cd11, cd12, cd21, cd22):
    """FITS pixel (x, y) -> (ra, dec) in degrees through TAN WCS parameters (broadcasting)."""
    dx = np.asarray(x, dtype=float) - crpix1
    dy = np.asarray(y, dtype=float) - crpix2
    xi = (cd11 * dx + cd12 * dy) * _D2R
    eta = (cd21 * dx + cd22 * dy) * _D2R
    ra0 = np.asarray(crval1, dtype=float) * _D2R
    dec0 = np.asarray(crval2, dtype=float) * _D2R
    sd0, cdd0 = np.sin(dec0), np.cos(dec0)
    denom = cdd0 - eta * sd0
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(sd0 + eta * cdd0, np.hypot(xi, denom))
    return np.mod(ra / _D2R, 360.0), dec / _D2R


def tan_radec_to_pixel(ra, dec, crval1, crval2, crpix1, crpix2, cd11, cd12, cd21, cd22):
    """(ra, dec) degrees -> FITS pixel (x, y) through TAN WCS parameters (broadcasting).

    Points 90 degrees or more from the tangent point get NaN.
    """
    ra = np.asarray(ra, dtype=float) * _D2R
    dec = np.asarray(dec, dtype=float) * _D2R
    ra0 = np.asarray(crval1, dtype=float) * _D2R
    dec0 = np.asarray(crval2, dtype=float) * _D2R
    sd, cd = np.sin(dec), np.cos(dec)
    sd0, cd0 = np.sin(dec0), np.cos(dec0)
    dra = ra - ra0
    cdra = np.cos(dra)
    cosc = sd0 * sd + cd0 * cd * cdra
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cosc > 0, 1.0 / cosc, np.nan)
    xi = cd * np.sin(dra) * inv / _D2R
    eta = (cd0 * sd - sd0 * cd * cdra) * inv / _D2R
    det = cd11 * cd22 - cd12 * cd21
    dx = (cd22 * xi - cd12 * eta) / det
    dy = (-cd21 * xi + cd11 * eta) / det
    return dx + crpix1, dy + crpix2


def unit_vectors(ra, dec) -> np.ndarray:
    """(n, 3) unit vectors of (ra, dec) in degrees (for kd-tree matching on the sphere)."""
    ra = np.deg2rad(np.asarray(ra, dtype=np.float64))
    dec = np.deg2rad(np.asarray(dec, dtype=np.float64))
    c = np.cos(dec)
    return np.stack([c * np.cos(ra), c * np.sin(ra), np.sin(dec)], axis=1)


def chord(radius_arcsec: float) -> float:
    """Chord length between unit vectors ``radius_arcsec`` apart."""
    return 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance in degrees (haversine; broadcasting)."""
    ra1, dec1, ra2, dec2 = (np.asarray(a, dtype=float) * _D2R for a in (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))) / _D2R


@dataclass(frozen=True)
class TanWCS:
    """A TAN WCS with an image size; one image, scalar parameters."""

    crval1: float
    crval2: float
    crpix1: float
    crpix2: float
    cd1_1: float
    cd1_2: float
    cd2_1: float
    cd2_2: float
    width: int
    height: int

    @property
    def params(self) -> tuple[float, ...]:
        return (self.crval1, self.crval2, self.crpix1, self.crpix2,
                self.cd1_1, self.cd1_2, self.cd2_1, self.cd2_2)

    @property
    def pixscale(self) -> float:
        """Pixel scale in arcsec/pixel."""
        return 3600.0 * float(np.sqrt(abs(self.cd1_1 * self.cd2_2 - self.cd1_2 * self.cd2_1)))

    def pixel_to_radec(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return tan_pixel_to_radec(x, y, *self.params)

    def radec_to_pixel(self, ra: ArrayLike, dec: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return tan_radec_to_pixel(ra, dec, *self.params)

    def corners(self) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec of the four outer pixel-edge corners."""
        x = np.array([0.5, self.width + 0.5, self.width + 0.5, 0.5])
        y = np.array([0.5, 0.5, self.height + 0.5, self.height + 0.5])
        return self.pixel_to_radec(x, y)

    def center(self) -> tuple[float, float]:
        ra, dec = self.pixel_to_radec((self.width + 1) / 2.0, (self.height + 1) / 2.0)
        return float(ra), float(dec)

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        """True where (ra, dec) falls on the image's pixels (edges inclusive)."""
        x, y = self.radec_to_pixel(ra, dec)
        with np.errstate(invalid="ignore"):
            return (x >= 0.5) & (x <= self.width + 0.5) & (y >= 0.5) & (y <= self.height + 0.5)

    def header_cards(self) -> dict[str, object]:
        """FITS header keywords for this WCS."""
        return {
            "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
            "CRVAL1": self.crval1, "CRVAL2": self.crval2,
            "CRPIX1": self.crpix1, "CRPIX2": self.crpix2,
            "CD1_1": self.cd1_1, "CD1_2": self.cd1_2, "CD2_1": self.cd2_1, "CD2_2": self.cd2_2,
            "IMAGEW": self.width, "IMAGEH": self.height,
        }

    def to_astropy(self):
        """The equivalent ``astropy.wcs.WCS`` (with ``pixel_shape`` set)."""
        from astropy.wcs import WCS

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.crval1, self.crval2]
        w.wcs.crpix = [self.crpix1, self.crpix2]
        w.wcs.cd = [[self.cd1_1, self.cd1_2], [self.cd2_1, self.cd2_2]]
        w.pixel_shape = (self.width, self.height)
        return w

    @classmethod
    def from_header(cls, hdr, width: int | None = None, height: int | None = None) -> TanWCS:
        """Read the TAN part of a FITS header (TPV/SIP distortion terms are ignored)."""
        def get(key, default=None):
            v = hdr.get(key, default)
            if v is None:
                raise KeyError(key)
            return float(v)

        if "CD1_1" in hdr:
            cd = (get("CD1_1"), get("CD1_2", 0.0), get("CD2_1", 0.0), get("CD2_2"))
        else:  # CDELT form
            cd = (get("CDELT1"), 0.0, 0.0, get("CDELT2"))
        w = width if width is not None else int(hdr.get("ZNAXIS1", hdr.get("NAXIS1", 0)))
        h = height if height is not None else int(hdr.get("ZNAXIS2", hdr.get("NAXIS2", 0)))
        return cls(get("CRVAL1"), get("CRVAL2"), get("CRPIX1"), get("CRPIX2"), *cd, w, h)
