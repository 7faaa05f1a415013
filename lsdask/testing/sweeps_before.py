"""The tractor -> Parquet -> sweeps path as it was before the single pass (issue 14).

Kept only as a reference: the benchmark times it against the single pass in the same run,
and the tests compare the single pass's products with its products byte for byte. Two
passes: each tractor file -> its per-box Parquet files (the unchanged partition kernel,
without shares); then each box's sweep files from those Parquet files (every column read
back and turned into FITS rows: :func:`make_box_before`, the old sweeps kernel).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import temp_name
from ..graphs.parquet import (
    _save_manifest,
    convert_brick,
    partition_files,
    tractor_bricks,
    tractor_checksum,
)
from ..graphs.sweeps import ROW_GROUP, _box_keys, _common_keys, _write_pending
from ..survey.arrowfits import arrow_to_fixed_bytes
from ..survey.sweeps import (
    EXTNAME,
    SWEEP_COLUMNS,
    SWEEP_KINDS,
    parse_box,
    sweep_columns,
    sweep_dtype,
)
from ..survey.tractor import (
    TRACTOR_DTYPE,
    FitsTableWriter,
)


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


def _provenance(files: list[Path], metas: list) -> dict:
    return _common_keys([{k.decode(): v.decode() for k, v in (m.metadata or {}).items()
                          if len(k) <= 8} for m in metas])


def make_box_before(layout, box: str, files: list[Path], parquet: bool = True) -> dict:
    """Write the sweep files of one box from its tractor Parquet files.

    One brick file at a time: its primary in-box rows are selected with numpy, each column
    is converted once (shared by the main, -lc and -ex files) and stored straight into the
    big-endian row blocks of the three FITS files; the main columns go to the Parquet
    sweep in row groups of about :data:`ROW_GROUP` rows."""
    ramin, ramax, decmin, decmax = parse_box(box)
    outs = {k: layout.sweep(box, k) for k in SWEEP_KINDS}
    pq_out = layout.sweeps_parquet / f"sweep-{box}.parquet"
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


def run_before(layout, client=None) -> int:
    """Both passes over every brick as before (no incremental planning): tractor ->
    Parquet in tasks of 4 bricks, then one task per box; returns the sweep rows."""
    import dask

    found = tractor_bricks(layout)
    items = [(b, tractor_checksum(layout, b)) for b in found]
    chunks = [items[i:i + 4] for i in range(0, len(items), 4)]
    tasks = [dask.delayed(_convert_chunk, pure=False)(layout, c) for c in chunks]
    done = {b: e for res in _compute(client, tasks) for b, e in res}
    manifest = {"bricks": done}
    _save_manifest(layout, manifest)
    parts = partition_files(layout, manifest)
    tasks = [dask.delayed(make_box_before, pure=False)(layout, b, fs) for b, fs in parts.items()]
    return sum(r["rows"] for r in _compute(client, tasks))


def _compute(client, tasks: list) -> list:
    import dask

    return client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)


def _convert_chunk(layout, items):
    return [(b, convert_brick(layout, b, cs, shares=False)) for b, cs in items]
