"""Stage ``sweeps``: sweep files per non-empty 10 x 5 degree box, from the tractor Parquet.

For each box that holds primary sources: ``sweeps/sweep-<box>.fits`` (main columns),
``sweep-<box>-lc.fits`` and ``sweep-<box>-ex.fits`` (see :mod:`lsdask.survey.sweeps`),
upper-case columns, EXTNAME ``SWEEP``, headers RAMIN/DECMIN/RAMAX/DECMAX plus the provenance
keys common to every contributing brick; and ``parquet/sweeps/sweep-<box>.parquet`` (main
columns, upper-case). Rows: ``brick_primary`` and inside the box, bricks in name order, each
brick's rows in objid order. One task per box streams one brick file at a time, so memory
stays bounded by the largest brick. Each output is written to a temporary name and renamed.

Public: :func:`run_sweeps(layout, client=None)` -> summary dict (converts tractor ->
Parquet first unless ``parquet=False``); :func:`read_sweeps(layout, columns=None)` -> Dask
DataFrame.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import temp_name, write_text_atomic
from ..errors import InputError
from ..survey.sweeps import (
    EXTNAME,
    SWEEP_COLUMNS,
    SWEEP_KINDS,
    parse_box,
    sweep_columns,
    sweep_dtype,
)
from ..survey.tractor import TRACTOR_DTYPE, FitsTableWriter
from .parquet import load_manifest, partition_files, run_parquet

SWEEPS_MANIFEST = "_manifest.json"
#: Per-brick header keys that are not provenance.
_PER_BRICK = {"BRICKNAM", "BRICKID", "RAMIN", "RAMAX", "DECMIN", "DECMAX", "BRICKNAME",
              "lsdask_brick", "lsdask_sha256", "EXTNAME"}


def _fits_header(keys: dict):
    import fitsio

    hdr = fitsio.FITSHDR()
    for k, v in keys.items():
        hdr.add_record({"name": k, "value": v})
    return hdr


def _coerce(v: str):
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(v)
    if v in ("True", "False"):
        return v == "True"
    return v


def _column(table: pa.Table, name: str, dtype: np.dtype) -> np.ndarray:
    """One Arrow column -> numpy with the tractor dtype (fixed-size lists -> 2-d)."""
    col = table.column(name)
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(n, arr.type.list_size)
    if dtype.kind == "S":
        return arr.to_numpy(zero_copy_only=False).astype(dtype)
    return arr.to_numpy(zero_copy_only=False)


def make_box(layout, box: str, files: list[Path], parquet: bool = True) -> dict:
    """Write the sweep files of one box from its tractor Parquet files."""
    ramin, ramax, decmin, decmax = parse_box(box)
    outs = {k: layout.sweep(box, k) for k in SWEEP_KINDS}
    pq_out = layout.sweeps_parquet / f"sweep-{box}.parquet"
    tmps = {k: temp_name(p) for k, p in outs.items()}
    pq_tmp = temp_name(pq_out)
    writers: dict[str, FitsTableWriter] = {}
    writer = None
    nrows = 0
    nbricks = 0
    keys = {**_box_keys(box), **_provenance(files)}
    needed = sorted(set().union(*(sweep_columns(k) for k in SWEEP_KINDS)))
    try:
        for f in files:
            table = pq.read_table(f)
            ra, dec = table.column("ra"), table.column("dec")
            top = pc.less(dec, decmax) if decmax < 90 else pc.less_equal(dec, decmax)
            mask = pc.and_(pc.and_(table.column("brick_primary"), pc.greater_equal(ra, ramin)),
                           pc.and_(pc.less(ra, ramax),
                                   pc.and_(pc.greater_equal(dec, decmin), top)))
            table = table.filter(mask)
            if table.num_rows == 0:
                continue
            nbricks += 1
            nrows += table.num_rows
            cols = {c: _column(table, c, TRACTOR_DTYPE[c].base) for c in needed}
            for kind in SWEEP_KINDS:
                if kind not in writers:
                    tmps[kind].parent.mkdir(parents=True, exist_ok=True)
                    writers[kind] = FitsTableWriter(tmps[kind], sweep_dtype(kind), EXTNAME,
                                                    keys, keys)
                writers[kind].append({c.upper(): cols[c] for c in sweep_columns(kind)})
            if parquet:
                main = table.select(list(SWEEP_COLUMNS)).rename_columns(
                    [c.upper() for c in SWEEP_COLUMNS])
                if writer is None:
                    pq_tmp.parent.mkdir(parents=True, exist_ok=True)
                    main = main.replace_schema_metadata({k: str(v) for k, v in
                                                         _box_keys(box).items()})
                    writer = pq.ParquetWriter(pq_tmp, main.schema, compression="none",
                                              use_dictionary=False, write_statistics=False)
                writer.write_table(main.replace_schema_metadata(writer.schema.metadata))
        for w in writers.values():
            w.close()
        if writer is not None:
            writer.close()
            pq_tmp.replace(pq_out)
        for kind in writers:
            tmps[kind].replace(outs[kind])
        if not writers:  # box empty now: remove stale products
            for p in (*outs.values(), pq_out):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    finally:
        for w in writers.values():
            w.__exit__()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for p in (*tmps.values(), pq_tmp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return {"box": box, "rows": nrows, "bricks": nbricks}


def _provenance(files: list[Path]) -> dict:
    """Header keys (FITS-sized names) with the same value in every brick's metadata."""
    prov: dict | None = None
    for f in files:
        md = pq.read_schema(f).metadata or {}
        meta = {k.decode(): v.decode() for k, v in md.items()}
        if prov is None:
            prov = {k: v for k, v in meta.items() if k not in _PER_BRICK
                    and len(k) <= 8 and k.isupper() and len(v) <= 68}
        else:
            prov = {k: v for k, v in prov.items() if meta.get(k) == v}
    return {k: _coerce(v) for k, v in (prov or {}).items()}


def _box_keys(box: str) -> dict:
    ramin, ramax, decmin, decmax = parse_box(box)
    return {"RAMIN": ramin, "DECMIN": decmin, "RAMAX": ramax, "DECMAX": decmax}


def run_sweeps(layout, client=None, force: bool = False, parquet: bool = True,
               convert: bool = True) -> dict:
    """Make the sweep files of every box with primary sources (only boxes whose inputs
    changed unless ``force``). ``convert``: run the tractor -> Parquet stage first.

    Returns ``{"boxes", "skipped", "rows", "files", "parquet": <parquet summary>, "seconds"}``.
    """
    import dask

    t0 = time.time()
    psum = run_parquet(layout, client=client) if convert else None
    manifest = load_manifest(layout)
    parts = partition_files(layout, manifest)
    sig = {}
    for box, files in parts.items():
        names = [p.stem for p in files]
        sig[box] = [[n, manifest["bricks"][n]["sha256"]] for n in names]
    mpath = layout.sweeps_parquet / SWEEPS_MANIFEST
    old = {}
    if mpath.is_file() and not force:
        with contextlib.suppress(ValueError):
            old = json.loads(mpath.read_text())
    todo = [b for b in parts if force or old.get(b) != sig[b]
            or not layout.sweep(b).is_file()]
    stale = [b for b in old if b not in parts]
    tasks = [dask.delayed(make_box, pure=False)(layout, b, parts[b], parquet) for b in todo]
    tasks += [dask.delayed(make_box, pure=False)(layout, b, [], parquet) for b in stale]
    results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    new = {b: sig[b] for b in parts}
    write_text_atomic(mpath, json.dumps(new))
    rows = sum(r["rows"] for r in results)
    return {"boxes": sum(1 for r in results if r["rows"]), "skipped": len(parts) - len(todo),
            "rows": rows, "files": [layout.sweep(r["box"]).name for r in results if r["rows"]],
            "parquet": psum, "seconds": round(time.time() - t0, 3)}


def sweep_files(layout) -> list[Path]:
    """Main sweep FITS files present, sorted."""
    d = layout.sweeps_dir
    return sorted(p for p in d.glob("sweep-*.fits")
                  if not p.name.endswith(("-lc.fits", "-ex.fits"))) if d.is_dir() else []


def read_sweeps(layout, columns: list[str] | None = None):
    """The Parquet sweep dataset (main columns, upper-case) as a Dask DataFrame."""
    import dask.dataframe as dd

    files = sorted(str(p) for p in layout.sweeps_parquet.glob("sweep-*.parquet")) \
        if layout.sweeps_parquet.is_dir() else []
    if not files:
        raise InputError(f"{layout.sweeps_parquet}: no sweep Parquet files (run sweeps)")
    return dd.read_parquet(files, columns=columns)


def read_sweep_table(path: str | Path) -> pa.Table:
    """One sweep Parquet file as an Arrow table."""
    return pq.read_table(path)

