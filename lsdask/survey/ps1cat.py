"""Pan-STARRS1 photometric calibrators as legacyzpts reads them. No Dask here.

The catalogue is healpixed as legacypipe's ``ps1cat``: ``ps1-%05d.fits`` per HEALPix
(nside 32, RING) pixel, with ``ra, dec, nmag_ok[5], median[5], median_err[5]`` in PS1
``grizY``. A star calibrates a DECam image when PS1 measured it in g, r and i
(``nmag_ok > 0``) and its PS1 ``g - i`` is within 0.4-2.7; its DECam magnitude is the PS1
one plus legacypipe's ``ps1_to_decam`` colour term (a cubic in ``g - i``, clipped to
+-1 mag, as ``LegacySurveyImage.photometric_calibrator_to_observed``).

API (stable)::

    ps1_chunk_name(index) -> "ps1-04759.fits"
    read_ps1(ps1_dir, ra, dec, radius_deg) -> raw rows of every chunk touching the cone
    ps1_to_decam(median, band) -> colour term (DECam - PS1) per star
    ps1_calibrators(ps1_dir, ra, dec, radius_deg, band) -> obj_id, ra, dec, mag, mag_err
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .refcat import healpixes_touching, read_chunk
from .wcs import angular_separation

__all__ = ["PS1_BANDS", "PS1_TO_DECAM", "ps1_chunk_name", "read_ps1", "ps1_to_decam",
           "ps1_calibrators", "CALIBRATOR_DTYPE"]

PS1_BANDS = "grizY"
#: legacypipe's ``ps1cat.ps1_to_decam`` coefficients: DECam - PS1 = sum c_k (g - i)^k.
PS1_TO_DECAM = {"g": (0.00062, 0.03604, 0.01028, -0.00613),
                "r": (0.00495, -0.08435, 0.03222, -0.01140),
                "i": (0.00904, -0.04171, 0.00566, -0.00829),
                "z": (0.02583, -0.07690, 0.02824, -0.00898),
                "Y": (0.02332, -0.05992, 0.02840, -0.00572)}
#: legacyzpts' PS1 g - i range of calibrator stars (DECam broad bands).
GI_RANGE = (0.4, 2.7)
#: legacyzpts' clip of the colour term (mag).
COLORTERM_CLIP = 1.0

CALIBRATOR_DTYPE = np.dtype([("obj_id", "i8"), ("ra", "f8"), ("dec", "f8"), ("mag", "f4"),
                             ("mag_err", "f4")])


def ps1_chunk_name(index: int) -> str:
    return f"ps1-{int(index):05d}.fits"


def read_ps1(ps1_dir: str | os.PathLike, ra: float, dec: float, radius_deg: float) -> np.ndarray:
    """PS1 rows within ``radius_deg`` of (ra, dec) (column names lower-case); empty when no
    chunk covers the cone. A chunk that cannot be read raises InputError naming it."""
    parts = []
    for c in healpixes_touching(ra, dec, radius_deg):
        d = read_chunk(Path(ps1_dir) / ps1_chunk_name(c), "PS1 chunk")
        if d is None:
            continue
        parts.append(d[angular_separation(ra, dec, d["ra"], d["dec"]) <= radius_deg])
    return np.concatenate(parts) if parts else np.zeros(0, [("ra", "f8"), ("dec", "f8")])


def ps1_to_decam(median: np.ndarray, band: str) -> np.ndarray:
    """DECam ``band`` minus PS1 magnitude for stars with PS1 ``median[:, grizY]``."""
    median = np.asarray(median, dtype=float)
    gi = median[:, 0] - median[:, 2]
    return sum(c * gi ** k for k, c in enumerate(PS1_TO_DECAM[band]))


def ps1_calibrators(ps1_dir: str | os.PathLike, ra: float, dec: float, radius_deg: float,
                    band: str) -> np.ndarray:
    """The cone's PS1 stars that calibrate DECam ``band`` (legacyzpts' cuts), with their
    DECam magnitudes, as :data:`CALIBRATOR_DTYPE` rows."""
    d = read_ps1(ps1_dir, ra, dec, radius_deg)
    if len(d) == 0 or band not in PS1_TO_DECAM:
        return np.zeros(0, CALIBRATOR_DTYPE)
    med = np.asarray(d["median"], dtype=float)
    gi = med[:, 0] - med[:, 2]
    ok = np.all(d["nmag_ok"][:, :3] > 0, axis=1) & (gi > GI_RANGE[0]) & (gi < GI_RANGE[1])
    d, med = d[ok], med[ok]
    out = np.zeros(len(d), CALIBRATOR_DTYPE)
    out["ra"], out["dec"] = d["ra"], d["dec"]
    out["obj_id"] = d["obj_id"] if "obj_id" in d.dtype.names else -1
    i = PS1_BANDS.index(band)
    term = np.clip(ps1_to_decam(med, band), -COLORTERM_CLIP, COLORTERM_CLIP)
    out["mag"] = med[:, i] + term
    out["mag_err"] = d["median_err"][:, i] if "median_err" in d.dtype.names else np.nan
    return out
