"""Random survey-ccds tables (DECam-sized CCDs anywhere on the sky) for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from ..survey.ccds import empty_ccds


def random_ccds(n: int, seed: int = 0, width: int = 2046, height: int = 4094,
                pixscale: float = 0.262, ra_range: tuple[float, float] = (0.0, 360.0),
                dec_range: tuple[float, float] = (-90.0, 90.0), bands: str = "grz",
                cut_fraction: float = 0.1) -> np.ndarray:
    """``n`` CCD rows uniform on the sphere (within the ranges), random rotation, a fraction
    with ``ccd_cuts != 0``."""
    rng = np.random.default_rng(seed)
    c = empty_ccds(n)
    u = rng.uniform(np.sin(np.radians(dec_range[0])), np.sin(np.radians(dec_range[1])), n)
    c["crval1"] = rng.uniform(*ra_range, n) % 360.0
    c["crval2"] = np.degrees(np.arcsin(u))
    theta = rng.uniform(0, 2 * np.pi, n)
    s = pixscale / 3600.0
    c["cd1_1"], c["cd1_2"] = -s * np.cos(theta), s * np.sin(theta)
    c["cd2_1"], c["cd2_2"] = s * np.sin(theta), s * np.cos(theta)
    c["width"], c["height"] = width, height
    c["crpix1"], c["crpix2"] = (width + 1) / 2.0, (height + 1) / 2.0
    c["ra"], c["dec"] = c["crval1"], c["crval2"]
    c["filter"] = rng.choice(list(bands), n)
    c["camera"] = "decam"
    c["expnum"] = np.arange(n) // 60 + 100000
    c["ccdname"] = "N" + (np.arange(n) % 31 + 1).astype(str)
    c["ccd_cuts"] = np.where(rng.uniform(size=n) < cut_fraction, 0x10, 0)
    return c
