"""Star kd-tree files in astrometry.net's format (what its ``startree`` writes), e.g. the
``tycho2.kd.fits`` legacypipe reads with ``astrometry.libkd.spherematch.tree_open``.

The file is the one ``startree -P -k -T -b -t double -d double -n stars`` makes from a
catalogue small enough for one leaf: HDU 1 the catalogue itself (the tag-along table, rows
in input order), then the tree ``stars`` as binary tables of raw native-endian bytes: a
header table (``KDT_*`` keys), ``kdtree_lr`` (index of the leaf's last point),
``kdtree_bb`` (its bounding box), ``kdtree_range`` and ``kdtree_data`` (unit vectors). One
leaf is exact for any size; it is meant for the small catalogues of a simulated survey (a
real Tycho-2 file comes from NERSC, built by ``startree`` itself).

API::

    write_star_kdtree(path, table, name="stars")   # table: structured array with ra, dec
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .wcs import unit_vectors

__all__ = ["write_star_kdtree"]

_BLOCK = 2880


def _card(key: str, value: object = None, comment: str = "") -> bytes:
    if value is None:
        text = key.ljust(80)
    else:
        if isinstance(value, bool):
            v = "T" if value else "F"
            v = v.rjust(20)
        elif isinstance(value, int):
            v = str(value).rjust(20)
        else:
            v = f"'{str(value).ljust(8)}'"
        text = f"{key.ljust(8)}= {v}" + (f" / {comment}" if comment else "")
    return text[:80].ljust(80).encode("ascii")


def _raw_table_hdu(column: str, rows: list[bytes], width: int,
                   extra: list[tuple[str, object, str]] = ()) -> bytes:
    """One binary-table HDU whose single ``<width>A`` column holds raw bytes."""
    cards = [_card("XTENSION", "BINTABLE", "binary table"), _card("BITPIX", 8),
             _card("NAXIS", 2), _card("NAXIS1", width, "bytes per row"),
             _card("NAXIS2", len(rows), "rows"), _card("PCOUNT", 0), _card("GCOUNT", 1),
             _card("TFIELDS", 1), _card("TFORM1", f"{width}A"), _card("TTYPE1", column)]
    cards += [_card(k, v, c) for k, v, c in extra]
    cards.append(_card("END"))
    head = b"".join(cards)
    head += b" " * (-len(head) % _BLOCK)
    data = b"".join(rows)
    data += b"\0" * (-len(data) % _BLOCK)
    return head + data


def write_star_kdtree(path: str | os.PathLike, table: np.ndarray, name: str = "stars") -> Path:
    """Write ``table`` (at least one row; ``ra``, ``dec`` in degrees) as a star kd-tree file,
    atomically."""
    import fitsio

    names = {n.lower(): n for n in table.dtype.names}
    if len(table) == 0 or "ra" not in names or "dec" not in names:
        raise ValueError("a star kd-tree needs at least one row with ra and dec columns")
    xyz = unit_vectors(table[names["ra"]], table[names["dec"]])
    native = "<" if sys.byteorder == "little" else ">"
    f8, u4 = np.dtype(native + "f8"), np.dtype(native + "u4")
    header = [("AN_FILE", "SKDT", "a star kdtree"),
              ("ENDIAN", "04:03:02:01" if native == "<" else "01:02:03:04",
               "u32 0x01020304 as stored"),
              ("KDT_NAME", name, "name of this tree"), ("KDT_NDAT", len(table), "data points"),
              ("KDT_NDIM", 3, "dimensions"), ("KDT_NNOD", 1, "nodes"),
              ("KDT_VER", 1, "version"), ("KDT_EXT", "double", "external type"),
              ("KDT_INT", "double", "type of the tree's structures"),
              ("KDT_DATA", "double", "type of the data"), ("KDT_LINL", False, "linear lr")]
    bbox = np.concatenate([xyz.min(axis=0), xyz.max(axis=0)]).astype(f8)
    rng = np.array([-1, -1, -1, 1, 1, 1, 0], dtype=f8)
    tail = (_raw_table_hdu(f"kdtree_header_{name}", [], 0, header)
            + _raw_table_hdu(f"kdtree_lr_{name}", [np.array([len(table) - 1], u4).tobytes()], 4)
            + _raw_table_hdu(f"kdtree_bb_{name}", [bbox.tobytes()], 48)
            + _raw_table_hdu(f"kdtree_range_{name}", [v.tobytes() for v in rng], 8)
            + _raw_table_hdu(f"kdtree_data_{name}", [p.astype(f8).tobytes() for p in xyz], 24))
    with atomic_path(path) as tmp:
        fitsio.write(str(tmp), table, header={"AN_FILE": "TAGALONG"}, clobber=True)
        with open(tmp, "ab") as f:
            f.write(tail)
    return Path(path)
