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
    """Contiguous, native byte order (one pass at most)."""
    dt = a.dtype
    if dt.byteorder not in ("=", "|") and not dt.isnative:
        dt = dt.newbyteorder("=")
    return np.ascontiguousarray(a, dtype=dt)


def _kept(b: np.ndarray) -> np.ndarray:
    """Bytes kept at the right of FITS text: all but NUL and the ASCII white space."""
    return ~((b == 0) | (b == 32) | ((b >= 9) & (b <= 13)))


def fixed_bytes_to_arrow(col: np.ndarray) -> pa.Array:
    """A 1-d ``S`` array -> Arrow string array, trailing blanks/NULs stripped (vectorised,
    no per-value Python work)."""
    n, w = len(col), col.dtype.itemsize
    if n == 0 or w == 0:
        return pa.array([""] * n, type=pa.string())
    b = np.ascontiguousarray(col).view(np.uint8).reshape(n, w)
    keep = _kept(b)
    lens = np.where(keep.any(axis=1), w - np.argmax(keep[:, ::-1], axis=1), 0)
    data = np.ascontiguousarray(b[np.arange(w) < lens[:, None]])
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    arr = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                 pa.py_buffer(data)])
    return arr.cast(pa.string())


def arrow_to_fixed_bytes(arr: pa.Array, width: int = 0) -> np.ndarray:
    """An Arrow string/binary array without nulls -> ``S`` array, at least ``width`` wide
    (never truncating: wider values widen the result)."""
    n = len(arr)
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        otype = np.int64
    else:
        otype = np.int32
    bufs = arr.buffers()
    offsets = (np.frombuffer(bufs[1], dtype=otype)[arr.offset:arr.offset + n + 1]
               if n else np.zeros(1, otype))
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, "u1")
    lens = np.diff(offsets)
    w = max(int(lens.max()) if n else 0, width, 1)
    out = np.zeros((n, w), dtype=np.uint8)
    total = int(lens.sum())
    if total:
        rows = np.repeat(np.arange(n), lens)
        cols = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lens)
        out[rows, cols] = data[offsets[0]:offsets[-1]]
    return out.view(f"S{w}").reshape(n)


def numeric_to_arrow(col: np.ndarray) -> pa.Array:
    """A numeric column (any byte order or strides; sub-arrays flattened row by row) -> a
    flat Arrow array, converted in one pass straight into memory of Arrow's pool (reused
    from brick to brick, no fresh pages)."""
    dt = col.dtype.base if col.ndim > 1 else col.dtype
    if not dt.isnative:
        dt = dt.newbyteorder("=")
    n = col.size
    buf = pa.allocate_buffer(n * dt.itemsize)
    np.copyto(np.frombuffer(buf, dtype=dt, count=n).reshape(col.shape), col, casting="equiv")
    return pa.Array.from_buffers(pa.from_numpy_dtype(dt), n, [None, buf])


def field_metadata(base: np.dtype, shape: tuple[int, ...] = ()) -> dict[bytes, bytes]:
    """The Arrow field metadata recording a column's numpy dtype and shape."""
    return {META_KEY: json.dumps({"dtype": base.newbyteorder("=").str if base.kind not in "SUb"
                                  else base.str, "shape": list(shape)}).encode()}


def column_to_arrow(col: np.ndarray) -> tuple[pa.Array, dict[bytes, bytes]]:
    """One numpy column (possibly with a sub-array shape) -> Arrow array + field metadata."""
    base = col.dtype.base if col.ndim > 1 else col.dtype
    shape = col.shape[1:]
    meta = field_metadata(base, shape)
    if base.kind == "S":
        flat = col.reshape(-1) if shape else col
        arr = fixed_bytes_to_arrow(flat)
    elif base.kind == "U":
        flat = col.reshape(-1) if shape else col
        arr = pa.array(np.char.rstrip(flat), type=pa.string())
    elif base.kind in "iuf":
        arr = numeric_to_arrow(col)
    else:
        arr = pa.array(_native(col).reshape(-1) if shape else _native(col))
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
        if dt.kind == "S" and (pa.types.is_string(values.type) or pa.types.is_binary(values.type)
                               or pa.types.is_large_string(values.type)
                               or pa.types.is_large_binary(values.type)):
            v = arrow_to_fixed_bytes(values, dt.itemsize)
            dt = v.dtype
        elif dt.kind in "SU":
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
