"""Sweep files: the sky in 10 x 5 degree boxes, one row per primary source.

- :func:`box_name` / :func:`parse_box`: ``sweep-150p000-160p005`` names (the box part
  ``150p000-160p005``) and back to ``(ramin, ramax, decmin, decmax)``.
- :func:`box_of(ra, dec)`: the box name of each point (``ramin <= ra < ramax``,
  ``decmin <= dec < decmax``; dec = 90 goes to the top box).
- :func:`boxes_for_brick(ra1, ra2, dec1, dec2)`: boxes a brick feeds (bounds padded 0.1 deg).
- :data:`SWEEP_COLUMNS`, :data:`LC_SWEEP_COLUMNS`, :data:`EX_SWEEP_COLUMNS`: the split of
  tractor columns over the main, ``-lc`` and ``-ex`` files (upper-case in the files), with
  :func:`sweep_dtype(kind)` giving the exact dtypes.
- :func:`to_sweep(tractor_rows, kind)`: tractor rows -> sweep rows of that kind.
- :func:`read_sweep(path)`: a sweep file (ours or real) via :func:`read_tractor`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .tractor import LC_COLUMNS, TRACTOR_COLUMNS, TRACTOR_DTYPE, read_tractor

RA_STEP = 10.0
DEC_STEP = 5.0
N_RA = 36
N_DEC = 36
PAD = 0.1  # deg, brick bounds padding when deciding which boxes a brick feeds
EXTNAME = "SWEEP"

_BOX_RE = re.compile(r"^(?:sweep-)?(\d{3})([pm])(\d{3})-(\d{3})([pm])(\d{3})(?:-(?:lc|ex))?"
                     r"(?:\.fits|\.parquet)?$")

#: Identity columns repeated in the -lc and -ex files.
KEY_COLUMNS = ("release", "brickid", "objid")

_NOT_MAIN = {"brick_primary", "bx", "by", "gaia_phot_g_n_obs", "gaia_phot_bp_n_obs",
             "gaia_phot_rp_n_obs", "gaia_phot_variable_flag", "gaia_astrometric_excess_noise_sig",
             "gaia_astrometric_n_obs_al", "gaia_astrometric_n_good_obs_al",
             "gaia_astrometric_weight_al", "gaia_a_g_val", "gaia_e_bp_min_rp_val"}

#: Main sweep columns (tractor order), lower-case here, upper-case in files.
SWEEP_COLUMNS: tuple[str, ...] = tuple(
    c for c in TRACTOR_COLUMNS
    if c not in _NOT_MAIN and not c.startswith(("lc_", "apflux")))
#: ``-lc`` file columns.
LC_SWEEP_COLUMNS: tuple[str, ...] = KEY_COLUMNS + LC_COLUMNS
#: ``-ex`` file columns: keys + every tractor column in neither the main nor the lc file.
EX_SWEEP_COLUMNS: tuple[str, ...] = KEY_COLUMNS + tuple(
    c for c in TRACTOR_COLUMNS if c not in SWEEP_COLUMNS and c not in LC_COLUMNS)

_KIND_COLUMNS = {"": SWEEP_COLUMNS, "lc": LC_SWEEP_COLUMNS, "ex": EX_SWEEP_COLUMNS}
SWEEP_KINDS = ("", "lc", "ex")


def sweep_columns(kind: str = "") -> tuple[str, ...]:
    """Lower-case tractor columns of a sweep file kind ('' main, 'lc', 'ex')."""
    return _KIND_COLUMNS[kind]


def sweep_dtype(kind: str = "") -> np.dtype:
    """The exact dtype of a sweep file kind, upper-case names."""
    out = []
    for c in _KIND_COLUMNS[kind]:
        dt = TRACTOR_DTYPE[c]
        out.append((c.upper(), dt.base, dt.shape) if dt.shape else (c.upper(), dt))
    return np.dtype(out)


def to_sweep(rows: np.ndarray, kind: str = "") -> np.ndarray:
    """Tractor rows (lower-case names) -> sweep rows of ``kind`` (upper-case names)."""
    dt = sweep_dtype(kind)
    out = np.empty(len(rows), dtype=dt)
    for c in _KIND_COLUMNS[kind]:
        out[c.upper()] = rows[c]
    return out


def _fmt_dec(d: float) -> str:
    return f"{'p' if d >= 0 else 'm'}{abs(int(round(d))):03d}"


def box_name(ramin: float, ramax: float, decmin: float, decmax: float) -> str:
    """``150p000-160p005`` style name of a box (without ``sweep-`` or suffix)."""
    return (f"{int(round(ramin)):03d}{_fmt_dec(decmin)}-"
            f"{int(round(ramax)):03d}{_fmt_dec(decmax)}")


def parse_box(name: str) -> tuple[float, float, float, float]:
    """Box name or sweep file name -> ``(ramin, ramax, decmin, decmax)``."""
    m = _BOX_RE.match(Path(name).name)
    if not m:
        raise ValueError(f"not a sweep box name: {name!r}")
    r1, s1, d1, r2, s2, d2 = m.groups()
    dec1 = float(d1) * (-1 if s1 == "m" else 1)
    dec2 = float(d2) * (-1 if s2 == "m" else 1)
    return float(r1), float(r2), dec1, dec2


def _box_indices(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    i = np.clip(np.floor(ra / RA_STEP).astype(int), 0, N_RA - 1)
    j = np.clip(np.floor((dec + 90.0) / DEC_STEP).astype(int), 0, N_DEC - 1)
    return i, j


def _name_ij(i: int, j: int) -> str:
    return box_name(i * RA_STEP, (i + 1) * RA_STEP, -90 + j * DEC_STEP, -90 + (j + 1) * DEC_STEP)


_ALL_NAMES = np.array([[_name_ij(i, j) for j in range(N_DEC)] for i in range(N_RA)])


def all_boxes() -> list[str]:
    """The 1296 box names."""
    return [str(n) for n in _ALL_NAMES.ravel()]


def box_of(ra, dec) -> np.ndarray:
    """Box name of each point (array of str)."""
    i, j = _box_indices(np.atleast_1d(ra), np.atleast_1d(dec))
    return _ALL_NAMES[i, j]


def box_index(ra, dec) -> np.ndarray:
    """Integer box index ``i * 36 + j`` of each point (for fast grouping)."""
    i, j = _box_indices(np.atleast_1d(ra), np.atleast_1d(dec))
    return i * N_DEC + j


def box_from_index(k: int) -> str:
    return str(_ALL_NAMES[k // N_DEC, k % N_DEC])


def boxes_for_brick(ra1: float, ra2: float, dec1: float, dec2: float,
                    pad: float = PAD) -> list[str]:
    """Boxes whose area intersects the brick bounds padded by ``pad`` degrees
    (RA wraps at 0/360)."""
    out = []
    for j in range(N_DEC):
        d1, d2 = -90 + j * DEC_STEP, -90 + (j + 1) * DEC_STEP
        if min(d2, dec2 + pad) - max(d1, dec1 - pad) <= 0:
            continue
        for i in range(N_RA):
            r1, r2 = i * RA_STEP, (i + 1) * RA_STEP
            for shift in (-360.0, 0.0, 360.0):
                if min(r2, ra2 + pad + shift) - max(r1, ra1 - pad + shift) > 0:
                    out.append(_name_ij(i, j))
                    break
    return out


def in_box(ra, dec, box: str) -> np.ndarray:
    """Sweep rule: ``ramin <= ra < ramax`` and ``decmin <= dec < decmax`` (dec 90 included
    in the top row)."""
    ramin, ramax, decmin, decmax = parse_box(box)
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    top = dec < decmax if decmax < 90 else dec <= decmax
    return (ra >= ramin) & (ra < ramax) & (dec >= decmin) & top


def read_sweep(path: str | Path, columns=None) -> np.ndarray:
    """A sweep file (ours or real) -> structured array, lower-case names, ``S`` strings."""
    return read_tractor(path, columns=columns)
