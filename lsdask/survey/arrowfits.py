"""Lossless conversion between FITS-style numpy structured arrays and Arrow tables.

Every field keeps its numpy dtype in the Arrow field metadata (``numpy``), so a
round trip restores exact dtypes, including fixed-width strings (``S8``) and
array columns (``f4[8]``, stored as Arrow fixed-size lists, shape in metadata).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

META_KEY = b"numpy"


def _native(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder not in ("=", "|") and a.dtype.byteorder != (
            "<" if np.little_endian else ">"):
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def column_to_arrow(col: np.ndarray) -> tuple[pa.Array, dict[bytes, bytes]]:
    """One numpy column (possibly with a sub-array shape) -> Arrow array + field metadata."""
    base = col.dtype.base if col.ndim > 1 else col.dtype
    shape = col.shape[1:]
    meta = {META_KEY: json.dumps({"dtype": base.newbyteorder("=").str if base.kind not in "SUb"
                                  else base.str, "shape": list(shape)}).encode()}
    flat = col.reshape(len(col), -1).ravel() if shape else col
    if base.kind == "S":
        arr = pa.array(np.char.rstrip(flat).astype(object) if len(flat) else flat.astype(object),
                       type=pa.binary()).cast(pa.string())
    elif base.kind == "U":
        arr = pa.array(np.char.rstrip(flat), type=pa.string())
    else:
        arr = pa.array(_native(flat))
    if shape:
        arr = pa.FixedSizeListArray.from_arrays(arr, int(np.prod(shape)))
    return arr, meta


def numpy_to_arrow(data: np.ndarray, metadata: dict[str, str] | None = None) -> pa.Table:
    """A structured array -> Arrow table; ``metadata`` goes into the schema (e.g. header keys)."""
    arrays, fields = [], []
    for name in data.dtype.names:
        arr, meta = column_to_arrow(data[name])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, metadata=meta))
    schema = pa.schema(fields, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return pa.Table.from_arrays(arrays, schema=schema)


def _field_dtype(f: pa.Field) -> tuple[np.dtype, tuple[int, ...]]:
    if f.metadata and META_KEY in f.metadata:
        m = json.loads(f.metadata[META_KEY])
        return np.dtype(m["dtype"]), tuple(m["shape"])
    t = f.type
    shape: tuple[int, ...] = ()
    if pa.types.is_fixed_size_list(t):
        shape = (t.list_size,)
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.dtype("U"), shape
    return np.dtype(t.to_pandas_dtype()), shape


def _fill_nulls(arr: pa.Array, dt: np.dtype, shape: tuple[int, ...]) -> pa.Array:
    if shape:
        size = int(np.prod(shape))
        fill = [""] * size if dt.kind in "SU" else [0] * size
        return pa.array([fill if x is None else x for x in arr.to_pylist()], type=arr.type)
    fill = "" if dt.kind in "SU" else (False if dt.kind == "b" else 0)
    return pc.fill_null(arr, pa.scalar(fill, type=arr.type))


def arrow_to_numpy(table: pa.Table) -> np.ndarray:
    """Arrow table (from :func:`numpy_to_arrow`, or any flat table) -> structured array."""
    cols, dtypes = [], []
    for f, chunked in zip(table.schema, table.columns, strict=True):
        dt, shape = _field_dtype(f)
        arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        if arr.null_count:  # e.g. a column missing from some of the concatenated tables
            arr = _fill_nulls(arr, dt, shape)
        if shape:
            values = arr.flatten()
            n = len(arr)
        else:
            values, n = arr, len(arr)
        if dt.kind in "SU":
            v = np.asarray(values.to_pylist(), dtype=object)
            # never truncate: the stored width may come from another (narrower) table
            chars = dt.itemsize // (4 if dt.kind == "U" else 1)
            width = max((len(s) for s in v if s is not None), default=1)
            dt = np.dtype(f"{dt.kind}{max(width, chars, 1)}")
            v = np.array(["" if s is None else s for s in v], dtype=dt) if n else np.zeros(0, dt)
        else:
            v = values.to_numpy(zero_copy_only=False).astype(dt, copy=False)
        if shape:
            v = v.reshape((n, *shape))
        cols.append(v)
        dtypes.append((f.name, dt, shape) if shape else (f.name, dt))
    out = np.empty(table.num_rows, dtype=dtypes)
    for (name, *_), v in zip(dtypes, cols, strict=True):
        out[name] = v
    return out


def schema_metadata(table: pa.Table) -> dict[str, str]:
    """The schema's key/value metadata as a str dict."""
    md = table.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in md.items()}
