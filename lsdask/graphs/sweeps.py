"""Stage ``sweeps``: sweep files per non-empty 10 x 5 degree box, assembled from the sweep
shares that the ``parquet`` stage writes in its single pass over the tractor catalogues
(:mod:`lsdask.graphs.tractorpass`).

For each box that holds primary sources: ``sweeps/sweep-<box>.fits`` (main columns),
``sweep-<box>-lc.fits`` and ``sweep-<box>-ex.fits`` (see :mod:`lsdask.survey.sweeps`),
upper-case columns, EXTNAME ``SWEEP``, headers RAMIN/DECMIN/RAMAX/DECMAX plus the provenance
keys common to every brick of the box's partition; and ``parquet/sweeps/sweep-<box>.parquet``
(main columns, upper-case). Rows: ``brick_primary`` and inside the box, bricks in name order,
each brick's rows in objid order. One task per box (:func:`make_box`): the FITS rows of each
share are copied as they are (by the kernel), the Parquet sweep converts one row group's
worth of main rows at a time, so memory stays bounded. Each output is written to a
temporary name and renamed. Incremental: ``_manifest.json`` of the Parquet sweeps records
each box's bricks and their tractor checksums; only boxes whose list changed are remade.

Public: :func:`run_sweeps(layout, client=None)` -> summary dict (runs the ``parquet``
stage first unless ``convert=False``); :func:`make_box` (one box from its shares);
:func:`share_files`; :func:`read_sweeps(layout, columns=None)` -> Dask DataFrame.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import temp_name, write_text_atomic
from ..errors import InputError
from ..survey.sweeps import (
    EXTNAME,
    SWEEP_KINDS,
    parse_box,
    sweep_dtype,
)
from ..survey.tractor import FitsTableWriter
from .parquet import load_manifest, partition_files, raw_to_arrow, run_parquet
from .tractorpass import Share, copy_kind_rows, kind_raw_dtype

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
    """A header value back from its text: a number only where the number's own text is
    that text (a hash such as ``939e353016698065`` stays a string, not inf)."""
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            if str(conv(v)) == v:
                return conv(v)
    if v in ("True", "False"):
        return v == "True"
    return v


#: Rows of the Parquet sweep gathered into one row group.
ROW_GROUP = 100_000


def make_box(layout, box: str, shares: list[Path], parquet: bool = True) -> dict:
    """Write the sweep files of one box from its bricks' sweep shares (brick-name order,
    :mod:`lsdask.graphs.tractorpass`): each FITS file is its header plus the shares' rows
    of its kind copied as they are; the Parquet sweep converts the main rows, a row group
    every :data:`ROW_GROUP` rows or more (at brick boundaries)."""
    outs = {k: layout.sweep(box, k) for k in SWEEP_KINDS}
    pq_out = layout.sweep_parquet(box)
    tmps = {k: temp_name(p) for k, p in outs.items()}
    pq_tmp = temp_name(pq_out)
    opened = [Share(p) for p in shares]
    keys = {**_box_keys(box), **_common_keys([s.header for s in opened])}
    full = [s for s in opened if s.nrows]
    writer = None
    try:
        if full:
            for kind in SWEEP_KINDS:
                tmps[kind].parent.mkdir(parents=True, exist_ok=True)
                with FitsTableWriter(tmps[kind], sweep_dtype(kind), EXTNAME, keys, keys) as w:
                    for s in full:
                        w.append_copied(functools.partial(copy_kind_rows, s, kind), s.nrows)
                    w.close()
            if parquet:
                group: list[Share] = []
                ngroup = 0
                for s in full:
                    group.append(s)
                    ngroup += s.nrows
                    if ngroup >= ROW_GROUP:
                        writer = _write_pending(writer, _main_tables(group), pq_tmp, box)
                        group, ngroup = [], 0
                if group:
                    writer = _write_pending(writer, _main_tables(group), pq_tmp, box)
                writer.close()
                pq_tmp.replace(pq_out)
            for kind in SWEEP_KINDS:
                tmps[kind].replace(outs[kind])
        else:  # box empty now: remove stale products
            for p in (*outs.values(), pq_out):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for p in (*tmps.values(), pq_tmp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return {"box": box, "rows": sum(s.nrows for s in full), "bricks": len(full)}


def _main_tables(shares: list[Share]) -> list[pa.Table]:
    """The shares' main rows as the Parquet sweep's Arrow tables, one a share (converted
    at once, then sliced): upper-case names, list items named ``element`` (as when read
    back from the tractor Parquet)."""
    dt = sweep_dtype("")
    rows = np.empty(sum(s.nrows for s in shares), dtype=kind_raw_dtype(""))
    pos = 0
    for s in shares:
        s.read_rows("", out=rows[pos:pos + s.nrows])
        pos += s.nrows
    table = raw_to_arrow(rows, [n for n in dt.names if dt[n].base.kind == "b"])
    table = pa.Table.from_arrays(table.columns, schema=_main_schema(table.schema))
    out, pos = [], 0
    for s in shares:
        out.append(table.slice(pos, s.nrows))
        pos += s.nrows
    return out


@functools.lru_cache(maxsize=4)
def _main_schema(schema: pa.Schema) -> pa.Schema:
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_list(t):
            t = pa.list_(pa.field("element", t.value_type, nullable=False), t.list_size)
        fields.append(pa.field(f.name.upper(), t, nullable=f.nullable, metadata=f.metadata))
    return pa.schema(fields)


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


def _common_keys(headers: list[dict[str, str]]) -> dict:
    """Header keys (FITS-sized names) with the same value in every brick's header."""
    prov: dict | None = None
    for meta in headers:
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
    parts = share_files(layout, manifest)
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


def share_files(layout, manifest: dict | None = None) -> dict[str, list[Path]]:
    """Box name -> sorted sweep shares of that box (from the tractor Parquet manifest)."""
    manifest = load_manifest(layout) if manifest is None else manifest
    out: dict[str, list[Path]] = {}
    for brick, entry in manifest["bricks"].items():
        if "shares" not in entry:
            raise InputError(f"{brick}: no sweep shares (converted by an older lsdask: run "
                             "parquet)")
        for f in entry["shares"]:
            box = f.split("/", 1)[0].split("=", 1)[1]
            out.setdefault(box, []).append(layout.sweep_shares / f)
    return {k: sorted(v) for k, v in sorted(out.items())}


def sweep_files(layout) -> list[Path]:
    """Main sweep FITS files present (``sweep/<v>/``; never the -lc/-ex files), sorted."""
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
    clean_temps(*(layout.sweep_dir(k) for k in SWEEP_KINDS), layout.sweeps_parquet)
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
