"""Stage ``parquet``: tractor catalogues -> one Parquet dataset partitioned by sweep box.

Layout: ``layout.tractor_parquet / box=<box> / <brick>.parquet`` (hive-style), every row of
every tractor catalogue in the box of its own position, all 181 columns with exact dtypes
(array columns as fixed-size lists, numpy dtypes in field metadata: see
:mod:`lsdask.survey.arrowfits`), the brick's header keys in the file's schema metadata.

Incremental: ``_manifest.json`` in the dataset records each converted brick's tractor sha256
(from ``brick-<brick>.sha256sum``, else computed), its files and, for DR9-layout files, where
the rows lie in the FITS file (``fits``: start, nrows, size; used for fast row reads); a
rerun converts only new or changed bricks and removes files of bricks that disappeared.
The same pass writes the brick's sweep shares (:mod:`lsdask.graphs.tractorpass`, listed as
``shares``), from which the sweeps are assembled. Each file is written under a hidden
temporary name and renamed, and the manifest is
rewritten atomically after each batch, so a killed run leaves no half-written partition
visible and a rerun resumes. Writing: required (non-null) columns, no compression, no
dictionary, statistics only for the position columns.

Public: :func:`run_parquet(layout, client=None)` -> summary dict;
:func:`read_tractor_parquet(layout, columns=None)` -> Dask DataFrame;
:func:`tractor_bricks(layout)` (bricks with a tractor file), :func:`load_manifest`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path, sha256_file, write_text_atomic
from ..errors import InputError
from ..survey.arrowfits import column_to_arrow, fixed_bytes_to_arrow, numeric_to_arrow
from ..survey.sweeps import box_from_index, box_index
from ..survey.tractor import (
    conform_tractor,
    is_tractor_layout,
    read_table_fast,
    read_table_raw,
)
from .tractorpass import box_selections, share_rows_from_columns, share_rows_from_raw, write_share

MANIFEST = "_manifest.json"
COMPRESSION = "none"
BATCH = 64
#: Parquet writer options: no dictionary pages and statistics only on the position columns
#: make writing ~3x faster on these wide float tables (values are nearly all distinct).
WRITE_OPTIONS = {"use_dictionary": False, "write_statistics": ["ra", "dec", "brick_primary"]}


def tractor_bricks(layout) -> dict[str, Path]:
    """Brick name -> tractor path for every ``tractor/<bri>/tractor-<brick>.fits``."""
    root = layout.tractor_dir
    out = {}
    if not root.is_dir():
        return out
    for sub in sorted(os.scandir(root), key=lambda e: e.name):
        if not sub.is_dir():
            continue
        for e in sorted(os.scandir(sub.path), key=lambda e: e.name):
            n = e.name
            if n.startswith("tractor-") and n.endswith(".fits"):
                brick = n[len("tractor-"):-len(".fits")]
                out[brick] = layout.tractor(brick)
    return out


def tractor_checksum(layout, brick: str) -> str:
    """The tractor file's sha256 from the brick's sha256sum file, else computed."""
    sums = layout.sha256sum(brick)
    name = layout.tractor(brick).name
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and Path(parts[-1].lstrip("*")).name == name:
                return parts[0]
    return sha256_file(layout.tractor(brick))


def load_manifest(layout) -> dict:
    p = layout.tractor_parquet_manifest
    if not p.is_file():
        return {"bricks": {}}
    try:
        return json.loads(p.read_text())
    except ValueError:
        return {"bricks": {}}


def _save_manifest(layout, manifest: dict) -> None:
    write_text_atomic(layout.tractor_parquet_manifest, json.dumps(manifest, indent=0))




def tractor_to_arrow(data: np.ndarray, metadata: dict[str, str] | None = None) -> pa.Table:
    """Raw fitsio rows (any case, unicode text) -> Arrow table with lower-case names and
    the exact DR9 dtypes in field metadata (text stored as ``S``)."""
    arrays, fields = [], []
    for name in data.dtype.names:
        col = data[name]
        if col.dtype.kind == "U":
            col = np.char.encode(np.char.rstrip(col), "ascii")
        arr, meta = column_to_arrow(col)
        arrays.append(arr)
        fields.append(pa.field(name.lower(), arr.type, metadata=meta))
    return _required(arrays, fields, metadata)


def raw_to_arrow(raw: np.ndarray, logical: list[str],
                 metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows as stored in a FITS table (:func:`lsdask.survey.tractor.read_table_raw`:
    big-endian, logicals 'T'/'F') -> the same Arrow table as :func:`tractor_to_arrow`,
    each column converted in one vectorised pass (schema built once per layout)."""
    schema = _raw_schema(raw.dtype, tuple(logical))
    arrays = []
    for name, f in zip(raw.dtype.names, schema, strict=True):
        col = raw[name]
        if name in logical:
            col = col == ord("T")
        if col.dtype.base.kind in "iuf":
            arr = numeric_to_arrow(col)
        elif col.dtype.base.kind == "S" and col.ndim == 1:
            arr = fixed_bytes_to_arrow(col)
        else:
            arr = column_to_arrow(col)[0]
            if col.ndim > 1:
                arr = arr.flatten()
        if col.ndim > 1:
            arr = pa.FixedSizeListArray.from_arrays(arr, type=f.type)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata or {}))


@functools.lru_cache(maxsize=16)
def _raw_schema(dtype: np.dtype, logical: tuple[str, ...]) -> pa.Schema:
    """Arrow schema of :func:`raw_to_arrow` for one raw FITS layout: lower-case names,
    every field and list item non-null, numpy dtypes in field metadata."""
    fields = []
    for name in dtype.names:
        dt = dtype[name]
        base, shape = (dt.base, dt.shape) if dt.shape else (dt, ())
        if name in logical:
            base = np.dtype(np.bool_)
        elif base.kind in "iuf":
            base = base.newbyteorder("=")
        probe, meta = column_to_arrow(np.zeros((1, *shape), dtype=base))
        t = probe.type
        if shape:
            t = pa.list_(pa.field("item", t.value_type, nullable=False), t.list_size)
        fields.append(pa.field(name.lower(), t, nullable=False, metadata=meta))
    return pa.schema(fields)


def _required(arrays: list[pa.Array], fields: list[pa.Field],
              metadata: dict[str, str] | None) -> pa.Table:
    """The table with every field (and list item) declared non-null: tractor columns have
    no nulls, and required Parquet columns need no definition levels (faster to write and
    read)."""
    out_a, out_f = [], []
    for arr, f in zip(arrays, fields, strict=True):
        if arr.null_count:
            out_a.append(arr)
            out_f.append(f)
            continue
        if pa.types.is_fixed_size_list(arr.type):
            t = pa.list_(pa.field("item", arr.type.value_type, nullable=False),
                         arr.type.list_size)
            arr = pa.FixedSizeListArray.from_arrays(arr.flatten(), type=t)
        out_a.append(arr)
        out_f.append(pa.field(f.name, arr.type, nullable=False, metadata=f.metadata))
    return pa.Table.from_arrays(out_a, schema=pa.schema(out_f, metadata=metadata or {}))


def convert_brick(layout, brick: str, checksum: str, compression: str = COMPRESSION,
                  shares: bool = True) -> dict:
    """Convert one tractor file into its per-box Parquet files and, in the same pass (unless
    not ``shares``), its sweep shares (:mod:`lsdask.graphs.tractorpass`); returns its
    manifest entry."""
    path = layout.tractor(brick)
    got = read_table_raw(path, primary_header=True)
    fits = None
    logical: list[str] = []
    if got is not None and is_tractor_layout(got[0].dtype):
        data, logical, phdr, start = got
        fits = {"start": int(start), "nrows": int(len(data)),  # for fast row reads
                "size": int(path.stat().st_size)}
    else:  # another legacypipe data model (DR10/DR11, --no-wise ...): as DR9 rows
        data, phdr = read_table_fast(path, primary_header=True)
        data = conform_tractor(data)
    header = {k: str(v) for k, v in phdr.items()}
    header["lsdask_brick"] = brick
    header["lsdask_sha256"] = checksum
    lower = {n.lower(): n for n in data.dtype.names}
    if "ra" not in lower or "dec" not in lower:
        raise InputError(f"{path}: no RA/DEC columns")
    ra = np.asarray(data[lower["ra"]], dtype=float)
    dec = np.asarray(data[lower["dec"]], dtype=float)
    keys = box_index(ra, dec)
    uniq = np.unique(keys)
    files = []
    for k in uniq:
        box = box_from_index(int(k))
        sub = data if len(uniq) == 1 else data[keys == k]
        table = (raw_to_arrow(sub, logical, header) if got is not None
                 else tractor_to_arrow(sub, header))
        out = layout.tractor_parquet_file(box, brick)
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp, compression=compression, **WRITE_OPTIONS)
        files.append(str(out.relative_to(layout.tractor_parquet)))
    entry = {"sha256": checksum, "files": files, "nrows": int(len(data)), "fits": fits}
    if shares:
        entry["shares"] = _write_shares(layout, brick, data, logical, fits is not None, ra,
                                        dec, keys, [int(k) for k in uniq], header)
    return entry


def _write_shares(layout, brick: str, data: np.ndarray, logical: list[str], dr9: bool,
                  ra: np.ndarray, dec: np.ndarray, keys: np.ndarray, boxes: list[int],
                  header: dict[str, str]) -> list[str]:
    """The brick's sweep share of each box of its partition (relative paths)."""
    lower = {n.lower(): n for n in data.dtype.names}
    if "brick_primary" not in lower:
        return []
    primary = data[lower["brick_primary"]]
    primary = primary == ord("T") if lower["brick_primary"] in logical else primary.astype(bool)
    sels = box_selections(ra, dec, primary, keys, {k: box_from_index(k) for k in boxes})
    out = []
    for box, sel in sels.items():
        rows = (share_rows_from_raw(data, sel) if dr9
                else share_rows_from_columns(data, logical, sel))
        path = layout.sweep_share(box, brick)
        write_share(path, rows, len(data) if sel is None else len(sel), header)
        out.append(str(path.relative_to(layout.sweep_shares)))
    return out


def _convert_many(layout, items: list[tuple[str, str]], compression: str) -> list:
    out = []
    for brick, checksum in items:
        try:
            out.append((brick, convert_brick(layout, brick, checksum, compression), None))
        except InputError as e:
            out.append((brick, None, str(e)))
    return out


def run_parquet(layout, client=None, force: bool = False, compression: str = COMPRESSION,
                bricks_per_task: int = 4) -> dict:
    """Convert new/changed tractor catalogues to the Parquet dataset.

    ``client``: a ``distributed.Client`` or None (the current/default Dask scheduler).
    Returns ``{"converted", "skipped", "removed", "failed": {brick: msg}, "rows", "seconds"}``.
    """
    import dask

    t0 = time.time()
    found = tractor_bricks(layout)
    manifest = {"bricks": {}} if force else load_manifest(layout)
    done = manifest.setdefault("bricks", {})
    todo = []
    for brick in found:
        cs = tractor_checksum(layout, brick)
        entry = done.get(brick)
        if entry and entry.get("sha256") == cs and _products_present(layout, entry):
            continue
        todo.append((brick, cs))
    removed = [b for b in list(done) if b not in found]
    for b in removed:
        _remove_files(layout, done.pop(b))
    layout.tractor_parquet.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    rows = 0
    chunks = [todo[i:i + bricks_per_task] for i in range(0, len(todo), bricks_per_task)]
    for b0 in range(0, len(chunks), BATCH):
        tasks = [dask.delayed(_convert_many, pure=False)(layout, c, compression)
                 for c in chunks[b0:b0 + BATCH]]
        results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
        for res in results:
            for brick, entry, err in res:
                if err:
                    failed[brick] = err
                    continue
                old = done.get(brick)
                if old:
                    _remove_files(layout, old, entry)
                done[brick] = entry
                rows += entry["nrows"]
        _save_manifest(layout, manifest)
    if removed or not todo:
        _save_manifest(layout, manifest)
    return {"converted": len(todo) - len(failed), "skipped": len(found) - len(todo),
            "removed": len(removed), "failed": failed, "rows": rows,
            "seconds": round(time.time() - t0, 3)}


def _products_present(layout, entry: dict) -> bool:
    """Whether every Parquet file and sweep share of a manifest entry exists."""
    return "shares" in entry and all(
        (layout.tractor_parquet / f).is_file() for f in entry["files"]) and all(
        (layout.sweep_shares / f).is_file() for f in entry["shares"])


def _remove_files(layout, old: dict, new: dict | None = None) -> None:
    """Remove the Parquet files and sweep shares of manifest entry ``old`` that ``new``
    does not list."""
    for key, root in (("files", layout.tractor_parquet), ("shares", layout.sweep_shares)):
        keep = set(new.get(key, ())) if new else set()
        for f in old.get(key, ()):
            p = root / f
            if f not in keep and p.is_file():
                p.unlink()


def partition_files(layout, manifest: dict | None = None) -> dict[str, list[Path]]:
    """Box name -> sorted Parquet files of that box (from the manifest)."""
    manifest = load_manifest(layout) if manifest is None else manifest
    out: dict[str, list[Path]] = {}
    for entry in manifest["bricks"].values():
        for f in entry["files"]:
            box = f.split("/", 1)[0].split("=", 1)[1]
            out.setdefault(box, []).append(layout.tractor_parquet / f)
    return {k: sorted(v) for k, v in sorted(out.items())}


def read_tractor_parquet(layout, columns: list[str] | None = None):
    """The tractor Parquet dataset as a Dask DataFrame (one partition per file)."""
    import dask.dataframe as dd

    files = [str(p) for fs in partition_files(layout).values() for p in fs]
    if not files:
        raise InputError(f"{layout.tractor_parquet}: no tractor Parquet files (run parquet)")
    return dd.read_parquet(files, columns=columns)


# -- the stage protocol (see graphs/base.py) -------------------------------------------------
def stage_inputs(ctx) -> dict[str, str]:
    """What the dataset is made from now: brick -> its tractor catalogue's sha256."""
    return {b: tractor_checksum(ctx.layout, b) for b in tractor_bricks(ctx.layout)}


def is_done(ctx, inputs: dict[str, str]) -> bool:
    """The manifest lists exactly these bricks with these checksums, and their files exist."""
    bricks = load_manifest(ctx.layout).get("bricks", {})
    if set(bricks) != set(inputs):
        return False
    root = ctx.layout.tractor_parquet
    return all(e.get("sha256") == inputs[b] and all((root / f).is_file() for f in e["files"])
               for b, e in bricks.items())


def stage_task(ctx, inputs: dict[str, str], client=None) -> dict:
    from ..done import clean_temps

    clean_temps(ctx.layout.tractor_parquet, recursive=True)
    return run_parquet(ctx.layout, client=client, force=ctx.forced("parquet"))


def _stage():
    from .base import WholeStage

    return WholeStage("parquet", stage_inputs, is_done, stage_task)


STAGE = _stage()
