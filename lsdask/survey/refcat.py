"""Reference stars (Gaia chunks, real or simulated) within a footprint. No Dask here.

Chunks are named as legacypipe's Gaia catalogue: ``chunk-%05d.fits`` where the
number is the HEALPix (nside 32, RING) pixel of the stars it holds. Real Gaia
columns are kept (``ra, dec, pmra, pmdec, ref_epoch, phot_g_mean_mag,
phot_bp_mean_mag, phot_rp_mean_mag, *_flux_over_error`` ...). Simulated chunks add
PS1-like DECam-system magnitudes ``mag_g, mag_r, mag_z`` and errors ``mag_g_err``...

API (stable)::

    healpix_ring(ra, dec, nside=32) -> int array
    healpixes_touching(ra, dec, radius_deg=None, box=None) -> sorted pixel list
    read_chunk(path, what) -> rows of one healpixed file, or None (absent or empty)
    chunk_name(index) -> "chunk-04759.fits"
    read_refstars(gaia_dir, ra, dec, radius_deg=None, box=None, bands=("g","r","z"))
        -> structured array: ra, dec, pmra, pmdec (and errors), parallax (and error),
           ref_epoch, gaia_g, mag_<b>, mag_<b>_err, source_id, astrometric_excess_noise
    gaia_to_decam(g, bp, rp, band) -> DECam magnitude (legacypipe's transformation)

Selection is a cone (``ra, dec, radius_deg``) or a box ``(ramin, ramax, decmin,
decmax)``; every chunk touching the selection is read (found by sampling it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .bricks import radec_in_box
from .wcs import angular_separation

__all__ = ["healpix_ring", "healpixes_touching", "read_chunk", "chunk_name", "read_refstars",
           "gaia_to_decam", "REFSTAR_DTYPE"]

GAIA_NSIDE = 32


def healpix_ring(ra, dec, nside: int = GAIA_NSIDE) -> np.ndarray:
    """HEALPix RING pixel index of (ra, dec) in degrees (vectorised; Gorski et al. 2005)."""
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    z = np.sin(np.radians(dec))
    za = np.abs(z)
    tt = np.mod(np.radians(ra), 2 * np.pi) / (np.pi / 2)
    pix = np.zeros(z.shape, dtype=np.int64)
    eq = za <= 2.0 / 3.0
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * 0.75 * z[eq]
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ir = nside + 1 + jp - jm
    kshift = 1 - (ir & 1)
    ip = np.mod((jp + jm - nside + kshift + 1) // 2, 4 * nside)
    pix[eq] = 2 * nside * (nside - 1) + (ir - 1) * 4 * nside + ip
    pc = ~eq
    tp = tt[pc] - np.floor(tt[pc])
    tmp = nside * np.sqrt(3 * (1 - za[pc]))
    jp = (tp * tmp).astype(np.int64)
    jm = ((1 - tp) * tmp).astype(np.int64)
    ir = jp + jm + 1
    ip = np.mod((tt[pc] * ir).astype(np.int64), 4 * ir)
    npix = 12 * nside * nside
    pix[pc] = np.where(z[pc] > 0, 2 * ir * (ir - 1) + ip, npix - 2 * ir * (ir + 1) + ip)
    return pix


def chunk_name(index: int) -> str:
    return f"chunk-{int(index):05d}.fits"


REFSTAR_DTYPE = np.dtype([("ra", "f8"), ("dec", "f8"), ("pmra", "f4"), ("pmdec", "f4"),
                          ("pmra_error", "f4"), ("pmdec_error", "f4"), ("parallax", "f4"),
                          ("parallax_error", "f4"), ("ref_epoch", "f4"), ("gaia_g", "f4"),
                          ("mag_g", "f4"), ("mag_g_err", "f4"), ("mag_r", "f4"),
                          ("mag_r_err", "f4"), ("mag_z", "f4"), ("mag_z_err", "f4"),
                          ("source_id", "i8"), ("astrometric_excess_noise", "f4")])

# legacypipe's gaiacat.gaia_to_decam: DECam - G = sum c_k (BP-RP)^k, BP-RP clipped to
# -0.6..4.1 and 1.4 where BP or RP is missing (Rongpu Zhou's fits, 2020)
_GAIA_DECAM = {
    "g": (-0.1178631039, 0.3650113495, 0.5608615360, -0.2850687702, -1.0243473939,
          1.4378375491, 0.0679401731, -1.1713172509, 0.9107811975, -0.3374324004,
          0.0683946390, -0.0073089582, 0.0003230170),
    "r": (0.1139078673, -0.2868955307, 0.0013196434, 0.1029151074, 0.1196710702,
          -0.3729031390, 0.1859874242, 0.1370162451, -0.1808580848, 0.0803219195,
          -0.0180218196, 0.0020584707, -0.0000953486),
    "z": (0.4811198057, -0.9990015041, 0.1403990019, 0.2150988888, -0.2917655866,
          0.1326831887, -0.0259205004, 0.0018548776),
}
_GAIA_COLOR_RANGE, _GAIA_AVERAGE_COLOR = (-0.6, 4.1), 1.4


def gaia_to_decam(g, bp, rp, band: str) -> np.ndarray:
    """DECam ``band`` magnitude of stars from Gaia G, BP, RP (legacypipe's transformation;
    NaN where G is missing)."""
    g = np.asarray(g, dtype=float)
    bp, rp = np.asarray(bp, dtype=float), np.asarray(rp, dtype=float)
    c = bp - rp
    bad = ~np.isfinite(c) | (bp == 0) | (rp == 0)
    c = np.clip(np.where(bad, _GAIA_AVERAGE_COLOR, c), *_GAIA_COLOR_RANGE)
    mag = g + sum(a * c ** k for k, a in enumerate(_GAIA_DECAM[band]))
    return np.where(np.isfinite(g) & (g != 0), mag, np.nan)


def read_chunk(path: Path, what: str) -> np.ndarray | None:
    """The rows of one healpixed catalogue file (column names lower-case); None when the
    file is absent or its table empty. A file that cannot be read or has no table raises
    InputError naming it."""
    import fitsio

    if not path.exists():
        return None
    try:
        with fitsio.FITS(str(path)) as f:
            if len(f) < 2:
                raise ValueError("no table HDU (truncated?)")
            if f[1].get_nrows() == 0:
                return None
            d = f[1].read()
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read {what}: {e}") from None
    d.dtype.names = tuple(n.lower() for n in d.dtype.names)
    return d


def healpixes_touching(ra: float | None = None, dec: float | None = None,
                       radius_deg: float | None = None,
                       box: tuple[float, float, float, float] | None = None) -> list[int]:
    """HEALPix (nside 32, RING) pixels touching a cone or a box (found by sampling it)."""
    sr, sd = _sample_points(ra, dec, radius_deg, box)
    return sorted(set(healpix_ring(sr, sd).tolist()))


def _sample_points(ra, dec, radius_deg, box):
    if box is not None:
        ramin, ramax, decmin, decmax = box
        span = (ramax - ramin) % 360 if ramax != ramin else 360.0
        rr = np.mod(ramin + np.linspace(0, span, 24), 360)
        dd = np.linspace(decmin, decmax, 24)
        R, D = np.meshgrid(rr, dd)
        return R.ravel(), D.ravel()
    n = 12
    t = np.linspace(0, 2 * np.pi, 36)
    rs = np.linspace(0, radius_deg, n)
    R = [ra]
    D = [dec]
    for r in rs[1:]:
        D.extend(np.clip(dec + r * np.sin(t), -90, 90))
        R.extend(ra + r * np.cos(t) / max(np.cos(np.radians(dec)), 1e-3))
    return np.mod(np.array(R), 360), np.array(D)


def read_refstars(gaia_dir: str | os.PathLike, ra: float | None = None, dec: float | None = None,
                  radius_deg: float | None = None,
                  box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Reference stars in a cone or box, as :data:`REFSTAR_DTYPE` rows.

    Real Gaia chunks give DECam magnitudes through :func:`gaia_to_decam`
    (errors from the flux-over-error columns plus 0.02 mag); NaN where unknown.
    """
    gaia_dir = Path(gaia_dir)
    if box is None and (ra is None or dec is None or radius_deg is None):
        raise ValueError("read_refstars needs ra, dec, radius_deg or box")
    parts = []
    for c in healpixes_touching(ra, dec, radius_deg, box):
        d = read_chunk(gaia_dir / chunk_name(c), "reference chunk")
        if d is None:
            continue
        if box is not None:
            keep = radec_in_box(d["ra"], d["dec"], *box)
        else:
            keep = angular_separation(ra, dec, d["ra"], d["dec"]) <= radius_deg
        d = d[keep]
        out = np.zeros(len(d), dtype=REFSTAR_DTYPE)
        names = set(d.dtype.names)
        for k in ("ra", "dec", "pmra", "pmdec", "pmra_error", "pmdec_error", "parallax",
                  "parallax_error", "ref_epoch", "source_id"):
            if k in names:
                out[k] = np.nan_to_num(d[k])
        out["astrometric_excess_noise"] = d["astrometric_excess_noise"] \
            if "astrometric_excess_noise" in names else np.nan
        if "ref_epoch" not in names:
            out["ref_epoch"] = 2015.5
        out["gaia_g"] = d["phot_g_mean_mag"] if "phot_g_mean_mag" in names else np.nan
        for b in ("g", "r", "z"):
            if f"mag_{b}" in names:
                out[f"mag_{b}"] = d[f"mag_{b}"]
                out[f"mag_{b}_err"] = d[f"mag_{b}_err"]
            elif {"phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag"} <= names:
                out[f"mag_{b}"] = gaia_to_decam(d["phot_g_mean_mag"], d["phot_bp_mean_mag"],
                                                d["phot_rp_mean_mag"], b)
                with np.errstate(divide="ignore", invalid="ignore"):
                    e = 1.0857 / np.asarray(d["phot_g_mean_flux_over_error"], dtype=float)
                out[f"mag_{b}_err"] = np.hypot(np.nan_to_num(e, nan=0.05), 0.02)
            else:
                out[f"mag_{b}"] = np.nan
                out[f"mag_{b}_err"] = np.nan
        parts.append(out)
    if not parts:
        return np.zeros(0, dtype=REFSTAR_DTYPE)
    return np.concatenate(parts)
