"""The DR9 tractor catalogue datamodel (``tractor/<bri>/tractor-<brick>.fits``).

API
---
- :data:`TRACTOR_DTYPE`: the 181 DR9 columns, lower-case names, exact dtypes and order
  (legacypipe's ``format_catalog`` with bands g, r, z + WISE, Gaia tag-along, 15 WISE
  light-curve epochs). Array columns: ``dchisq f4[5]``, optical ``apflux*_b f4[8]``, WISE
  ``apflux*_wN f4[5]``, ``lc_*_w1/w2 [15]``.
- :data:`OPTICAL_BANDS` (g, r, z), :data:`WISE_BANDS` (w1..w4), :data:`ALL_BANDS`.
- :data:`MW_COEFFS`: DES/WISE extinction coefficients; :func:`mw_transmission`.
- :func:`empty_tractor(n)`: ``n`` rows of zeros, with the documented nulls:
  ``ref_cat`` '', ``type`` 'PSF', ``lc_epoch_index_*`` -1, ``release`` 9999.
- :func:`read_tractor(path, columns=None)`: a tractor file (ours, legacypipe's, or the older
  DR8 subset files) as a structured array with lower-case names and byte-string (``S``)
  text columns; column lookup is case-insensitive. Raises :class:`InputError` naming the file.
- :func:`validate_tractor(path)`: checks a file has every DR9 column with the right dtype and
  that ``brickname`` agrees with the file name; returns the number of rows.
- :func:`normalize_tractor(data)`: lower-case names, ``S`` strings (``U`` -> ``S``, trailing
  blanks stripped, as FITS pads with blanks), native byte order.
- :func:`write_tractor(path, data, header)`: atomic write with EXTNAME none, header keys.
- :func:`read_table_fast(path)`: a plain FITS table read straight from its bytes (fitsio
  fallback); :class:`FitsTableWriter`: stream rows into a FITS table chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

OPTICAL_BANDS = ("g", "r", "z")
WISE_BANDS = ("w1", "w2", "w3", "w4")
ALL_BANDS = OPTICAL_BANDS + WISE_BANDS
#: WISE bands with time-resolved light curves.
LC_BANDS = ("w1", "w2")
N_APERTURES = 8
N_WISE_APERTURES = 5
N_LC_EPOCHS = 15

#: Galactic extinction coefficients A_b / E(B-V) (DES filters, WISE).
MW_COEFFS = {"g": 3.214, "r": 2.165, "z": 1.211,
             "w1": 0.184, "w2": 0.113, "w3": 0.0241, "w4": 0.0091}

#: Morphological types.
TYPES = ("PSF", "REX", "DEV", "EXP", "SER", "DUP")

_GAIA = [
    ("phot_g_mean_mag", "f4"), ("phot_g_mean_flux_over_error", "f4"), ("phot_g_n_obs", "i2"),
    ("phot_bp_mean_mag", "f4"), ("phot_bp_mean_flux_over_error", "f4"), ("phot_bp_n_obs", "i2"),
    ("phot_rp_mean_mag", "f4"), ("phot_rp_mean_flux_over_error", "f4"), ("phot_rp_n_obs", "i2"),
    ("phot_variable_flag", "?"), ("astrometric_excess_noise", "f4"),
    ("astrometric_excess_noise_sig", "f4"), ("astrometric_n_obs_al", "i2"),
    ("astrometric_n_good_obs_al", "i2"), ("astrometric_weight_al", "f4"),
    ("duplicated_source", "?"), ("a_g_val", "f4"), ("e_bp_min_rp_val", "f4"),
    ("phot_bp_rp_excess_factor", "f4"), ("astrometric_sigma5d_max", "f4"),
    ("astrometric_params_solved", "u1"),
]


def _build_dtype() -> np.dtype:
    cols: list[tuple] = [
        ("release", "i2"), ("brickid", "i4"), ("brickname", "S8"), ("objid", "i4"),
        ("brick_primary", "?"), ("maskbits", "i2"), ("fitbits", "i2"), ("type", "S3"),
        ("ra", "f8"), ("dec", "f8"), ("ra_ivar", "f4"), ("dec_ivar", "f4"),
        ("bx", "f4"), ("by", "f4"), ("dchisq", "f4", (5,)), ("ebv", "f4"),
        ("mjd_min", "f8"), ("mjd_max", "f8"), ("ref_cat", "S2"), ("ref_id", "i8"),
        ("pmra", "f4"), ("pmdec", "f4"), ("parallax", "f4"), ("pmra_ivar", "f4"),
        ("pmdec_ivar", "f4"), ("parallax_ivar", "f4"), ("ref_epoch", "f4"),
    ]
    cols += [("gaia_" + n, t) for n, t in _GAIA]

    def opt(c, t="f4", shape=None):
        for b in OPTICAL_BANDS:
            cols.append((f"{c}_{b}", t, shape) if shape else (f"{c}_{b}", t))

    def wise(c, t="f4", shape=None, bands=WISE_BANDS):
        for b in bands:
            cols.append((f"{c}_{b}", t, shape) if shape else (f"{c}_{b}", t))

    opt("flux"), wise("flux")
    opt("flux_ivar"), wise("flux_ivar")
    opt("fiberflux"), opt("fibertotflux")
    for c in ("apflux", "apflux_resid", "apflux_blobresid", "apflux_ivar", "apflux_masked"):
        opt(c, shape=(N_APERTURES,))
    for c in ("apflux", "apflux_resid", "apflux_ivar"):
        wise(c, shape=(N_WISE_APERTURES,))
    opt("mw_transmission"), wise("mw_transmission")
    for c, t in (("nobs", "i2"), ("rchisq", "f4"), ("fracflux", "f4")):
        opt(c, t), wise(c, t)
    opt("fracmasked"), opt("fracin"), opt("anymask", "i2"), opt("allmask", "i2")
    wise("wisemask", "u1", bands=("w1", "w2"))
    for c in ("psfsize", "psfdepth", "galdepth", "nea", "blob_nea"):
        opt(c)
    wise("psfdepth")
    cols += [("wise_coadd_id", "S8"), ("wise_x", "f4"), ("wise_y", "f4")]
    for c, t in (("lc_flux", "f4"), ("lc_flux_ivar", "f4"), ("lc_nobs", "i2"),
                 ("lc_fracflux", "f4"), ("lc_rchisq", "f4"), ("lc_mjd", "f8"),
                 ("lc_epoch_index", "i2")):
        wise(c, t, shape=(N_LC_EPOCHS,), bands=LC_BANDS)
    cols += [("sersic", "f4"), ("sersic_ivar", "f4"), ("shape_r", "f4"), ("shape_r_ivar", "f4"),
             ("shape_e1", "f4"), ("shape_e1_ivar", "f4"), ("shape_e2", "f4"),
             ("shape_e2_ivar", "f4")]
    return np.dtype(cols)


#: The DR9 tractor catalogue row (181 columns).
TRACTOR_DTYPE: np.dtype = _build_dtype()
TRACTOR_COLUMNS: tuple[str, ...] = TRACTOR_DTYPE.names
assert len(TRACTOR_COLUMNS) == 181

#: Light-curve columns (they go to the ``-lc`` sweep files).
LC_COLUMNS: tuple[str, ...] = tuple(c for c in TRACTOR_COLUMNS if c.startswith("lc_"))


def mw_transmission(ebv: np.ndarray, band: str) -> np.ndarray:
    """``10**(-coeff_b * ebv / 2.5)`` as float32."""
    return (10.0 ** (-MW_COEFFS[band] * np.asarray(ebv, dtype=np.float64) / 2.5)).astype("f4")


def empty_tractor(n: int) -> np.ndarray:
    """``n`` tractor rows: zeros, ``type`` 'PSF', ``release`` 9999, ``lc_epoch_index`` -1,
    ``mw_transmission_*`` 1 (E(B-V) = 0)."""
    t = np.zeros(n, dtype=TRACTOR_DTYPE)
    t["release"] = 9999
    t["type"] = b"PSF"
    for b in LC_BANDS:
        t[f"lc_epoch_index_{b}"] = -1
    for b in ALL_BANDS:
        t[f"mw_transmission_{b}"] = 1.0
    return t


def normalize_tractor(data: np.ndarray) -> np.ndarray:
    """Lower-case names, unicode text as fixed-width bytes, native byte order."""
    descr = []
    needs = False
    for name in data.dtype.names:
        dt = data.dtype[name]
        base, shape = (dt.base, dt.shape) if dt.shape else (dt, ())
        if base.kind == "U":
            base = np.dtype(f"S{max(base.itemsize // 4, 1)}")
            needs = True
        elif base.byteorder not in ("=", "|") and not base.isnative:
            base = base.newbyteorder("=")
            needs = True
        if name != name.lower():
            needs = True
        descr.append((name.lower(), base, shape) if shape else (name.lower(), base))
    if not needs:
        return data
    out = np.empty(len(data), dtype=descr)
    for src, (dst, *_) in zip(data.dtype.names, descr, strict=True):
        col = data[src]
        if col.dtype.kind == "U" or (col.dtype.base.kind == "U"):
            col = np.char.encode(np.char.rstrip(col), "ascii")
        out[dst] = col
    return out


def read_tractor(path: str | Path, columns: list[str] | tuple[str, ...] | None = None,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """Read a tractor catalogue (first table HDU) -> structured array, lower-case names.

    ``columns`` are matched case-insensitively; missing ones raise :class:`InputError`.
    """
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            hdu = _table_hdu(f, path)
            names = hdu.get_colnames()
            if columns is not None:
                lower = {n.lower(): n for n in names}
                missing = [c for c in columns if c.lower() not in lower]
                if missing:
                    raise InputError(f"{path}: missing tractor columns {missing}")
                data = hdu.read(columns=[lower[c.lower()] for c in columns], rows=rows)
            else:
                data = hdu.read(rows=rows)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read tractor catalogue: {e}") from e
    return normalize_tractor(data)


def read_tractor_header(path: str | Path) -> dict:
    """Primary + table header keys of a tractor file (table keys win), as a plain dict."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            out = _header_dict(f[0].read_header())
            out.update(_header_dict(_table_hdu(f, path).read_header(), table=True))
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read tractor header: {e}") from e
    return out


_TABLE_KEYS = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME",
               "SIMPLE", "EXTEND")


def _header_dict(hdr, table: bool = False) -> dict:
    out = {}
    for rec in hdr.records():
        k = rec.get("name")
        if not k or k in ("COMMENT", "HISTORY", "") or k.startswith(("NAXIS", "TTYPE", "TFORM",
                                                                     "TUNIT", "TDIM", "TZERO",
                                                                     "TSCAL", "TNULL")):
            continue
        if k in _TABLE_KEYS:
            continue
        out[k] = rec.get("value")
    return out


def _table_hdu(f, path: Path):
    for hdu in f:
        if hdu.get_exttype() in ("BINARY_TBL", "ASCII_TBL"):
            return hdu
    raise InputError(f"{path}: no table HDU")


def validate_tractor(path: str | Path, brick: str | None = None) -> int:
    """Check a tractor file against :data:`TRACTOR_DTYPE`; return its row count.

    Raises :class:`InputError` (naming the file) when it is unreadable, lacks a column, has a
    wrong dtype or shape, or its ``brickname`` differs from ``brick`` (default: from the name).
    """
    import fitsio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tractor catalogue missing")
    if brick is None and path.name.startswith("tractor-") and path.name.endswith(".fits"):
        brick = path.name[len("tractor-"):-len(".fits")]
    try:
        with fitsio.FITS(str(path)) as f:
            hdu = _table_hdu(f, path)
            n = hdu.get_nrows()
            sample = hdu.read(rows=[0]) if n else None
            names = [c.lower() for c in hdu.get_colnames()]
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: corrupt tractor catalogue: {e}") from e
    missing = [c for c in TRACTOR_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: missing tractor columns {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    if sample is not None:
        s = normalize_tractor(sample)
        for c in TRACTOR_COLUMNS:
            want, got = TRACTOR_DTYPE[c], s.dtype[c]
            if got.shape != want.shape or got.base.kind != want.base.kind or (
                    got.base.kind not in "SU" and got.base.itemsize != want.base.itemsize):
                raise InputError(f"{path}: column {c} has dtype {got}, expected {want}")
        if brick is not None and s["brickname"][0].decode().strip() != brick:
            raise InputError(f"{path}: brickname {s['brickname'][0]!r} differs from {brick}")
    return int(n)


def write_tractor(path: str | Path, data: np.ndarray, header: dict | None = None,
                  primary_header: dict | None = None) -> None:
    """Write a tractor catalogue atomically (empty primary HDU + table)."""
    import fitsio

    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(None, header=_fits_header(primary_header))
            f.write(data, header=_fits_header(header))


def _fits_header(keys: dict | None):
    import fitsio

    hdr = fitsio.FITSHDR()
    for k, v in (keys or {}).items():
        hdr.add_record({"name": k, "value": v})
    return hdr


def read_table_fast(path: str | Path, primary_header: bool = False):
    """First table HDU of a FITS file as a structured array, read straight from the bytes
    when the table is plain (no scaling, no variable-length columns): big-endian numeric
    columns, ``S`` text (as stored), ``L`` logicals as bool. Otherwise falls back to fitsio.
    Column names as in the file. Raises :class:`InputError` naming the file.
    With ``primary_header``, returns ``(rows, dict of the primary header keys)``."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            phdr = _header_dict(f[0].read_header()) if primary_header else None
            hdu = _table_hdu(f, path)
            info = hdu._info
            dtype, offsets, isvar = hdu.get_rec_dtype()
            nrows = info["nrows"]
            start = info["data_start"]
            plain = not np.any(isvar) and all(
                c["tscale"] == 1.0 and c["tzero"] == 0.0 for c in info["colinfo"])
            if not plain:
                data = hdu.read()
                return (data, phdr) if primary_header else data
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read FITS table: {e}") from e
    logical = [n for n in dtype.names if dtype[n].base.kind == "b"]
    raw_dt = np.dtype({"names": list(dtype.names),
                       "formats": [np.dtype((np.uint8, dtype[n].shape)) if n in logical
                                   else dtype[n] for n in dtype.names],
                       "offsets": [int(o) for o in offsets]})
    if nrows and raw_dt.itemsize * nrows + start > path.stat().st_size:
        raise InputError(f"{path}: truncated FITS table")
    raw = np.fromfile(str(path), dtype=raw_dt, count=nrows, offset=start)
    if not logical:
        return (raw, phdr) if primary_header else raw
    out = np.empty(nrows, dtype=np.dtype({"names": list(dtype.names),
                                          "formats": [dtype[n] for n in dtype.names],
                                          "offsets": [int(o) for o in offsets]}))
    out_view = out.view(raw_dt)
    out_view[...] = raw
    for n in logical:
        out[n] = raw[n] == ord("T")
    return (out, phdr) if primary_header else out


class FitsTableWriter:
    """Stream rows into a FITS binary table: ``append`` chunks, ``close`` to finish.

    The headers (primary HDU and table, with ``extname`` and ``header`` keys) are written by
    fitsio for an empty table of ``dtype``; rows are then appended as raw big-endian bytes
    (logicals as 'T'/'F') and NAXIS2 and the padding are fixed on close. Memory is one chunk.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, extname: str | None = None,
                 header: dict | None = None, primary_header: dict | None = None):
        import fitsio

        self.path = Path(path)
        self.dtype = np.dtype([(n, dtype[n].base, dtype[n].shape) if dtype[n].shape
                               else (n, dtype[n]) for n in dtype.names])
        with fitsio.FITS(str(self.path), "rw", clobber=True) as f:
            f.write(None, header=_fits_header(primary_header))
            f.create_table_hdu(dtype=self.dtype, extname=extname, header=_fits_header(header))
            f[-1].write_keys(_fits_header(header))
        with fitsio.FITS(str(self.path)) as f:
            self._header_start = f[-1]._info["header_start"]
            self._data_start = f[-1]._info["data_start"]
        self._logical = [n for n in self.dtype.names if self.dtype[n].base.kind == "b"]
        fmts = []
        for n in self.dtype.names:
            b = self.dtype[n].base
            b = np.dtype("u1") if b.kind == "b" else (b.newbyteorder(">") if b.kind in "iuf"
                                                        else b)
            fmts.append((n, b, self.dtype[n].shape) if self.dtype[n].shape else (n, b))
        self._raw = np.dtype(fmts)
        self.nrows = 0
        self._fh = open(self.path, "r+b")  # noqa: SIM115
        self._fh.seek(self._data_start)
        self._fh.truncate()

    def append(self, rows) -> None:
        """Append rows: a structured array or a dict of column arrays (any byte order,
        names as the table's)."""
        buf = np.empty(len(rows[self.dtype.names[0]]), dtype=self._raw)
        for n in self.dtype.names:
            if n in self._logical:
                buf[n] = np.where(rows[n], ord("T"), ord("F"))
            else:
                buf[n] = rows[n]
        self._fh.write(buf.tobytes())
        self.nrows += len(buf)

    def close(self) -> None:
        if self._fh is None:
            return
        size = self.nrows * self._raw.itemsize
        pad = (-size) % 2880
        self._fh.write(b"\0" * pad)
        # patch NAXIS2 in the table header
        self._fh.seek(self._header_start)
        hdr = self._fh.read(self._data_start - self._header_start)
        for i in range(0, len(hdr), 80):
            if hdr[i:i + 8] == b"NAXIS2  ":
                card = f"NAXIS2  = {self.nrows:20d} / number of rows in table".ljust(80)
                self._fh.seek(self._header_start + i)
                self._fh.write(card.encode("ascii"))
                break
        else:  # pragma: no cover - fitsio always writes NAXIS2
            raise InputError(f"{self.path}: no NAXIS2 card")
        self._fh.close()
        self._fh = None

    def __enter__(self) -> FitsTableWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_rows_fast(path: str | Path, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (0-based) of the first table HDU, lower-case names, ``S`` text, bool
    logicals; for plain tables only those rows are read (memory map), else via fitsio."""
    import fitsio

    path = Path(path)
    rows = np.asarray(rows, dtype=np.int64)
    try:
        with fitsio.FITS(str(path)) as f:
            hdu = _table_hdu(f, path)
            info = hdu._info
            dtype, offsets, isvar = hdu.get_rec_dtype()
            plain = not np.any(isvar) and all(
                c["tscale"] == 1.0 and c["tzero"] == 0.0 for c in info["colinfo"])
            if not plain:
                return normalize_tractor(hdu.read(rows=rows))
            nrows, start = info["nrows"], info["data_start"]
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read FITS table: {e}") from e
    if len(rows) and (rows.min() < 0 or rows.max() >= nrows):
        raise InputError(f"{path}: row index out of range")
    logical = [n for n in dtype.names if dtype[n].base.kind == "b"]
    raw_dt = np.dtype({"names": list(dtype.names),
                       "formats": [np.dtype((np.uint8, dtype[n].shape)) if n in logical
                                   else dtype[n] for n in dtype.names],
                       "offsets": [int(o) for o in offsets]})
    mm = np.memmap(str(path), dtype=raw_dt, mode="r", offset=start, shape=(nrows,))
    raw = np.array(mm[rows])
    del mm
    out = np.empty(len(rows), dtype=[(n.lower(), dtype[n].base, dtype[n].shape)
                                     if dtype[n].shape else (n.lower(), dtype[n])
                                     for n in dtype.names])
    for n in dtype.names:
        out[n.lower()] = (raw[n] == ord("T")) if n in logical else raw[n]
    return out
