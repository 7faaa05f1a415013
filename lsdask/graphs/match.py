"""Stage ``match``: match an external catalogue to the primary tractor sources.

For each external object (RA/DEC, or PLUG_RA/PLUG_DEC), the nearest ``brick_primary``
tractor source within ``radius`` arcsec. Distances are chords between unit vectors, so the
result is identical to one ``scipy.spatial.cKDTree`` over all primary sources
(:func:`brute_force_match`).

Partitioning: one task per sweep-box partition of the tractor Parquet dataset. A task reads
only ``ra, dec, brick_primary, objid`` of its files, builds a KD-tree of its primary sources
and queries the external objects that lie within ``radius`` of the box (the margin,
selected by the driver; RA wraps at 0/360, polar caps take every RA); it then gathers the
tractor rows of its candidates as raw bytes, straight from the tractor FITS files (checked
against the Parquet objid and ra; column-by-column fallbacks otherwise). The driver keeps
the nearest candidate over all partitions. Every source lies in exactly one partition and
every external object is sent to every partition that could hold a source within the
radius, hence exactness.

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
from ..survey.tractor import (
    TRACTOR_DTYPE,
    FitsTableWriter,
    is_tractor_layout,
    tractor_raw_dtype,
)
from ..survey.wcs import chord, unit_vectors
from .parquet import load_manifest, partition_files

EXTNAME = "MATCHED"
DIST_COLUMN = "MATCH_DIST"
CHUNK = 50_000  # output rows assembled at once


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


def _primary_positions(files: list[Path]) -> tuple[np.ndarray, ...]:
    """(ra, dec, file index, row index within file, objid) of the primary rows of
    ``files`` (only those four columns are read)."""
    ras, decs, fidx, ridx, oids = [], [], [], [], []
    for i, f in enumerate(files):
        t = pq.ParquetFile(f, memory_map=True).read(
            columns=["ra", "dec", "brick_primary", "objid"], use_threads=False)
        prim = t.column("brick_primary").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(prim)
        ras.append(t.column("ra").to_numpy()[rows])
        decs.append(t.column("dec").to_numpy()[rows])
        oids.append(t.column("objid").to_numpy()[rows])
        fidx.append(np.full(len(rows), i, dtype=np.int32))
        ridx.append(rows.astype(np.int64))
    if not ras:
        z = np.zeros(0)
        return z, z, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return (np.concatenate(ras), np.concatenate(decs), np.concatenate(fidx),
            np.concatenate(ridx), np.concatenate(oids))


def _match_box(box: str, files: list[Path], ext_ra: np.ndarray, ext_dec: np.ndarray,
               radius: float, sel: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Nearest primary source of this partition for the external objects near the box:
    (external index, chord distance, file index, row index, objid, ra) of the pairs.
    ``sel``: the indices of ``ext_ra``/``ext_dec`` within the margin, if already known
    (then the two arrays hold only those objects)."""
    from scipy.spatial import cKDTree

    sel_given = sel
    if sel is None:
        sel = np.flatnonzero(_in_margin(ext_ra, ext_dec, box, radius / 3600.0))
    else:
        sel = np.arange(len(sel))
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int64),
             np.zeros(0, np.int32), np.zeros(0))
    if len(sel) == 0:
        return empty
    ra, dec, fidx, ridx, oid = _primary_positions(files)
    if len(ra) == 0:
        return empty
    tree = cKDTree(unit_vectors(ra, dec), balanced_tree=False)  # exact; faster to build
    d, j = tree.query(unit_vectors(ext_ra[sel], ext_dec[sel]), k=1,
                      distance_upper_bound=chord(radius))
    ok = np.isfinite(d)
    j = j[ok]
    found = sel[ok] if sel_given is None else sel_given[ok]
    return found, d[ok], fidx[j], ridx[j], oid[j], ra[j]


def match_partition(box: str, files: list[Path], ext_ra: np.ndarray, ext_dec: np.ndarray,
                    radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest primary source of this partition for the external objects near the box.

    Returns (external index, chord distance, file index, row index) of the found pairs.
    """
    return _match_box(box, files, ext_ra, ext_dec, radius)[:4]


def _tractor_raw_dtype() -> np.dtype:
    return tractor_raw_dtype()


def _matched_rows(layout, parquet_file: Path, ridx: np.ndarray, objid: np.ndarray,
                  ra: np.ndarray, fits: dict | None = None,
                  scratch: list | None = None) -> np.ndarray:
    """The tractor rows of one brick's matches in the output's byte layout (tractor
    columns, big-endian, logicals 'T'/'F'), as an ``(n, row bytes)`` uint8 block.

    Fast path: the rows are copied as raw bytes straight from the tractor FITS file (rows
    are in objid order) when its layout is exactly the DR9 one (``fits``: where the rows
    lie, recorded by the Parquet conversion; else the header is parsed), and checked
    against the Parquet objid and ra (``scratch``: a one-item list holding a reusable
    read buffer). Otherwise the rows are converted column by column,
    from the FITS file if it still agrees, else from the Parquet dataset."""
    from ..survey.tractor import conform_tractor, read_rows_fast, table_layout

    want = _tractor_raw_dtype()
    path = layout.tractor(parquet_file.stem)
    lay = None
    try:
        if fits and path.stat().st_size == fits["size"]:
            lay = (want, [], fits["nrows"], fits["start"])
        else:
            lay = table_layout(path)
            if lay is not None and not is_tractor_layout(lay[0]):
                lay = None
    except (OSError, ValueError, KeyError):
        lay = None
    if lay is not None and len(objid) and objid.min() >= 0 and objid.max() < lay[2]:
        start, size = lay[3], want.itemsize
        # the span of rows in one read (into Arrow-pool memory, reused from brick to
        # brick), then the rows: cheaper than one read or page fault per row
        lo, hi = int(objid.min()), int(objid.max()) + 1
        complete = path.stat().st_size >= start + hi * size
        if complete and len(objid) * 16 < hi - lo:  # few rows: touch only their pages
            mm = np.memmap(path, dtype=np.uint8, mode="r", offset=start + lo * size,
                           shape=((hi - lo) * size,))
            block = mm.reshape(hi - lo, size)[objid - lo]
            del mm
        elif complete:
            scratch = scratch if scratch is not None else [None]
            if scratch[0] is None or len(scratch[0]) < (hi - lo) * size:
                scratch[0] = np.empty((hi - lo) * size, dtype=np.uint8)
            data = scratch[0][:(hi - lo) * size]
            with open(path, "rb") as fh:
                fh.seek(start + lo * size)
                complete = fh.readinto(data) == len(data)
            block = data.reshape(hi - lo, size)[objid - lo]
        if complete:
            got = block.view(want)[:, 0]
            if np.array_equal(got["objid"], objid) and np.array_equal(got["ra"], ra):
                return block
    rows = None
    try:
        rows = read_rows_fast(path, objid)
        if not (np.array_equal(rows["objid"], objid) and np.array_equal(rows["ra"], ra)):
            rows = None
    except InputError:
        rows = None
    if rows is None:  # changed since conversion: the Parquet rows
        rows = arrow_to_numpy(pq.read_table(parquet_file).take(pa.array(ridx)))
    if not set(TRACTOR_DTYPE.names) <= set(rows.dtype.names):  # another legacypipe model
        rows = conform_tractor(rows)
    block = np.empty(len(objid), dtype=want)
    for c in TRACTOR_DTYPE.names:
        v = rows[c]
        block[c] = np.where(v, ord("T"), ord("F")) if want[c].base.kind == "u" and \
            TRACTOR_DTYPE[c].base.kind == "b" else v
    return block.view(np.uint8).reshape(len(objid), want.itemsize)


def _write_rows(layout, out_path: str, data_start: int, raw_dtype: np.dtype, first: int,
                files: list[Path], fits: list, gfile: np.ndarray, ridx: np.ndarray,
                objid: np.ndarray, ra: np.ndarray, copied: dict[str, np.ndarray],
                dist: np.ndarray) -> int:
    """Assemble output rows ``first .. first + len(gfile)`` (``gfile``: index in ``files``
    of each row's source, -1 where none) and write them in place into the sized output
    file (one byte-range write: tasks fill disjoint ranges in parallel). Returns the
    number of rows written."""
    import os

    n = len(gfile)
    tr_bytes = _tractor_raw_dtype().itemsize
    buf = np.empty(n, dtype=raw_dtype)
    raw = buf.view(np.uint8).reshape(n, raw_dtype.itemsize)
    scratch: list = [None]
    for g in np.unique(gfile):
        sel = np.flatnonzero(gfile == g)
        if g < 0:
            raw[sel, :tr_bytes] = _empty_row()
        else:
            raw[sel, :tr_bytes] = _matched_rows(layout, files[g], ridx[sel], objid[sel],
                                                ra[sel], fits[g], scratch)
    for name, v in copied.items():
        buf[name] = np.where(v, ord("T"), ord("F")) if v.dtype.kind == "b" else v
    buf[DIST_COLUMN] = dist
    view = memoryview(raw).cast("B")
    fd = os.open(out_path, os.O_WRONLY)
    try:
        done, offset = 0, data_start + first * raw_dtype.itemsize
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)
    return n


def _empty_row() -> np.ndarray:
    """The tractor part of an unmatched output row: zeros, logicals 'F', OBJID -1."""
    empty = np.zeros(1, dtype=_tractor_raw_dtype())
    for c in TRACTOR_DTYPE.names:
        if TRACTOR_DTYPE[c].base.kind == "b":
            empty[c] = ord("F")
    empty["objid"] = -1
    return empty.view(np.uint8)


def run_match(layout, external: str | Path, client=None, radius: float = 1.5,
              copy: list[str] | tuple[str, ...] = (), name: str | None = None,
              output: str | Path | None = None) -> dict:
    """Match ``external`` and write ``layout.external(name)`` (default name: the external
    file's stem). Returns ``{"output", "n", "nmatched", "radius", "seconds"}``.

    One task per partition finds the nearest of its primary sources for the external
    objects within its margin (KD-tree of the positions, read from the Parquet dataset);
    the driver keeps the nearest candidate of each object and sizes the output file; then
    one task per range of :data:`CHUNK` output rows assembles them (tractor rows copied
    as raw bytes from the tractor FITS files, already in the output's byte layout) and
    writes them in place. ``phases`` in the summary: seconds of the matching and of the
    writing."""
    import dask

    t0 = time.time()
    external = Path(external)
    ext_ra, ext_dec, ext, _ = read_external(external)
    upper = {c.upper(): c for c in ext.dtype.names}
    missing = [c for c in copy if c.upper() not in upper]
    if missing:
        raise InputError(f"{external}: no column(s) {missing} to copy")
    manifest = load_manifest(layout)
    parts = partition_files(layout, manifest)
    if not parts:
        raise InputError(f"{layout.tractor_parquet}: no tractor Parquet files (run parquet)")
    boxes = list(parts)
    tasks, task_box = [], []
    for k, b in enumerate(boxes):  # each partition gets the external objects in its margin
        sel = np.flatnonzero(_in_margin(ext_ra, ext_dec, b, radius / 3600.0))
        if len(sel):
            tasks.append(dask.delayed(_match_box, pure=False)(
                b, parts[b], ext_ra[sel], ext_dec[sel], radius, sel))
            task_box.append(k)
    got = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    t1 = time.time()
    # nearest candidate over the partitions
    files = [f for b in boxes for f in parts[b]]
    first_file = np.cumsum([0] + [len(parts[b]) for b in boxes])
    n = len(ext_ra)
    best = np.full(n, np.inf)
    gfile = np.full(n, -1, dtype=np.int64)
    ridx = np.zeros(n, dtype=np.int64)
    objid = np.zeros(n, dtype=np.int32)
    ra = np.zeros(n)
    for k, (idx, d, fidx, rows, oid, sra) in zip(task_box, got, strict=True):
        better = d < best[idx]
        idx = idx[better]
        best[idx] = d[better]
        gfile[idx] = first_file[k] + fidx[better]
        ridx[idx], objid[idx], ra[idx] = rows[better], oid[better], sra[better]
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
    ext_keep = {c: (np.char.encode(ext[c], "ascii") if ext[c].dtype.kind == "U" else ext[c])
                for c in copy_names}
    matched = gfile >= 0
    dist = np.where(matched, chord_to_arcsec(np.where(matched, best, 0)), -1.0)
    nmatched = int(matched.sum())
    path = Path(output) if output else layout.external(name or external.name.split(".")[0])
    hdr = {"NMATCHED": nmatched, "RADIUS": float(radius), "EXTCAT": external.name[:60]}
    bricks = manifest["bricks"]
    fits = [bricks.get(f.stem, {}).get("fits") for f in files]
    with atomic_path(path) as tmp:
        with FitsTableWriter(tmp, np.dtype(out_dt), EXTNAME, hdr) as w:
            w.reserve(n)
            w.close()
        tasks = []
        for a in range(0, n, CHUNK):  # row ranges assembled and written in parallel
            sl = slice(a, min(a + CHUNK, n))
            tasks.append(dask.delayed(_write_rows, pure=False)(
                layout, str(tmp), w.data_start, w.raw_dtype, a, files, fits, gfile[sl],
                ridx[sl], objid[sl], ra[sl],
                {c.upper(): ext_keep[c][sl] for c in copy_names}, dist[sl]))
        written = (client.compute(tasks, sync=True) if client is not None
                   else dask.compute(*tasks))
        if sum(written) != n:  # pragma: no cover - defensive
            raise InputError(f"{path}: wrote {sum(written)} rows of {n}")
    t2 = time.time()
    return {"output": str(path), "n": int(len(ext_ra)), "nmatched": nmatched,
            "radius": float(radius), "seconds": round(t2 - t0, 3),
            "phases": {"match": round(t1 - t0, 3), "write": round(t2 - t1, 3)}}


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


# -- the stage protocol (see graphs/base.py) -------------------------------------------------
def _output(ctx) -> Path:
    ext = Path(ctx.config.stages.match.external)
    return ctx.layout.external(ext.name.split(".")[0])


def stage_inputs(ctx) -> dict | None:
    """What the match is made from now (None: no external catalogue configured): the Parquet
    dataset's bricks and checksums, the external catalogue's sha256, radius and columns."""
    from ..done import file_sha256

    opts = ctx.config.stages.match
    if opts.external is None:
        return None
    bricks = load_manifest(ctx.layout).get("bricks", {})
    return {"bricks": {b: e.get("sha256") for b, e in bricks.items()},
            "external": [str(opts.external), file_sha256(opts.external)],
            "radius": float(opts.radius), "copy": list(opts.copy)}


def is_done(ctx, inputs: dict) -> bool:
    from ..done import fingerprint, stamp_ok

    return stamp_ok(ctx.layout.stamp(_output(ctx)), fingerprint(inputs))


def stage_task(ctx, inputs: dict, client=None) -> dict:
    from ..done import clean_temps, fingerprint, write_stamp

    opts = ctx.config.stages.match
    out_path = _output(ctx)
    clean_temps(out_path.parent)
    out = run_match(ctx.layout, opts.external, client=client, radius=opts.radius,
                    copy=opts.copy, output=out_path)
    write_stamp(ctx.layout.stamp(out_path), fingerprint(inputs), [out_path])
    return out


def _stage():
    from .base import WholeStage

    return WholeStage("match", stage_inputs, is_done, stage_task, needs=("parquet",))


STAGE = _stage()
