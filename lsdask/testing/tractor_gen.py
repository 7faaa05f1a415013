"""Generate DR9-format tractor catalogue sets (tests, benchmarks, notebooks).

:func:`generate_release(layout, bricks, rows_per_brick)` writes, per brick, at the layout's
paths: ``tractor/<bri>/tractor-<brick>.fits`` (all 181 DR9 columns), the depth histogram
``coadd/<bri>/<brick>/legacysurvey-<brick>-depth.fits`` and ``brick-<brick>.sha256sum``.
Sources are spread uniformly over each brick's 3600 x 3600 pixel grid (0.262"/pixel),
which overlaps the neighbouring bricks, and ``brick_primary`` follows the brick bounds, as
runbrick does. Deterministic for a given seed and brick.

:func:`patch_bricks(n, ra, dec)` picks ``n`` bricks around a point (RA wraps).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, sha256_file, write_text_atomic
from ..survey.bricks import brick_grid
from ..survey.layout import ReleaseLayout
from ..survey.releases import DEFAULT_RELEASE
from ..survey.tractor import (
    ALL_BANDS,
    LC_BANDS,
    MW_COEFFS,
    OPTICAL_BANDS,
    TRACTOR_DTYPE,
    TYPES,
    WISE_BANDS,
    empty_tractor,
    mw_transmission,
    write_tractor,
)
from ..survey.wcs import angular_separation

#: Depth histogram bin edges (FORMATS.md): arange(20, 25.001, 0.1), first 0, last 100.
DEPTH_EDGES = np.arange(20, 25.001, 0.1)
DEPTH_EDGES[0], DEPTH_EDGES[-1] = 0.0, 100.0
TARGET_DEPTH = {"g": 24.0, "r": 23.4, "z": 22.5}


def patch_bricks(n: int, ra: float, dec: float) -> list[str]:
    """The ``n`` bricks whose centres are nearest to (ra, dec), sorted by name."""
    g = brick_grid()
    t = g.table
    w = 0.25 * (np.sqrt(n) + 2)
    near = np.abs(t["dec"] - dec) <= w
    idx = np.flatnonzero(near)
    d = angular_separation(t["ra"][idx], t["dec"][idx], ra, dec)
    order = idx[np.argsort(d, kind="stable")[:n]]
    return sorted(str(s) for s in t["brickname"][order])


def _seed(seed: int, brick: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(brick.encode())) & 0xFFFFFFFF


def brick_catalogue(brick: str, n: int, seed: int = 0,
                    release: int = DEFAULT_RELEASE) -> np.ndarray:
    """``n`` DR9 tractor rows for ``brick`` (sorted by objid)."""
    b = brick_grid().brick(brick)
    rng = np.random.default_rng(_seed(seed, brick))
    t = empty_tractor(n)
    # fill every float column with something non-trivial first
    for name in TRACTOR_DTYPE.names:
        dt = TRACTOR_DTYPE[name]
        if dt.base.kind == "f":
            t[name] = rng.random((n, *dt.shape), dtype=np.float32)
        elif dt.base.kind in "iu" and name not in ("release", "brickid", "objid"):
            t[name] = rng.integers(0, 8, size=(n, *dt.shape), dtype=dt.base)
    wcs = b.wcs()
    bx = rng.uniform(-0.5, wcs.width - 0.5, n).astype(np.float32)
    by = rng.uniform(-0.5, wcs.height - 0.5, n).astype(np.float32)
    ra, dec = wcs.pixel_to_radec(bx.astype(float) + 1.0, by.astype(float) + 1.0)
    ra = np.mod(ra, 360.0)
    t["release"] = release
    t["brickid"] = b.brickid
    t["brickname"] = brick.encode()
    t["objid"] = np.arange(n, dtype=np.int32)
    t["brick_primary"] = b.contains(ra, dec)
    t["ra"], t["dec"] = ra, dec
    t["bx"], t["by"] = bx, by
    t["ra_ivar"] = rng.uniform(1e9, 1e11, n)
    t["dec_ivar"] = rng.uniform(1e9, 1e11, n)
    t["type"] = rng.choice(np.array(TYPES[:5], dtype="S3"), n, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    t["maskbits"] = np.where(rng.random(n) < 0.05, 2, 0)
    t["fitbits"] = 0
    ebv = rng.uniform(0.01, 0.12, n).astype(np.float32)
    t["ebv"] = ebv
    for band in ALL_BANDS:
        t[f"mw_transmission_{band}"] = mw_transmission(ebv, band)
    rmag = rng.uniform(17.0, 24.5, n)
    gr = rng.normal(0.7, 0.4, n)
    rz = rng.normal(0.5, 0.3, n)
    mags = {"g": rmag + gr, "r": rmag, "z": rmag - rz,
            "w1": rmag - rz - 1.0, "w2": rmag - rz - 0.8, "w3": rmag - 2, "w4": rmag - 3}
    for band in ALL_BANDS:
        ext = MW_COEFFS[band] * ebv
        flux = 10 ** ((22.5 - mags[band] - ext) / 2.5)
        t[f"flux_{band}"] = flux + rng.normal(0, 0.05 * np.sqrt(flux + 1))
        t[f"flux_ivar_{band}"] = rng.uniform(50, 500, n) if band in OPTICAL_BANDS \
            else rng.uniform(0.5, 5, n)
        t[f"nobs_{band}"] = rng.integers(1, 6, n)
    for band in OPTICAL_BANDS:
        t[f"psfdepth_{band}"] = 1.0 / (10 ** ((22.5 - TARGET_DEPTH[band]) / 2.5) / 5) ** 2
        t[f"galdepth_{band}"] = t[f"psfdepth_{band}"] * 0.7
        t[f"fiberflux_{band}"] = t[f"flux_{band}"] * 0.4
        t[f"fibertotflux_{band}"] = t[f"flux_{band}"] * 0.45
        t[f"psfsize_{band}"] = rng.uniform(0.9, 1.8, n)
    for band in WISE_BANDS[:2]:
        t[f"wisemask_{band}"] = 0
    gal = t["type"] != b"PSF"
    t["shape_r"] = np.where(gal, rng.lognormal(0, 0.5, n), 0).astype(np.float32)
    t["sersic"] = np.where(t["type"] == b"SER", rng.uniform(0.5, 6, n),
                           np.where(t["type"] == b"DEV", 4.0,
                                    np.where(gal, 1.0, 0.0))).astype(np.float32)
    star = rng.random(n) < 0.1
    t["ref_cat"] = np.where(star, b"G2", b"")
    t["ref_id"] = np.where(star, rng.integers(1, 2**62, n), 0)
    t["ref_epoch"] = np.where(star, 2015.5, 0).astype(np.float32)
    t["mjd_min"] = rng.uniform(56000, 57000, n)
    t["mjd_max"] = t["mjd_min"] + rng.uniform(0, 2000, n)
    t["wise_coadd_id"] = f"{int(b.ra * 10):04d}{'p' if b.dec >= 0 else 'm'}" \
                         f"{int(abs(b.dec) * 10):03d}"[:8].encode()
    for band in LC_BANDS:
        t[f"lc_epoch_index_{band}"] = np.arange(15, dtype=np.int16)
        t[f"lc_mjd_{band}"] = 55200 + 180 * np.arange(15) + rng.random((n, 15))
    return t


def depth_table(brick: str, seed: int = 0, bands: Iterable[str] = OPTICAL_BANDS) -> np.ndarray:
    """A ``legacysurvey-<brick>-depth.fits`` table: 50 bins, per band point-source and galaxy
    5-sigma depth histograms over the brick's unique pixels."""
    b = brick_grid().brick(brick)
    rng = np.random.default_rng(_seed(seed + 7, brick))
    pixarea = (0.262 / 3600) ** 2
    area = (np.deg2rad(b.ra2 - b.ra1) * (np.sin(np.deg2rad(b.dec2)) - np.sin(np.deg2rad(b.dec1)))
            * (180 / np.pi) ** 2)
    npix = int(round(area / pixarea))
    bands = list(bands)
    dt = [("depthlo", "f4"), ("depthhi", "f4")]
    for band in bands:
        dt += [(f"counts_ptsrc_{band}", "i4"), (f"counts_gal_{band}", "i4")]
    d = np.zeros(len(DEPTH_EDGES) - 1, dtype=dt)
    d["depthlo"], d["depthhi"] = DEPTH_EDGES[:-1], DEPTH_EDGES[1:]
    centers = 0.5 * (np.clip(DEPTH_EDGES[:-1], 19.9, None) + np.clip(DEPTH_EDGES[1:], None, 25.1))
    for band in bands:
        mu = TARGET_DEPTH.get(band, 23.0) + rng.normal(0.2, 0.2)
        for kind, off in (("ptsrc", 0.0), ("gal", -0.35)):
            p = np.exp(-0.5 * ((centers - mu - off) / 0.3) ** 2)
            p /= p.sum()
            d[f"counts_{kind}_{band}"] = rng.multinomial(npix, p)
    return d


def write_brick(layout: ReleaseLayout, brick: str, rows: int, seed: int = 0,
                release: int = DEFAULT_RELEASE, depth: bool = True) -> Path:
    """Write one brick's tractor catalogue, depth table and sha256sum file."""
    import fitsio

    b = brick_grid().brick(brick)
    cat = brick_catalogue(brick, rows, seed, release)
    primhdr = {"BRICKNAM": brick, "BRICKID": b.brickid, "RAMIN": b.ra1, "RAMAX": b.ra2,
               "DECMIN": b.dec1, "DECMAX": b.dec2, "RELEASE": release, "SURVEY": "lsdask-gen",
               "DEPNAM00": "lsdask", "DEPVER00": "generator", "BANDS": "grz"}
    out = layout.tractor(brick)
    write_tractor(out, cat, header=primhdr, primary_header=primhdr)
    files = [out]
    if depth:
        dpath = layout.coadd(brick, "depth.fits")
        with atomic_path(dpath) as tmp:
            fitsio.write(str(tmp), depth_table(brick, seed), clobber=True)
        files.append(dpath)
    lines = [f"{sha256_file(f)} *{f.relative_to(layout.release_dir)}\n" for f in files]
    write_text_atomic(layout.sha256sum(brick), "".join(lines))
    return out


def _write_brick_star(args):
    return write_brick(*args)


def generate_release(layout: ReleaseLayout, bricks: Iterable[str] | int = 4,
                     rows_per_brick: int = 3000, seed: int = 0, release: int = DEFAULT_RELEASE,
                     depth: bool = True, processes: int = 1,
                     center: tuple[float, float] = (180.5, 32.5)) -> list[str]:
    """Write a tractor catalogue set; ``bricks`` is a list of names or a count (a patch
    around ``center``). Returns the brick names."""
    names = patch_bricks(bricks, *center) if isinstance(bricks, int) else list(bricks)
    jobs = [(layout, name, rows_per_brick, seed, release, depth) for name in names]
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as ex:
            list(ex.map(_write_brick_star, jobs))
    else:
        for j in jobs:
            write_brick(*j)
    return names
