"""Stage ``match``: match an external catalogue to the primary tractor sources.

For each external object (RA/DEC, or PLUG_RA/PLUG_DEC), the nearest ``brick_primary``
tractor source within ``radius`` arcsec. Distances are chords between unit vectors, so the
result is identical to one ``scipy.spatial.cKDTree`` over all primary sources
(:func:`brute_force_match`).

Partitioning: one task per sweep-box partition of the tractor Parquet dataset. A task reads
only ``ra, dec, brick_primary`` of its files, builds a KD-tree of its primary sources and
queries the external objects that lie within ``radius`` of the box (the margin; RA wraps
at 0/360, polar caps take every RA); the driver keeps the nearest candidate over all
partitions. Every source lies in exactly one partition and every external object is sent
to every partition that could hold a source within the radius, hence exactness.
Then the matched rows are gathered (all columns), one task per partition.

Output (``layout.external(name)``): one row per external object in input order, all tractor
columns upper-case (zeros and ``OBJID = -1`` where no match), the copied external columns,
and ``MATCH_DIST`` (arcsec, -1 where none); EXTNAME ``MATCHED``; header NMATCHED, RADIUS.

Public: :func:`run_match(layout, external, client=None, radius=1.5, copy=(), name=None)`
-> summary dict; :func:`match_positions` (positions -> (partition, row, dist) arrays);
:func:`brute_force_match`; :func:`read_external`; :func:`match_dataframe` (Dask DataFrame).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..errors import InputError
from ..survey.arrowfits import arrow_to_numpy
from ..survey.sweeps import parse_box
from ..survey.tractor import TRACTOR_DTYPE, FitsTableWriter
from .parquet import partition_files

EXTNAME = "MATCHED"
DIST_COLUMN = "MATCH_DIST"
CHUNK = 50_000  # output rows assembled at once


def unit_vectors(ra, dec) -> np.ndarray:
    ra = np.deg2rad(np.asarray(ra, dtype=np.float64))
    dec = np.deg2rad(np.asarray(dec, dtype=np.float64))
    c = np.cos(dec)
    return np.stack([c * np.cos(ra), c * np.sin(ra), np.sin(dec)], axis=1)


def chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)


def chord_to_arcsec(d: np.ndarray) -> np.ndarray:
    return np.rad2deg(2.0 * np.arcsin(np.clip(d / 2.0, 0, 1))) * 3600.0


def read_external(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """External catalogue -> (ra, dec, rows, header). RA/DEC or PLUG_RA/PLUG_DEC."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            hdu = next((h for h in f if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL")), None)
            if hdu is None:
                raise InputError(f"{path}: no table HDU")
            data = hdu.read()
            hdr = {r["name"]: r["value"] for r in hdu.read_header().records() if r.get("name")}
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read external catalogue: {e}") from e
    upper = {n.upper(): n for n in data.dtype.names}
    for rk, dk in (("RA", "DEC"), ("PLUG_RA", "PLUG_DEC")):
        if rk in upper and dk in upper:
            return (np.asarray(data[upper[rk]], dtype=float),
                    np.asarray(data[upper[dk]], dtype=float), data, hdr)
    raise InputError(f"{path}: no RA/DEC or PLUG_RA/PLUG_DEC columns")


def _in_margin(ra: np.ndarray, dec: np.ndarray, box: str, radius_deg: float) -> np.ndarray:
    ramin, ramax, decmin, decmax = parse_box(box)
    d1, d2 = decmin - radius_deg, decmax + radius_deg
    sel = (dec >= d1) & (dec <= d2)
    if d1 <= -89.9 or d2 >= 89.9:
        return sel
    cosd = np.cos(np.deg2rad(max(abs(d1), abs(d2))))
    pad = radius_deg / cosd * 1.01 + 1e-9
    lo, hi = ramin - pad, ramax + pad
    r = np.mod(ra, 360.0)
    inra = ((r >= lo) & (r <= hi)) | ((r - 360.0 >= lo) & (r - 360.0 <= hi)) | \
        ((r + 360.0 >= lo) & (r + 360.0 <= hi))
    return sel & inra


def _primary_positions(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ra, dec, file index, row index within file) of the primary rows of ``files``."""
    ras, decs, fidx, ridx = [], [], [], []
    for i, f in enumerate(files):
        t = pq.read_table(f, columns=["ra", "dec", "brick_primary"])
        prim = t.column("brick_primary").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(prim)
        ras.append(t.column("ra").to_numpy()[rows])
        decs.append(t.column("dec").to_numpy()[rows])
        fidx.append(np.full(len(rows), i, dtype=np.int32))
        ridx.append(rows.astype(np.int64))
    if not ras:
        z = np.zeros(0)
        return z, z, np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(ras), np.concatenate(decs), np.concatenate(fidx), np.concatenate(ridx)


def match_partition(box: str, files: list[Path], ext_ra: np.ndarray, ext_dec: np.ndarray,
                    radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest primary source of this partition for the external objects near the box.

    Returns (external index, chord distance, file index, row index) of the found pairs.
    """
    from scipy.spatial import cKDTree

    sel = np.flatnonzero(_in_margin(ext_ra, ext_dec, box, radius / 3600.0))
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int64))
    if len(sel) == 0:
        return empty
    ra, dec, fidx, ridx = _primary_positions(files)
    if len(ra) == 0:
        return empty
    tree = cKDTree(unit_vectors(ra, dec))
    d, j = tree.query(unit_vectors(ext_ra[sel], ext_dec[sel]), k=1,
                      distance_upper_bound=chord(radius))
    ok = np.isfinite(d)
    return sel[ok], d[ok], fidx[j[ok]], ridx[j[ok]]


def _gather(layout, files: list[Path], fidx: np.ndarray, ridx: np.ndarray) -> np.ndarray:
    """Tractor rows (all columns, exact dtypes) at (file index, row) pairs, in that order.

    The Parquet partition gives each match's brick and objid; the full rows are read from
    the brick's tractor FITS file, only those rows (tractor rows are in objid order), and
    checked against the Parquet positions."""
    from ..survey.tractor import read_rows_fast

    out = np.zeros(len(fidx), dtype=TRACTOR_DTYPE)
    for i in np.unique(fidx):
        pos = np.flatnonzero(fidx == i)
        t = pq.read_table(files[i], columns=["objid", "ra", "dec"]).take(pa.array(ridx[pos]))
        objid = t.column("objid").to_numpy()
        brick = files[i].stem
        rows = read_rows_fast(layout.tractor(brick), objid)
        if not (np.array_equal(rows["objid"], objid)
                and np.array_equal(rows["ra"], t.column("ra").to_numpy())):
            # not in objid order, or changed since conversion: take the Parquet rows
            rows = arrow_to_numpy(pq.read_table(files[i]).take(pa.array(ridx[pos])))
        for c in TRACTOR_DTYPE.names:
            out[c][pos] = rows[c]
    return out


def match_positions(layout, ext_ra: np.ndarray, ext_dec: np.ndarray, radius: float = 1.5,
                    client=None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Match positions: returns (partition boxes, box index, row within that box's
    concatenated primary+all rows key, chord distance). Unmatched: box index -1.

    The row key is ``(file index << 32) | row`` within the box's file list.
    """
    import dask

    parts = partition_files(layout)
    if not parts:
        raise InputError(f"{layout.tractor_parquet}: no tractor Parquet files (run parquet)")
    boxes = list(parts)
    tasks = [dask.delayed(match_partition, pure=False)(b, parts[b], ext_ra, ext_dec, radius)
             for b in boxes]
    results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    n = len(ext_ra)
    best = np.full(n, np.inf)
    bbox = np.full(n, -1, dtype=np.int64)
    bkey = np.full(n, -1, dtype=np.int64)
    for k, (idx, d, fidx, ridx) in enumerate(results):
        better = d < best[idx]
        idx, d = idx[better], d[better]
        best[idx] = d
        bbox[idx] = k
        bkey[idx] = (fidx[better].astype(np.int64) << 32) | ridx[better]
    return boxes, bbox, bkey, best


def run_match(layout, external: str | Path, client=None, radius: float = 1.5,
              copy: list[str] | tuple[str, ...] = (), name: str | None = None,
              output: str | Path | None = None) -> dict:
    """Match ``external`` and write ``layout.external(name)`` (default name: the external
    file's stem). Returns ``{"output", "n", "nmatched", "radius", "seconds"}``."""
    import dask

    t0 = time.time()
    external = Path(external)
    ext_ra, ext_dec, ext, _ = read_external(external)
    upper = {c.upper(): c for c in ext.dtype.names}
    missing = [c for c in copy if c.upper() not in upper]
    if missing:
        raise InputError(f"{external}: no column(s) {missing} to copy")
    boxes, bbox, bkey, best = match_positions(layout, ext_ra, ext_dec, radius, client)
    parts = partition_files(layout)
    matched = bbox >= 0
    tasks, where = [], []
    for k in np.unique(bbox[matched]):
        pos = np.flatnonzero(bbox == k)
        fidx = (bkey[pos] >> 32).astype(np.int32)
        ridx = bkey[pos] & 0xFFFFFFFF
        tasks.append(dask.delayed(_gather, pure=False)(layout, parts[boxes[k]], fidx, ridx))
        where.append(pos)
    rows = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    out_dt = [(c.upper(), TRACTOR_DTYPE[c].base, TRACTOR_DTYPE[c].shape)
              if TRACTOR_DTYPE[c].shape else (c.upper(), TRACTOR_DTYPE[c])
              for c in TRACTOR_DTYPE.names]
    copy_names = [upper[c.upper()] for c in copy]
    for c in copy_names:
        dt = ext.dtype[c]
        if dt.kind == "U":
            dt = np.dtype(f"S{dt.itemsize // 4}")
        if c.upper() in {d[0] for d in out_dt}:
            raise InputError(f"{external}: copied column {c} clashes with a tractor column")
        out_dt.append((c.upper(), dt.base, dt.shape) if dt.shape else (c.upper(), dt))
    out_dt.append((DIST_COLUMN, "f8"))
    n = len(ext_ra)
    ext_keep = {c: (np.char.encode(ext[c], "ascii") if ext[c].dtype.kind == "U" else ext[c])
                for c in copy_names}
    # which gathered block and position holds each matched external object
    src_block = np.full(n, -1, dtype=np.int64)
    src_pos = np.zeros(n, dtype=np.int64)
    for b, pos in enumerate(where):
        src_block[pos] = b
        src_pos[pos] = np.arange(len(pos))
    dist = np.where(matched, chord_to_arcsec(np.where(matched, best, 0)), -1.0)
    nmatched = int(matched.sum())
    path = Path(output) if output else layout.external(name or external.name.split(".")[0])
    hdr = {"NMATCHED": nmatched, "RADIUS": float(radius), "EXTCAT": external.name[:60]}
    with atomic_path(path) as tmp, FitsTableWriter(tmp, np.dtype(out_dt), EXTNAME,
                                                   hdr) as w:
        for a in range(0, n, CHUNK):
            sl = slice(a, min(a + CHUNK, n))
            out = np.zeros(sl.stop - a, dtype=out_dt)
            out["OBJID"] = -1
            for b in np.unique(src_block[sl]):
                if b < 0:
                    continue
                sel = np.flatnonzero(src_block[sl] == b)
                r = rows[b][src_pos[sl][sel]]
                for c in TRACTOR_DTYPE.names:
                    out[c.upper()][sel] = r[c]
            for c in copy_names:
                out[c.upper()] = ext_keep[c][sl]
            out[DIST_COLUMN] = dist[sl]
            w.append(out)
        w.close()
    return {"output": str(path), "n": int(len(ext_ra)), "nmatched": nmatched,
            "radius": float(radius), "seconds": round(time.time() - t0, 3)}


def brute_force_match(layout, ext_ra: np.ndarray, ext_dec: np.ndarray,
                      radius: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: one cKDTree over every primary source of the dataset.

    Returns (brickid, objid, chord distance) per external object (-1, -1, inf if none).
    """
    from scipy.spatial import cKDTree

    files = [p for fs in partition_files(layout).values() for p in fs]
    ra, dec, bid, oid = [], [], [], []
    for f in files:
        t = pq.read_table(f, columns=["ra", "dec", "brick_primary", "brickid", "objid"])
        m = t.column("brick_primary").to_numpy(zero_copy_only=False)
        ra.append(t.column("ra").to_numpy()[m])
        dec.append(t.column("dec").to_numpy()[m])
        bid.append(t.column("brickid").to_numpy()[m])
        oid.append(t.column("objid").to_numpy()[m])
    ra, dec, bid, oid = (np.concatenate(x) for x in (ra, dec, bid, oid))
    d, j = cKDTree(unit_vectors(ra, dec)).query(unit_vectors(ext_ra, ext_dec), k=1,
                                                distance_upper_bound=chord(radius))
    ok = np.isfinite(d)
    jj = np.where(ok, j, 0)
    return np.where(ok, bid[jj], -1), np.where(ok, oid[jj], -1), d


def match_dataframe(path: str | Path, columns: list[str] | None = None):
    """A matched catalogue (FITS) as a one-partition Dask DataFrame of its scalar columns."""
    import dask.dataframe as dd
    import fitsio
    import pandas as pd

    data = fitsio.read(str(path), ext=EXTNAME)
    cols = [c for c in data.dtype.names if data.dtype[c].shape == ()]
    cols = [c for c in cols if columns is None or c in columns]
    frame = {c: (data[c].astype(data.dtype[c].newbyteorder("="))
                 if data.dtype[c].kind != "U" else data[c]) for c in cols}
    return dd.from_pandas(pd.DataFrame(frame), npartitions=1)
