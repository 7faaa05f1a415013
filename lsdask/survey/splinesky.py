"""Spline sky models (legacypipe's ``splinesky`` files), real and lite.

A file holds one table row per CCD (merged per exposure) or a single row
(``sky-single`` per-CCD files and old ``decam-<expnum>-<ccd>.fits`` files; the
oldest hold a ``tractor.sky.ConstantSky`` as ``SKY_P0`` in the primary header).
Columns (lower case): ``gridvals[gridh, gridw]`` (sky level at the grid nodes),
``xgrid[gridw]``, ``ygrid[gridh]`` (node pixel positions), ``x0, y0`` (offset of
the image in grid coordinates: a cutout's pixel ``(i, j)`` is grid point
``(i + x0, j + y0)``), ``order`` (spline order), and when present ``ccdname``,
``expnum``, ``sig1``, ``sky_med``, ``sky_john``, percentiles ...

API (stable)::

    read_splinesky(path, ccdname=None) -> SplineSky
    read_splinesky_all(path) -> dict[ccdname, SplineSky]
    write_splinesky(path, rows: numpy structured array)   # lite writer
    SplineSky.evaluate(x0=0, y0=0, width=None, height=None) -> (height, width) sky image
    SplineSky.at(x, y) -> sky values at 0-based pixel positions (arrays)
    SplineSky.sky_med, .sig1 (NaN when absent)

The surface is scipy's ``RectBivariateSpline`` through the grid nodes with the
stored order (reduced where the grid has too few nodes), as tractor's SplineSky.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

__all__ = ["SplineSky", "read_splinesky", "read_splinesky_all", "write_splinesky",
           "SPLINESKY_DTYPE"]


@dataclass
class SplineSky:
    """Sky model of one CCD."""

    gridvals: np.ndarray  # (gridh, gridw)
    xgrid: np.ndarray
    ygrid: np.ndarray
    x0: int = 0
    y0: int = 0
    order: int = 3
    ccdname: str = ""
    expnum: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.gridvals = np.atleast_2d(np.asarray(self.gridvals, dtype=float))
        self.xgrid = np.atleast_1d(np.asarray(self.xgrid, dtype=float))
        self.ygrid = np.atleast_1d(np.asarray(self.ygrid, dtype=float))
        self._spl = None

    @property
    def sky_med(self) -> float:
        return float(self.meta.get("sky_med", np.nan))

    @property
    def sig1(self) -> float:
        return float(self.meta.get("sig1", np.nan))

    def _spline(self):
        if self._spl is None:
            from scipy.interpolate import RectBivariateSpline

            kx = max(1, min(int(self.order), len(self.xgrid) - 1))
            ky = max(1, min(int(self.order), len(self.ygrid) - 1))
            if len(self.xgrid) < 2 or len(self.ygrid) < 2:
                self._spl = float(np.mean(self.gridvals))
            else:
                self._spl = RectBivariateSpline(self.xgrid, self.ygrid, self.gridvals.T,
                                                kx=kx, ky=ky, s=0)
        return self._spl

    def evaluate(self, x0: int = 0, y0: int = 0, width: int | None = None,
                 height: int | None = None) -> np.ndarray:
        """Sky image of the pixel box ``[y0:y0+height, x0:x0+width]`` (0-based pixels)."""
        if width is None:
            width = int(round(self.xgrid[-1] - self.x0 - x0 + 1)) if len(self.xgrid) else 1
        if height is None:
            height = int(round(self.ygrid[-1] - self.y0 - y0 + 1)) if len(self.ygrid) else 1
        spl = self._spline()
        if isinstance(spl, float):
            return np.full((height, width), spl)
        xs = np.arange(x0, x0 + width, dtype=float) + self.x0
        ys = np.arange(y0, y0 + height, dtype=float) + self.y0
        return spl(xs, ys).T

    def at(self, x, y) -> np.ndarray:
        """Sky values at 0-based pixel positions (broadcasting arrays)."""
        spl = self._spline()
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if isinstance(spl, float):
            return np.full(np.broadcast(x, y).shape, spl)
        return spl.ev(x + self.x0, y + self.y0)


def _val(row, names, key, default=None):
    if key not in names:
        return default
    v = row[key]
    return v.decode() if isinstance(v, bytes) else v


def read_splinesky_all(path: str | os.PathLike) -> dict[str, SplineSky]:
    """Every sky model in a splinesky file, keyed by stripped CCD name ('' when unnamed)."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            if len(f) < 2:  # old tractor.sky.ConstantSky: the level in the header
                hdr = f[0].read_header()
                if "SKY_P0" not in hdr:
                    raise InputError(f"{path}: neither a sky table nor a SKY_P0 header value")
                return {"": SplineSky(gridvals=[[float(hdr["SKY_P0"])]], xgrid=[0.0],
                                      ygrid=[0.0], order=0,
                                      meta={"skyclass": str(hdr.get("SKY", ""))})}
            data = f[1].read()
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read splinesky file: {e}") from None
    data.dtype.names = tuple(n.lower() for n in data.dtype.names)
    names = set(data.dtype.names)
    for need in ("gridvals", "xgrid", "ygrid"):
        if need not in names:
            raise InputError(f"{path}: splinesky table has no {need!r} column")
    meta_keys = [n for n in names if n.startswith("sky_") or n in ("sig1", "plver", "procdate",
                                                                   "plprocid", "skyclass")]
    out: dict[str, SplineSky] = {}
    for row in data:
        ccd = str(_val(row, names, "ccdname", "") or "").strip()
        gv = np.atleast_2d(np.array(row["gridvals"]))
        xg, yg = np.array(row["xgrid"]).ravel(), np.array(row["ygrid"]).ravel()
        gw = int(_val(row, names, "gridw", len(xg)))  # merged files pad to the widest CCD
        gh = int(_val(row, names, "gridh", len(yg)))
        out[ccd] = SplineSky(
            gridvals=gv[:gh, :gw], xgrid=xg[:gw], ygrid=yg[:gh], x0=int(_val(row, names, "x0", 0)),
            y0=int(_val(row, names, "y0", 0)), order=int(_val(row, names, "order", 3)),
            ccdname=ccd, expnum=int(_val(row, names, "expnum", 0) or 0),
            meta={k: _val(row, names, k) for k in meta_keys})
    return out


def read_splinesky(path: str | os.PathLike, ccdname: str | None = None) -> SplineSky:
    """One CCD's sky model; ``ccdname=None`` takes the only (or first) row."""
    models = read_splinesky_all(path)
    if ccdname is None:
        return next(iter(models.values()))
    for k, m in models.items():
        if k.upper() == ccdname.strip().upper():
            return m
    if list(models) == [""]:
        return models[""]
    raise InputError(f"{path}: no sky model for CCD {ccdname!r} (has {sorted(models)})")


def SPLINESKY_DTYPE(gridh: int, gridw: int) -> np.dtype:  # noqa: N802 (dtype factory)
    """Row dtype of a lite merged splinesky file (real column names)."""
    return np.dtype([
        ("gridw", "i8"), ("gridh", "i8"), ("gridvals", "f4", (gridh, gridw)),
        ("xgrid", "i4", (gridw,)), ("ygrid", "i4", (gridh,)), ("x0", "i4"), ("y0", "i4"),
        ("order", "u1"), ("skyclass", "S27"), ("legpipev", "S20"), ("plver", "S8"),
        ("plprocid", "S7"), ("procdate", "S19"), ("sig1", "f4"), ("sky_mode", "f4"),
        ("sky_med", "f4"), ("sky_john", "f4"), ("sky_fmasked", "f4"), ("sky_p10", "f4"),
        ("sky_p50", "f4"), ("sky_p90", "f4"), ("boxsize", "i4"), ("expnum", "i8"),
        ("ccdname", "S5")])


def write_splinesky(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write a merged splinesky table atomically (EXTNAME SKY)."""
    import fitsio

    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(rows, extname="SKY")
    return Path(path)
