"""survey-ccds tables: one row per CCD.

Tables are numpy structured arrays with lower-case column names (real files use
either case). Files may be ``.fits``, ``.fits.gz`` or astrometry.net ``.kd.fits``;
several files are merged. Arrow/Parquet conversion is lossless (dtypes kept).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..errors import InputError
from .arrowfits import arrow_to_numpy, numpy_to_arrow

log = logging.getLogger(__name__)

#: The DR9 key columns (FORMATS.md) that lsdask writes, in order.
SURVEY_CCDS_DTYPE = np.dtype([
    ("image_filename", "U120"), ("image_hdu", "i2"), ("camera", "U7"), ("expnum", "i8"),
    ("plver", "U8"), ("procdate", "U19"), ("plprocid", "U7"), ("ccdname", "U5"),
    ("object", "U35"), ("propid", "U10"), ("filter", "U1"), ("exptime", "f4"),
    ("mjd_obs", "f8"), ("airmass", "f4"), ("fwhm", "f4"), ("width", "i2"), ("height", "i2"),
    ("ra_bore", "f8"), ("dec_bore", "f8"), ("crpix1", "f4"), ("crpix2", "f4"),
    ("crval1", "f8"), ("crval2", "f8"), ("cd1_1", "f4"), ("cd1_2", "f4"), ("cd2_1", "f4"),
    ("cd2_2", "f4"), ("yshift", "?"), ("ra", "f8"), ("dec", "f8"), ("skyrms", "f4"),
    ("sig1", "f4"), ("ccdzpt", "f4"), ("zpt", "f4"), ("ccdraoff", "f4"), ("ccddecoff", "f4"),
    ("ccdskycounts", "f4"), ("ccdskysb", "f4"), ("ccdrarms", "f4"), ("ccddecrms", "f4"),
    ("ccdphrms", "f4"), ("phrms", "f4"), ("ccdnastrom", "i2"), ("ccdnphotom", "i2"),
    ("ccd_cuts", "i4"), ("psfnorm_mean", "f4"), ("galnorm_mean", "f4"),
    ("psfdepth", "f4"), ("galdepth", "f4"),
])

#: Columns needed to place a CCD on the sky.
WCS_COLUMNS = ("crval1", "crval2", "crpix1", "crpix2", "cd1_1", "cd1_2", "cd2_1", "cd2_2",
               "width", "height")

#: ``ccd_cuts`` bits (DR9).
CCD_CUTS = {
    "err_legacyzpts": 0x1, "not_grz": 0x2, "not_third_pix": 0x4, "exptime": 0x8,
    "ccdnmatch": 0x10, "zpt_diff_avg": 0x20, "zpt_small": 0x40, "zpt_large": 0x80,
    "sky_is_bright": 0x100, "badexp_file": 0x200, "phrms": 0x400, "radecrms": 0x800,
    "seeing_bad": 0x1000, "early_decam": 0x2000, "depth_cut": 0x4000, "too_many_bad_ccds": 0x8000,
    "flagged_in_des": 0x10000, "phrms_s7": 0x20000,
}


def rename_columns(arr: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """A view of ``arr`` with new field names (never mutates a shared dtype)."""
    d = arr.dtype
    new = np.dtype({"names": list(names), "formats": [d.fields[n][0] for n in d.names],
                    "offsets": [d.fields[n][1] for n in d.names], "itemsize": d.itemsize})
    return arr.view(new)


def _lower(arr: np.ndarray) -> np.ndarray:
    return rename_columns(arr, [n.lower() for n in arr.dtype.names])


def _as_text(arr: np.ndarray) -> np.ndarray:
    """Byte-string (``S``) columns as ``U``, as fitsio returns them."""
    d = arr.dtype
    if not any(d[n].kind == "S" for n in d.names):
        return arr
    return arr.astype([(n, f"U{d[n].itemsize}") if d[n].kind == "S" else (n, d[n])
                       for n in d.names])


def _table_hdu(fits, path) -> int:
    """Index of the first binary-table HDU with rows (kd.fits files hold many HDUs)."""
    for i, hdu in enumerate(fits):
        if hdu.get_exttype() in ("BINARY_TBL", "ASCII_TBL"):
            return i
    raise InputError(f"{path}: no table HDU found (not a survey-ccds file?)")


def read_ccd_file(path: str | os.PathLike, columns: Sequence[str] | None = None,
                  required: Iterable[str] = WCS_COLUMNS) -> np.ndarray:
    """Read one survey-ccds file (lower-case names); missing ``required`` columns raise
    :class:`InputError` naming the file and the columns."""
    import fitsio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: survey-ccds file not found")
    try:
        with fitsio.FITS(str(path)) as f:
            ext = _table_hdu(f, path)
            names = f[ext].get_colnames()
            lower = {n.lower(): n for n in names}
            missing = [c for c in required if c.lower() not in lower]
            if missing:
                raise InputError(f"{path}: missing required column(s) {', '.join(missing)}")
            cols = None
            if columns is not None:
                cols = [lower[c.lower()] for c in columns if c.lower() in lower]
            data = f[ext].read(columns=cols)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read FITS table: {e}") from None
    return _lower(data)


def read_ccds(paths: str | os.PathLike | Sequence[str | os.PathLike],
              columns: Sequence[str] | None = None,
              required: Iterable[str] = WCS_COLUMNS) -> np.ndarray:
    """Read and merge survey-ccds files.

    Files with different column sets are merged on their common columns (the
    dropped ones are logged). String columns are widened to the widest file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    required = tuple(required)
    tables = [read_ccd_file(p, columns, required) for p in paths]
    if not tables:
        raise InputError("no survey-ccds files given")
    if len(tables) == 1:
        return tables[0]
    names = list(dict.fromkeys(n for t in tables for n in t.dtype.names))
    # keep columns every file has, plus the DR9 key columns (zero where a file lacks them,
    # e.g. old tables without ccd_cuts: no cuts)
    keep = [n for n in names if all(n in t.dtype.names for t in tables)
            or n in SURVEY_CCDS_DTYPE.names]
    dropped = [n for n in names if n not in keep]
    if dropped:
        log.debug("merging survey-ccds files on common columns; dropped: %s", ", ".join(dropped))
    dtype = []
    for n in keep:
        dts = [t.dtype[n] for t in tables if n in t.dtype.names]
        base = dts[0]
        if base.kind in "SU":
            width = max(d.itemsize // (4 if d.kind == "U" else 1) for d in dts)
            dtype.append((n, f"{base.kind}{width}"))
        elif base.subdtype is not None:
            dtype.append((n, base))
        else:
            dtype.append((n, np.result_type(*dts).newbyteorder("=")))
    out = np.zeros(sum(len(t) for t in tables), dtype=dtype)
    i = 0
    for t in tables:
        for n in keep:
            if n in t.dtype.names:
                out[n][i:i + len(t)] = t[n]
        i += len(t)
    return out


def usable(ccds: np.ndarray, bands: Iterable[str] | None = None,
           ignore_cuts: bool = False) -> np.ndarray:
    """Boolean mask of CCDs to use: ``ccd_cuts == 0`` (tables without the column pass)
    and ``filter`` in ``bands`` (when given)."""
    keep = np.ones(len(ccds), dtype=bool)
    if not ignore_cuts and "ccd_cuts" in ccds.dtype.names:
        keep &= ccds["ccd_cuts"] == 0
    if bands is not None:
        if "filter" not in ccds.dtype.names:
            raise InputError("survey-ccds table has no 'filter' column to select bands")
        filt = np.char.strip(ccds["filter"].astype("U"))
        keep &= np.isin(filt, list(bands))
    return keep


def describe_cuts(ccds: np.ndarray, max_listed: int = 8) -> str:
    """One line on a survey-ccds table: how many CCDs are cut, by which ``ccd_cuts`` bits,
    and which CCDs could not be measured (``err_legacyzpts``: bad pixels, no stars...)."""
    cuts = np.asarray(ccds["ccd_cuts"]).astype(np.int64)
    ncut = int((cuts != 0).sum())
    line = f"{len(ccds)} CCDs, {ncut} cut"
    if not ncut:
        return line
    bits = [f"{name} {n}" for name, bit in CCD_CUTS.items() if (n := int((cuts & bit != 0).sum()))]
    line += f" ({', '.join(bits)})"
    err = np.flatnonzero(cuts & CCD_CUTS["err_legacyzpts"])
    if len(err):
        names = [f"{os.path.basename(str(ccds['image_filename'][i]).strip())} "
                 f"{str(ccds['ccdname'][i]).strip()}" for i in err[:max_listed]]
        more = f" and {len(err) - max_listed} more" if len(err) > max_listed else ""
        line += f"; not measurable: {', '.join(names)}{more}"
    return line


def empty_ccds(n: int) -> np.ndarray:
    """``n`` zeroed rows of :data:`SURVEY_CCDS_DTYPE`."""
    return np.zeros(n, dtype=SURVEY_CCDS_DTYPE)


def ccds_to_arrow(ccds: np.ndarray, metadata: dict[str, str] | None = None) -> pa.Table:
    return numpy_to_arrow(ccds, metadata)


def ccds_from_arrow(table: pa.Table) -> np.ndarray:
    return arrow_to_numpy(table)


def write_ccds(ccds: np.ndarray, path: str | os.PathLike, header: dict | None = None) -> Path:
    """Write a survey-ccds FITS file (``.fits`` or ``.fits.gz``) atomically, EXTNAME CCDS."""
    import fitsio

    path = Path(path)
    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(ccds, extname="CCDS", header=header)
    return path


def write_ccds_parquet(ccds: np.ndarray | pa.Table, path: str | os.PathLike) -> Path:
    """Write the Parquet copy of a survey-ccds table atomically."""
    table = ccds if isinstance(ccds, pa.Table) else ccds_to_arrow(ccds)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_ccds_parquet(path: str | os.PathLike) -> np.ndarray:
    return ccds_from_arrow(pq.read_table(path))


#: Columns every per-exposure zeropoint table must have.
REQUIRED_ZPT_COLUMNS = ("image_filename", "ccdname", "ccdzpt")


def merge_ccd_files(paths: Sequence[str | os.PathLike]) -> pa.Table:
    """Merge many per-exposure survey-ccds tables into one Arrow table, in file order.

    Tables are read straight from their bytes (``read_table_fast``), consecutive tables of
    the same dtype are concatenated in numpy and converted to Arrow once per run, and the
    runs are concatenated by Arrow: no per-row or per-file Python conversion work.
    """
    from .tractor import read_table_fast

    runs: list[list[np.ndarray]] = []
    for p in paths:
        try:
            data = read_table_fast(p)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - garbage bytes: name the file
            raise InputError(f"{p}: not a readable zeropoint table ({type(e).__name__}: {e})"
                             ) from None
        names = {n.lower() for n in (data.dtype.names or ())}
        missing = [c for c in REQUIRED_ZPT_COLUMNS if c not in names]
        if missing:
            raise InputError(f"{p}: zeropoint table lacks column(s) {', '.join(missing)}")
        if runs and runs[-1][0].dtype == data.dtype:
            runs[-1].append(data)
        else:
            runs.append([data])
    if not runs:
        return numpy_to_arrow(empty_ccds(0))
    tables = [numpy_to_arrow(_as_text(_lower(np.concatenate(run)))) for run in runs]
    return pa.concat_tables(tables, promote_options="permissive")
