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
from ..survey.arrowfits import arrow_to_fixed_bytes
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


def _column(table: pa.Table | None, name: str | pa.ChunkedArray,
            dtype: np.dtype) -> np.ndarray:
    """One Arrow column (by name, or the column itself) -> numpy with the tractor dtype
    (fixed-size lists -> 2-d); numbers without a copy, text vectorised."""
    col = table.column(name) if isinstance(name, str) else name
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(n, arr.type.list_size)
    if dtype.kind == "S":
        if arr.null_count:
            arr = pc.fill_null(arr, "")
        return arrow_to_fixed_bytes(arr, dtype.itemsize)
    return arr.to_numpy(zero_copy_only=False)


#: Rows of the Parquet sweep gathered into one row group.
ROW_GROUP = 100_000


def make_box(layout, box: str, files: list[Path], parquet: bool = True) -> dict:
    """Write the sweep files of one box from its tractor Parquet files.

    One brick file at a time: its primary in-box rows are selected with numpy, each column
    is converted once (shared by the main, -lc and -ex files) and stored straight into the
    big-endian row blocks of the three FITS files; the main columns go to the Parquet
    sweep in row groups of about :data:`ROW_GROUP` rows."""
    ramin, ramax, decmin, decmax = parse_box(box)
    outs = {k: layout.sweep(box, k) for k in SWEEP_KINDS}
    pq_out = layout.sweep_parquet(box)
    tmps = {k: temp_name(p) for k, p in outs.items()}
    pq_tmp = temp_name(pq_out)
    writers: dict[str, FitsTableWriter] = {}
    writer = None
    pending: list[pa.Table] = []
    npending = 0
    nrows = 0
    nbricks = 0
    metas = [pq.read_metadata(f) for f in files]
    keys = {**_box_keys(box), **_provenance(files, metas)}
    upper = [c.upper() for c in SWEEP_COLUMNS]
    try:
        for f, md in zip(files, metas, strict=True):
            table = pq.ParquetFile(f, metadata=md, memory_map=True).read(use_threads=False)
            ra = _column(table, "ra", TRACTOR_DTYPE["ra"])
            dec = _column(table, "dec", TRACTOR_DTYPE["dec"])
            top = dec < decmax if decmax < 90 else dec <= decmax
            mask = _column(table, "brick_primary", TRACTOR_DTYPE["brick_primary"]) & (
                ra >= ramin) & (ra < ramax) & (dec >= decmin) & top
            nsel = int(np.count_nonzero(mask))
            if nsel == 0:
                continue
            sel = None if nsel == len(mask) else np.flatnonzero(mask)
            nbricks += 1
            nrows += nsel
            cols: dict[str, np.ndarray] = {}
            index = dict(zip(table.column_names, table.columns, strict=True))
            for kind in SWEEP_KINDS:
                w = writers.get(kind)
                if w is None:
                    tmps[kind].parent.mkdir(parents=True, exist_ok=True)
                    w = writers[kind] = FitsTableWriter(tmps[kind], sweep_dtype(kind), EXTNAME,
                                                        keys, keys)
                # every row into the file layout, then one row gather (cheaper than
                # selecting column by column)
                buf = w.new_buffer(len(mask))
                for c in sweep_columns(kind):
                    v = cols.get(c)
                    if v is None:
                        v = cols[c] = _column(None, index[c], TRACTOR_DTYPE[c].base)
                    w.set_column(buf, c.upper(), v)
                w.write_buffer(buf, sel)
            if parquet:
                main = table.select(list(SWEEP_COLUMNS))
                if sel is not None:
                    main = main.filter(pa.array(mask))
                pending.append(main.rename_columns(upper))
                npending += nsel
                if npending >= ROW_GROUP:
                    writer = _write_pending(writer, pending, pq_tmp, box)
                    pending, npending = [], 0
        if pending:
            writer = _write_pending(writer, pending, pq_tmp, box)
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


def _write_pending(writer, tables: list[pa.Table], path: Path, box: str):
    """Write the pending main-column tables as one row group (opening the writer)."""
    if writer is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = tables[0].schema.with_metadata({k: str(v) for k, v in
                                                 _box_keys(box).items()})
        writer = pq.ParquetWriter(path, schema, compression="none", use_dictionary=False,
                                  write_statistics=False)
    schema = writer.schema
    table = pa.concat_tables([
        t if t.schema.equals(schema, check_metadata=True)
        else t.replace_schema_metadata(schema.metadata) if t.schema.equals(schema)
        else t.cast(schema) for t in tables])
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    return writer


def _provenance(files: list[Path], metas: list | None = None) -> dict:
    """Header keys (FITS-sized names) with the same value in every brick's metadata."""
    prov: dict | None = None
    for i, f in enumerate(files):
        md = (metas[i].metadata if metas is not None else pq.read_schema(f).metadata) or {}
        meta = {k.decode(): v.decode() for k, v in md.items() if len(k) <= 8}
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
    mpath = layout.sweeps_manifest
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



# -- the stage protocol (see graphs/base.py) -------------------------------------------------
def stage_inputs(ctx) -> dict:
    """What the sweeps are made from now: per box, its bricks and their tractor checksums."""
    manifest = load_manifest(ctx.layout)
    return {box: [[p.stem, manifest["bricks"][p.stem]["sha256"]] for p in files]
            for box, files in partition_files(ctx.layout, manifest).items()}


def is_done(ctx, inputs: dict) -> bool:
    """The stamp beside the sweeps manifest records these inputs, and every sweep file
    written then is there with its size (a deleted or truncated sweep is redone)."""
    from ..done import fingerprint, stamp_ok

    layout = ctx.layout
    return stamp_ok(layout.stamp(layout.sweeps_manifest), fingerprint(inputs))


def stage_task(ctx, inputs: dict, client=None) -> dict:
    from ..done import clean_temps, fingerprint, write_stamp

    layout = ctx.layout
    clean_temps(layout.sweeps_dir, layout.sweeps_parquet)
    out = run_sweeps(layout, client=client, force=ctx.forced("sweeps"))
    now = stage_inputs(ctx)  # after the conversion run_sweeps starts with
    files = [p for box in now for p in (*(layout.sweep(box, k) for k in SWEEP_KINDS),
                                         layout.sweep_parquet(box)) if p.is_file()]
    write_stamp(layout.stamp(layout.sweeps_manifest), fingerprint(now), files)
    return out


def _stage():
    from .base import WholeStage

    return WholeStage("sweeps", stage_inputs, is_done, stage_task, needs=("parquet",))


STAGE = _stage()
