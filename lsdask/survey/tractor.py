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
  ``ref_cat`` '', ``type`` 'PSF', ``lc_epoch_index_*`` -1, ``release`` 9010 (DR9 DECam).
- :func:`read_tractor(path, columns=None)`: a tractor file (ours, legacypipe's, or the older
  DR8 subset files) as a structured array with lower-case names and byte-string (``S``)
  text columns; column lookup is case-insensitive. Raises :class:`InputError` naming the file.
- :func:`validate_tractor(path)`: checks a file has every DR9 column with the right dtype and
  that ``brickname`` agrees with the file name; returns the number of rows.
- :func:`normalize_tractor(data)`: lower-case names, ``S`` strings (``U`` -> ``S``, trailing
  blanks stripped, as FITS pads with blanks), native byte order.
- :func:`write_tractor(path, data, header)`: atomic write with EXTNAME none, header keys.
- :func:`read_table_fast(path)`: a plain FITS table read straight from its bytes (fitsio
  fallback); :func:`table_layout` (the table's byte layout from its header cards, no fitsio
  open), :func:`read_table_raw` (rows as stored, one read), :func:`read_rows_fast`;
  :func:`tractor_raw_dtype` / :func:`is_tractor_layout` (DR9 rows as stored in FITS);
  :class:`FitsTableWriter`: stream rows into a FITS table block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .releases import DEFAULT_RELEASE

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

_TRACTOR_RAW = np.dtype([
    (c, np.dtype("u1") if TRACTOR_DTYPE[c].base.kind == "b" else
     TRACTOR_DTYPE[c].base.newbyteorder(">") if TRACTOR_DTYPE[c].base.kind in "iuf"
     else TRACTOR_DTYPE[c].base, TRACTOR_DTYPE[c].shape) for c in TRACTOR_DTYPE.names])

#: Light-curve columns (they go to the ``-lc`` sweep files).
LC_COLUMNS: tuple[str, ...] = tuple(c for c in TRACTOR_COLUMNS if c.startswith("lc_"))


def mw_transmission(ebv: np.ndarray, band: str) -> np.ndarray:
    """``10**(-coeff_b * ebv / 2.5)`` as float32."""
    return (10.0 ** (-MW_COEFFS[band] * np.asarray(ebv, dtype=np.float64) / 2.5)).astype("f4")


def empty_tractor(n: int) -> np.ndarray:
    """``n`` tractor rows: zeros, ``type`` 'PSF', ``release`` 9010, ``lc_epoch_index`` -1,
    ``mw_transmission_*`` 1 (E(B-V) = 0)."""
    t = np.zeros(n, dtype=TRACTOR_DTYPE)
    t["release"] = DEFAULT_RELEASE
    t["type"] = b"PSF"
    for b in LC_BANDS:
        t[f"lc_epoch_index_{b}"] = -1
    for b in ALL_BANDS:
        t[f"mw_transmission_{b}"] = 1.0
    return t


def conform_tractor(data: np.ndarray) -> np.ndarray:
    """Any legacypipe tractor table (DR9, DR10/DR11 with ``ls_id``, Gaia and i-band columns,
    runs with ``--no-wise``/``--no-gaia``) as DR9 rows: the DR9 columns it has, cast; the
    ones it lacks as legacypipe leaves unmeasured quantities (0, ivar 0; see
    :func:`empty_tractor`); columns DR9 lacks left out."""
    data = normalize_tractor(data)
    out = empty_tractor(len(data))
    for name in TRACTOR_COLUMNS:
        if name not in data.dtype.names:
            continue
        src, want = data[name], TRACTOR_DTYPE[name]
        if src.shape[1:] != want.shape:
            n = min(src.shape[1] if src.ndim > 1 else 1, want.shape[0] if want.shape else 1)
            if want.shape and src.ndim > 1:
                out[name][:, :n] = src[:, :n]
            continue
        out[name] = src
    return out


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


_BLOCK = 2880
#: FITS binary table TFORM codes read straight from the bytes (L: logical, as 'T'/'F').
_TFORM_DTYPES = {"L": "u1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4",
                 "D": ">f8", "A": "S"}


def _card_value(card: str) -> str:
    """The value part of a header card: a string (quotes removed, trailing blanks
    stripped) or the raw token before any comment."""
    v = card[10:].strip()
    if v.startswith("'"):
        end = v.find("'", 1)
        while end != -1 and v[end + 1:end + 2] == "'":
            end = v.find("'", end + 2)
        return (v[1:end] if end != -1 else v[1:]).replace("''", "'").rstrip()
    return v.split("/", 1)[0].strip()


def _read_header_cards(fh) -> tuple[dict[str, str], int]:
    """Cards of the header at the file position (key -> value string) and its byte length."""
    cards: dict[str, str] = {}
    size = 0
    while True:
        block = fh.read(_BLOCK)
        if not block and not size:
            raise EOFError
        if len(block) < _BLOCK:
            raise ValueError("truncated header")
        size += _BLOCK
        text = block.decode("ascii", errors="replace")
        for i in range(0, _BLOCK, 80):
            card = text[i:i + 80]
            key = card[:8].strip()
            if key == "END":
                return cards, size
            if card[8:10] == "= " and key not in cards:
                cards[key] = _card_value(card)


def _hdu_data_size(cards: dict[str, str]) -> int:
    naxis = int(cards.get("NAXIS", "0"))
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(cards[f"NAXIS{i}"])
    n = abs(int(cards["BITPIX"])) // 8 * int(cards.get("GCOUNT", "1")) * (
        int(cards.get("PCOUNT", "0")) + n)
    return -(-n // _BLOCK) * _BLOCK


def table_layout(path: str | Path) -> tuple[np.ndarray, list[str], int, int] | None:
    """Where the first binary table of a FITS file lies, parsed from its header cards:
    ``(raw dtype, logical columns, nrows, data start)``; the raw dtype has the file's
    column names, big-endian numbers, ``S`` text, logicals as ``u1`` ('T'/'F'), byte
    offsets and the row size. ``None`` when the table is not plain (scaled or
    variable-length columns, bits, multi-dimensional text...): read it with fitsio."""
    with open(path, "rb") as fh:
        pos = 0
        while True:
            try:
                cards, hsize = _read_header_cards(fh)
            except EOFError:  # no table HDU: let fitsio tell
                return None
            kind = cards.get("XTENSION", "").strip()
            if kind == "BINTABLE":
                break
            if kind in ("TABLE", "A3DTABLE"):
                return None
            pos += hsize + _hdu_data_size(cards)
            fh.seek(pos)
    start = pos + hsize
    rowbytes, nrows = int(cards["NAXIS1"]), int(cards["NAXIS2"])
    names, formats, offsets, logical = [], [], [], []
    off = 0
    for i in range(1, int(cards["TFIELDS"]) + 1):
        if float(cards.get(f"TSCAL{i}", 1)) != 1.0 or float(cards.get(f"TZERO{i}", 0)) != 0.0:
            return None
        tform = cards[f"TFORM{i}"].strip()
        j = 0
        while j < len(tform) and tform[j].isdigit():
            j += 1
        repeat = int(tform[:j]) if j else 1
        code = tform[j:j + 1]
        if code not in _TFORM_DTYPES or repeat == 0:
            return None
        name = cards.get(f"TTYPE{i}", f"COL{i}").strip()
        tdim = cards.get(f"TDIM{i}")
        if code == "A":
            if tdim is not None and tdim.replace(" ", "") != f"({repeat})":
                return None
            fmt = np.dtype(f"S{repeat}")
            width = repeat
        else:
            base = np.dtype(_TFORM_DTYPES[code])
            if tdim is not None and (repeat == 1 or tdim.replace(" ", "") != f"({repeat})"):
                return None
            fmt = np.dtype((base, (repeat,))) if repeat > 1 else base
            width = repeat * base.itemsize
            if code == "L":
                logical.append(name)
        names.append(name)
        formats.append(fmt)
        offsets.append(off)
        off += width
    if off != rowbytes or len(set(names)) != len(names):
        return None
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                      "itemsize": rowbytes})
    return dtype, logical, nrows, start


def tractor_raw_dtype() -> np.dtype:
    """DR9 tractor rows as stored in FITS: :data:`TRACTOR_DTYPE` order, big-endian
    numbers, logicals as 'T'/'F' bytes, packed."""
    return _TRACTOR_RAW


def is_tractor_layout(dtype: np.dtype) -> bool:
    """Whether raw FITS rows (:func:`table_layout`) are byte for byte DR9 tractor rows
    (:func:`tractor_raw_dtype`): same columns (any case), order, types, offsets, size."""
    want = _TRACTOR_RAW
    if dtype.itemsize != want.itemsize or len(dtype.names) != len(want.names):
        return False
    for a, b in zip(dtype.names, want.names, strict=True):
        fa, fb = dtype.fields[a], want.fields[b]
        if a.lower() != b or fa[1] != fb[1] or fa[0] != fb[0]:
            return False
    return True


def read_table_raw(path: str | Path, primary_header: bool = False):
    """The first table HDU's rows as stored (see :func:`table_layout`: big-endian,
    logicals as ``u1`` 'T'/'F'), one read into memory, no per-column work.
    Returns ``(rows, logical column names, primary header dict or None, byte offset of
    the rows in the file)``, or ``None`` when the table is not plain. Raises
    :class:`InputError` naming the file."""
    import fitsio
    import pyarrow as pa

    path = Path(path)
    try:
        lay = table_layout(path)
        if lay is None:
            return None
        dtype, logical, nrows, start = lay
        nbytes = dtype.itemsize * nrows
        # memory from Arrow's pool: reused from file to file (no fresh pages each time)
        buf = np.frombuffer(pa.allocate_buffer(nbytes), dtype=np.uint8)
        with open(path, "rb") as fh:
            fh.seek(start)
            if fh.readinto(buf) != nbytes:
                raise InputError(f"{path}: truncated FITS table")
        phdr = _header_dict(fitsio.read_header(str(path), 0)) if primary_header else None
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read FITS table: {e}") from e
    return buf.view(dtype) if nrows else np.zeros(0, dtype), logical, phdr, start


def read_table_fast(path: str | Path, primary_header: bool = False):
    """First table HDU of a FITS file as a structured array, read straight from the bytes
    when the table is plain (no scaling, no variable-length columns): big-endian numeric
    columns, ``S`` text (as stored), ``L`` logicals as bool. Otherwise falls back to fitsio.
    Column names as in the file. Raises :class:`InputError` naming the file.
    With ``primary_header``, returns ``(rows, dict of the primary header keys)``."""
    import fitsio

    path = Path(path)
    got = read_table_raw(path, primary_header)
    if got is None:
        try:
            with fitsio.FITS(str(path)) as f:
                phdr = _header_dict(f[0].read_header()) if primary_header else None
                data = _table_hdu(f, path).read()
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: cannot read FITS table: {e}") from e
        return (data, phdr) if primary_header else data
    raw, logical, phdr, _ = got
    if logical:
        for n in logical:  # in place: 'T' -> 1, else 0, then view those bytes as bool
            raw[n] = raw[n] == ord("T")
        dt = raw.dtype
        raw = raw.view(np.dtype({"names": list(dt.names),
                                 "formats": [np.dtype((np.bool_, dt[n].shape)) if n in logical
                                             else dt[n] for n in dt.names],
                                 "offsets": [dt.fields[n][1] for n in dt.names],
                                 "itemsize": dt.itemsize}))
    return (raw, phdr) if primary_header else raw


class FitsTableWriter:
    """Stream rows into a FITS binary table: ``append`` chunks, ``close`` to finish.

    The headers (primary HDU and table, with ``extname`` and ``header`` keys) are written by
    fitsio for an empty table of ``dtype``; rows are then appended as raw big-endian bytes
    (logicals as 'T'/'F') and NAXIS2 and the padding are fixed on close. Memory is one chunk.
    Fast path: :meth:`new_buffer` (a reused block in the file's byte layout), fill it with
    :meth:`set_column`, :meth:`write_buffer` (optionally only some of its rows).
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
        self._logical = {n for n in self.dtype.names if self.dtype[n].base.kind == "b"}
        fmts = []
        for n in self.dtype.names:
            b = self.dtype[n].base
            b = np.dtype("u1") if b.kind == "b" else (b.newbyteorder(">") if b.kind in "iuf"
                                                        else b)
            fmts.append((n, b, self.dtype[n].shape) if self.dtype[n].shape else (n, b))
        self._raw = np.dtype(fmts)
        self._void = np.dtype((np.void, self._raw.itemsize))
        self._block = np.empty(0, dtype=self._raw)
        self._gathered = np.empty(0, dtype=self._void)
        self.nrows = 0
        self._fh = open(self.path, "r+b")  # noqa: SIM115
        self._fh.seek(self._data_start)
        self._fh.truncate()

    @property
    def raw_dtype(self) -> np.dtype:
        """The rows' byte layout in the file (big-endian, logicals as 'T'/'F' bytes)."""
        return self._raw

    def reserve(self, n: int) -> None:
        """Size the table for ``n`` rows at once (the file is extended, rows read as zeros)
        so that they can be written in place, e.g. in parallel by byte range; then
        :meth:`close`."""
        self.nrows = n
        self._fh.truncate(self._data_start + n * self._raw.itemsize)
        self._fh.seek(0, 2)

    @property
    def data_start(self) -> int:
        """Byte offset of the first row in the file."""
        return self._data_start

    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
        return self._raw.itemsize

    def new_buffer(self, n: int) -> np.ndarray:
        """An uninitialised block of ``n`` rows in the file's byte layout (fill it with
        :meth:`set_column`, then :meth:`write_buffer`). The memory is reused by the next
        call."""
        if len(self._block) < n:
            self._block = np.empty(max(n, 2 * len(self._block)), dtype=self._raw)
        return self._block[:n]

    def set_column(self, buf: np.ndarray, name: str, values: np.ndarray) -> None:
        """Store one column (any byte order; bool for logicals) into a block."""
        if name in self._logical:
            buf[name] = np.where(values, np.uint8(ord("T")), np.uint8(ord("F")))
        else:
            buf[name] = values

    def write_buffer(self, buf: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Append a filled block (no copy), or only its rows ``rows`` (one gather of whole
        rows as opaque bytes)."""
        if rows is not None:
            if len(self._gathered) < len(rows):
                self._gathered = np.empty(max(len(rows), 2 * len(self._gathered)),
                                          dtype=self._void)
            out = self._gathered[:len(rows)]
            np.take(buf.view(self._void), rows, out=out)
            buf = out
        if len(buf):
            self._fh.write(memoryview(buf.view(np.uint8)))
        self.nrows += len(buf)

    def append_copied(self, copy: Callable[[BinaryIO], object], nrows: int) -> None:
        """Append ``nrows`` rows already in the file's byte layout that ``copy(fh)`` writes
        at the end of the open file (e.g. copied from another file by the kernel)."""
        copy(self._fh)
        self.nrows += nrows

    def append(self, rows) -> None:
        """Append rows: a structured array or a dict of column arrays (any byte order,
        names as the table's)."""
        buf = self.new_buffer(len(rows[self.dtype.names[0]]))
        for n in self.dtype.names:
            self.set_column(buf, n, rows[n])
        self.write_buffer(buf)

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
        lay = table_layout(path)
        if lay is None:
            with fitsio.FITS(str(path)) as f:
                return normalize_tractor(_table_hdu(f, path).read(rows=rows))
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read FITS table: {e}") from e
    raw_dt, logical, nrows, start = lay
    if len(rows) and (rows.min() < 0 or rows.max() >= nrows):
        raise InputError(f"{path}: row index out of range")
    if not nrows:
        raw = np.zeros(0, raw_dt)
    else:
        mm = np.memmap(str(path), dtype=np.dtype((np.void, raw_dt.itemsize)), mode="r",
                       offset=start, shape=(nrows,))
        raw = np.array(mm[rows]).view(raw_dt)
        del mm
    descr = []
    for n in raw_dt.names:
        base = np.dtype(np.bool_) if n in logical else raw_dt[n].base
        if base.kind in "iuf":
            base = base.newbyteorder("=")
        descr.append((n.lower(), base, raw_dt[n].shape) if raw_dt[n].shape
                     else (n.lower(), base))
    out = np.empty(len(rows), dtype=descr)
    for n in raw_dt.names:
        if n in logical:
            out[n.lower()] = raw[n] == ord("T")
        else:
            out[n.lower()] = raw[n]
    return out
