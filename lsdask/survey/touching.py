"""Bricks touched by CCDs: the brick list (legacypipe's ``queue-calibs --touching``).

A CCD touches a brick when its footprint (its four outer pixel corners through
its TAN WCS) overlaps the brick's runbrick pixel grid. Candidates come from
the grid rows and columns within the exact great-circle bound
``r_ccd + r_brick`` of the CCD centre; the exact test is a separating-axis
test of the CCD quadrilateral (projected into the brick's tangent plane)
against the pixel square. All of it is vectorised in chunks, so 10^6 CCDs
take seconds.
"""

from __future__ import annotations

import logging

import numpy as np

from .bricks import BRICK_PIXSCALE, BRICK_SIZE_PIX, BrickGrid, brick_grid
from .ccds import WCS_COLUMNS, usable
from .regions import Region
from .wcs import angular_separation, tan_pixel_to_radec, tan_radec_to_pixel

log = logging.getLogger(__name__)

_D2R = np.pi / 180.0


def ccd_corners(ccds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec of each CCD's four outer pixel corners, shape (n, 4)."""
    w = ccds["width"].astype(float)[:, None]
    h = ccds["height"].astype(float)[:, None]
    x = np.where([True, False, False, True], 0.5, w + 0.5)
    y = np.where([True, True, False, False], 0.5, h + 0.5)
    p = [ccds[c].astype(float)[:, None] for c in WCS_COLUMNS[:8]]
    return tan_pixel_to_radec(x, y, *p)


def ccd_centers(ccds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec of each CCD's central pixel through its WCS."""
    p = [ccds[c].astype(float) for c in WCS_COLUMNS]
    return tan_pixel_to_radec((p[8] + 1) / 2, (p[9] + 1) / 2, *p[:8])


def _candidates(ra, dec, radius, grid: BrickGrid):
    """(ccd index, brick index) pairs whose centres lie within ``radius`` (degrees, per CCD)."""
    bs = grid.bricksize
    row_lo = np.clip(np.ceil((dec - radius + 90.0) / bs - 1e-9), 0, grid.nrow - 1).astype(np.int64)
    row_hi = np.clip(np.floor((dec + radius + 90.0) / bs + 1e-9), 0, grid.nrow - 1).astype(np.int64)
    nrows = row_hi - row_lo + 1
    ci = np.repeat(np.arange(len(ra)), nrows)
    row = row_lo[ci] + (np.arange(len(ci)) - np.repeat(np.cumsum(nrows) - nrows, nrows))
    ncol = grid.ncol[row]
    # exact RA half-width of the circle at this row: cos d1 cos d2 sin^2(dra/2) <= sin^2(R/2)
    dec_row = grid.dec_centers[row]
    cc = np.cos(dec[ci] * _D2R) * np.cos(dec_row * _D2R)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sin(radius[ci] * _D2R / 2) / np.sqrt(np.maximum(cc, 0))
    full = (ncol <= 2) | ~(s < 1)
    dra = np.where(full, 180.0, 2 * np.arcsin(np.minimum(s, 1)) / _D2R)
    lo = np.ceil((ra[ci] - dra) * ncol / 360.0 - 0.5 - 1e-9).astype(np.int64)
    hi = np.floor((ra[ci] + dra) * ncol / 360.0 - 0.5 + 1e-9).astype(np.int64)
    count = np.minimum(hi - lo + 1, ncol)
    full |= count >= ncol
    lo = np.where(full, 0, lo)
    count = np.where(full, ncol, np.maximum(count, 0))
    pi = np.repeat(np.arange(len(ci)), count)
    k = np.arange(len(pi)) - np.repeat(np.cumsum(count) - count, count)
    col = np.mod(lo[pi] + k, ncol[pi])
    return ci[pi], grid.row_start[row[pi]] + col


def _overlaps(px: np.ndarray, py: np.ndarray, x0: float, x1: float, y0: float,
              y1: float) -> np.ndarray:
    """Separating-axis test: convex quadrilaterals (m, 4) against the box [x0,x1]x[y0,y1]."""
    sep = (px.max(1) < x0) | (px.min(1) > x1) | (py.max(1) < y0) | (py.min(1) > y1)
    bx = np.array([x0, x1, x1, x0])
    by = np.array([y0, y0, y1, y1])
    for k in range(4):
        nx = -(py[:, (k + 1) % 4] - py[:, k])
        ny = px[:, (k + 1) % 4] - px[:, k]
        q = nx[:, None] * px + ny[:, None] * py
        b = nx[:, None] * bx + ny[:, None] * by
        sep |= (b.max(1) < q.min(1)) | (q.max(1) < b.min(1))
    return ~sep & np.isfinite(px).all(1) & np.isfinite(py).all(1)


def ccd_brick_pairs(ccds: np.ndarray, width: int = BRICK_SIZE_PIX,
                    pixscale: float = BRICK_PIXSCALE, chunk: int = 50_000,
                    grid: BrickGrid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All (ccd index, brick index) pairs where the CCD overlaps the brick's pixel grid.

    Brick indices are 0-based rows of ``brick_grid().table``.
    """
    grid = grid or brick_grid()
    brick_r = width * pixscale / 3600.0 / 2 * np.sqrt(2)
    half = width / 2.0
    scale = pixscale / 3600.0
    out_c, out_b = [], []
    for start in range(0, len(ccds), chunk):
        part = ccds[start:start + chunk]
        cra, cdec = ccd_corners(part)
        ra0, dec0 = ccd_centers(part)
        r_ccd = angular_separation(ra0[:, None], dec0[:, None], cra, cdec).max(1)
        radius = r_ccd + brick_r + 1e-3
        ci, bi = _candidates(ra0, dec0, radius, grid)
        t = grid.table
        near = angular_separation(ra0[ci], dec0[ci], t["ra"][bi], t["dec"][bi]) <= radius[ci]
        ci, bi = ci[near], bi[near]
        px, py = tan_radec_to_pixel(cra[ci], cdec[ci], t["ra"][bi][:, None],
                                    t["dec"][bi][:, None], half + 0.5, half + 0.5,
                                    -scale, 0.0, 0.0, scale)
        ok = _overlaps(px, py, 0.5, width + 0.5, 0.5, width + 0.5)
        out_c.append(ci[ok] + start)
        out_b.append(bi[ok])
    if not out_c:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_c), np.concatenate(out_b)


def bricks_touching_ccds(ccds: np.ndarray, region: Region | None = None,
                         bands: list[str] | None = None, ignore_cuts: bool = False,
                         width: int = BRICK_SIZE_PIX,
                         pixscale: float = BRICK_PIXSCALE) -> list[str]:
    """Names of bricks touched by usable CCDs, with centres in ``region``, sorted by RA."""
    grid = brick_grid()
    sel = ccds[usable(ccds, bands, ignore_cuts)]
    if region is not None and len(sel):
        margin = 1.0  # generous: CCD + brick radii are well under a degree
        _, dec = ccd_centers(sel)
        sel = sel[(dec >= region.decmin - margin) & (dec <= region.decmax + margin)]
    log.info("%d usable CCDs (of %d)", len(sel), len(ccds))
    _, bi = ccd_brick_pairs(sel, width, pixscale, grid=grid)
    bi = np.unique(bi)
    t = grid.table
    if region is not None:
        bi = bi[region.contains(t["ra"][bi], t["dec"][bi])]
    order = np.lexsort((t["dec"][bi], t["ra"][bi]))
    log.info("%d bricks touched", len(bi))
    return t["brickname"][bi[order]].tolist()
