"""The official Legacy Surveys 0.25-degree brick grid (662,174 bricks).

Built vectorised in a few tens of milliseconds and cached; identical to
``desiutil.brick.Bricks(0.25)`` (see FORMATS.md for the rules).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .wcs import TanWCS

BRICKSIZE = 0.25
#: Pixel scale (arcsec/pixel) and size (pixels) of the runbrick pixel grid.
BRICK_PIXSCALE = 0.262
BRICK_SIZE_PIX = 3600

BRICK_DTYPE = np.dtype([
    ("brickname", "U8"), ("brickid", "i4"), ("brickq", "i2"), ("brickrow", "i4"),
    ("brickcol", "i4"), ("ra", "f8"), ("dec", "f8"), ("ra1", "f8"), ("ra2", "f8"),
    ("dec1", "f8"), ("dec2", "f8"),
])


@dataclass(frozen=True)
class Brick:
    """One brick of the grid."""

    brickname: str
    brickid: int
    brickq: int
    brickrow: int
    brickcol: int
    ra: float
    dec: float
    ra1: float
    ra2: float
    dec1: float
    dec2: float

    @property
    def name(self) -> str:
        return self.brickname

    @property
    def bri(self) -> str:
        """Output subdirectory: the first three characters of the name."""
        return self.brickname[:3]

    def wcs(self, width: int = BRICK_SIZE_PIX, height: int | None = None,
            pixscale: float = BRICK_PIXSCALE) -> TanWCS:
        """The brick's runbrick pixel grid: TAN at the brick centre, north up, east left."""
        height = width if height is None else height
        scale = pixscale / 3600.0
        return TanWCS(self.ra, self.dec, (width + 1) / 2.0, (height + 1) / 2.0,
                      -scale, 0.0, 0.0, scale, width, height)

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        """``brick_primary`` rule: ra1 <= ra < ra2 and dec1 <= dec < dec2."""
        ra = np.mod(np.asarray(ra, dtype=float), 360.0)
        dec = np.asarray(dec, dtype=float)
        return (ra >= self.ra1) & (ra < self.ra2) & (dec >= self.dec1) & (dec < self.dec2)


def _format_names(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Vectorised ``("%07.0f" % (ra*1e4))[:4] + p/m + ("%06.0f" % (|dec|*1e4))[:3]``."""
    rapart = np.rint(ra * 1e4).astype(np.int64) // 1000  # 7 digits -> first 4
    decpart = np.rint(np.abs(dec) * 1e4).astype(np.int64) // 1000  # 6 digits -> first 3
    n = len(ra)
    chars = np.empty((n, 8), dtype=np.uint8)
    for i, div in enumerate((1000, 100, 10, 1)):
        chars[:, i] = ord("0") + (rapart // div) % 10
    chars[:, 4] = np.where(dec >= 0, ord("p"), ord("m"))
    for i, div in enumerate((100, 10, 1)):
        chars[:, 5 + i] = ord("0") + (decpart // div) % 10
    return chars.view("S8").ravel().astype("U8")


class BrickGrid:
    """The whole grid as column arrays, with vectorised lookups.

    Use :func:`brick_grid` for the cached 0.25-degree instance.
    """

    def __init__(self, bricksize: float = BRICKSIZE):
        self.bricksize = bricksize
        dec_c = np.arange(-90.0, 90.0 + bricksize / 2, bricksize)
        dec_c[-1] = min(90.0, dec_c[-1])
        edges = np.arange(-90.0 - bricksize / 2, 90.0 + bricksize, bricksize)
        edges[0], edges[-1] = -90.0, 90.0
        nrow = len(dec_c)
        declo = np.maximum(0.0, np.abs(dec_c) - bricksize / 2)
        ncol = (np.ceil(360.0 / bricksize * np.cos(np.deg2rad(declo)) / 2) * 2).astype(np.int64)
        ncol[0] = 1
        if dec_c[-1] == 90.0:
            ncol[-1] = 1
        self.nrow = nrow
        self.dec_centers = dec_c
        self.dec_edges = edges
        self.ncol = ncol
        self.row_start = np.concatenate([[0], np.cumsum(ncol)[:-1]])
        n = int(ncol.sum())

        row = np.repeat(np.arange(nrow), ncol)
        col = np.arange(n) - self.row_start[row]
        nc = ncol[row].astype(float)
        # linspace(0, 360, ncol+1) edges, computed exactly as numpy's linspace does
        step = 360.0 / nc
        ra1 = col * step
        ra2 = np.where(col + 1 == nc, 360.0, (col + 1) * step)
        ra = 0.5 * (ra1 + ra2)
        polar = ncol[row] == 1
        ra = np.where(polar, 180.0, ra)
        dec = dec_c[row]
        t = np.empty(n, dtype=BRICK_DTYPE)
        t["brickname"] = _format_names(ra, dec)
        t["brickid"] = np.arange(1, n + 1)
        t["brickq"] = np.where(row == 0, 1, (col % 2) + 2 * (row % 2))
        t["brickrow"] = row
        t["brickcol"] = col
        t["ra"], t["dec"] = ra, dec
        t["ra1"], t["ra2"] = ra1, ra2
        t["dec1"], t["dec2"] = edges[row], edges[row + 1]
        self.table = t
        self._name_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.table)

    # -- lookups ---------------------------------------------------------
    def index(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        """0-based row index into :attr:`table` of the brick containing each (ra, dec)."""
        ra = np.mod(np.atleast_1d(np.asarray(ra, dtype=float)), 360.0)
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        row = np.clip(((dec + 90.0 + self.bricksize / 2) / self.bricksize).astype(np.int64),
                      0, self.nrow - 1)
        nc = self.ncol[row]
        col = np.minimum((ra / 360.0 * nc).astype(np.int64), nc - 1)
        return self.row_start[row] + col

    def brickname(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        return self.table["brickname"][self.index(ra, dec)]

    def brickid(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        return self.table["brickid"][self.index(ra, dec)]

    def brick(self, key: str | int) -> Brick:
        """A brick by name (``"1802p325"``) or by brickid (1-based int)."""
        if isinstance(key, (int, np.integer)):
            if not 1 <= key <= len(self):
                raise KeyError(f"no brick with brickid {key} (valid 1..{len(self)})")
            i = int(key) - 1
        else:
            if self._name_index is None:
                self._name_index = {n: i for i, n in enumerate(self.table["brickname"].tolist())}
            try:
                i = self._name_index[str(key)]
            except KeyError:
                raise KeyError(f"no brick named {key!r}") from None
        return self.row(i)

    def row(self, i: int) -> Brick:
        r = self.table[i]
        return Brick(str(r["brickname"]), int(r["brickid"]), int(r["brickq"]),
                     int(r["brickrow"]), int(r["brickcol"]), *(float(r[k]) for k in
                     ("ra", "dec", "ra1", "ra2", "dec1", "dec2")))

    def in_box(self, ramin: float, ramax: float, decmin: float, decmax: float) -> np.ndarray:
        """Indices of bricks whose centre lies in the box (edges inclusive).

        ``ramin > ramax`` means the box wraps through RA 0 (e.g. 350..10).
        """
        t = self.table
        return np.flatnonzero(radec_in_box(t["ra"], t["dec"], ramin, ramax, decmin, decmax))

    def write(self, path: str | Path) -> None:
        """Write ``survey-bricks.fits(.gz)`` (upper-case columns, as the real file), atomically."""
        import fitsio

        from ..atomic import atomic_path

        out = np.empty(len(self.table), dtype=[(n.upper(), "S8" if n == "brickname" else f)
                                               for n, (f, _) in BRICK_DTYPE.fields.items()])
        for n in BRICK_DTYPE.names:
            out[n.upper()] = self.table[n]
        with atomic_path(path) as tmp:
            fitsio.write(str(tmp), out, extname="BRICKS", clobber=True)


def radec_in_box(ra: ArrayLike, dec: ArrayLike, ramin: float, ramax: float,
                 decmin: float, decmax: float) -> np.ndarray:
    """Points inside an RA/Dec box, edges inclusive; ``ramin > ramax`` wraps through 0."""
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    indec = (dec >= decmin) & (dec <= decmax)
    if ramax - ramin >= 360.0:
        return indec
    lo, hi = ramin % 360.0, ramax % 360.0
    if ramax == 360.0:
        hi = 360.0
    inra = (ra >= lo) & (ra <= hi) if lo <= hi else (ra >= lo) | (ra <= hi)
    return indec & inra


@functools.cache
def brick_grid() -> BrickGrid:
    """The cached official 0.25-degree grid."""
    return BrickGrid(BRICKSIZE)
