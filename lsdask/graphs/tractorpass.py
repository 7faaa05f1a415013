"""Sweep shares: each brick's rows of each sweep box, cut in the same pass that writes the
brick's Parquet partition (:func:`lsdask.graphs.parquet.convert_brick`), so the sweeps never
read a tractor catalogue (or its Parquet copy) again.

A share is one file per (box, brick) with rows of the brick in that box's partition:
``layout.sweep_share(box, brick)``. Bytes: :data:`MAGIC`, a little-endian uint64 length, a
JSON head (``nrows``, the brick's header keys of at most 8 characters), then the brick's
``brick_primary`` rows inside the box (the sweep rule) as finished FITS rows: all rows of
the main sweep file, then of ``-lc``, then of ``-ex`` (big-endian, logicals 'T'/'F', text
with trailing blanks turned into NULs: what the sweep files hold). A box's sweep files are
then a FITS header plus the shares' rows copied in brick-name order
(:func:`copy_kind_rows`); a share is written even when no row qualifies, since every brick
of the partition takes part in the box's provenance keys.

For DR9-layout FITS rows the share rows are cut straight from the raw bytes (one gather of
the selected rows, then a few contiguous byte-range copies per file kind); any other table
goes column by column (:func:`share_rows_from_columns`).
"""

from __future__ import annotations

import functools
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..survey.arrowfits import _kept, arrow_to_fixed_bytes, fixed_bytes_to_arrow
from ..survey.sweeps import SWEEP_KINDS, parse_box, sweep_columns, sweep_dtype
from ..survey.tractor import tractor_raw_dtype

MAGIC = b"LSDSHR1\n"
_HEAD = struct.Struct("<Q")


@functools.cache
def kind_raw_dtype(kind: str) -> np.dtype:
    """Rows of a sweep file kind as stored in the FITS file: upper-case names, big-endian
    numbers, logicals as ``u1`` 'T'/'F', packed (the layout of :class:`FitsTableWriter`)."""
    dt = sweep_dtype(kind)
    out = []
    for n in dt.names:
        b = dt[n].base
        b = np.dtype("u1") if b.kind == "b" else (b.newbyteorder(">") if b.kind in "iuf" else b)
        out.append((n, b, dt[n].shape) if dt[n].shape else (n, b))
    return np.dtype(out)


@functools.cache
def _kind_plan(kind: str) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int], ...],
                                   tuple[tuple[int, int], ...]]:
    """How a DR9 raw tractor row becomes a row of ``kind``: contiguous byte ranges
    ``(src, dst, size)``, text fields ``(dst, width)``, logical fields ``(dst, size)``."""
    src_dt, dst_dt = tractor_raw_dtype(), kind_raw_dtype(kind)
    runs: list[list[int]] = []
    texts, logicals = [], []
    for c in sweep_columns(kind):
        src = src_dt.fields[c][1]
        dst = dst_dt.fields[c.upper()][1]
        size = src_dt[c].itemsize
        if runs and runs[-1][0] + runs[-1][2] == src and runs[-1][1] + runs[-1][2] == dst:
            runs[-1][2] += size
        else:
            runs.append([src, dst, size])
        base = sweep_dtype(kind)[c.upper()].base
        if base.kind == "S":
            texts.append((dst, size))
        elif base.kind == "b":
            logicals.append((dst, size))
    return tuple(tuple(r) for r in runs), tuple(texts), tuple(logicals)


def _row_bytes() -> tuple[int, ...]:
    return tuple(kind_raw_dtype(k).itemsize for k in SWEEP_KINDS)


def _clean_text(b: np.ndarray) -> None:
    """In place, on a (rows, width) byte block: trailing blanks and NULs -> NULs."""
    w = b.shape[1]
    if not np.any((b == 32) | ((b >= 9) & (b <= 13))):
        return  # only NULs can trail: nothing to change
    keep = _kept(b)
    lens = np.where(keep.any(axis=1), w - np.argmax(keep[:, ::-1], axis=1), 0)
    b[np.arange(w) >= lens[:, None]] = 0


def share_rows_from_raw(raw: np.ndarray, sel: np.ndarray | None) -> np.ndarray:
    """DR9-layout raw FITS rows (:func:`lsdask.survey.tractor.is_tractor_layout`), rows
    ``sel`` (None: all) -> the share's row bytes (main, then -lc, then -ex)."""
    width = raw.dtype.itemsize
    if sel is None:
        sub = raw.view(np.uint8).reshape(len(raw), width)
    else:  # one gather of whole rows as opaque bytes
        sub = np.take(raw.view(np.dtype((np.void, width))), sel).view(np.uint8).reshape(
            len(sel), width)
    n = len(sub)
    sizes = _row_bytes()
    out = np.empty(n * sum(sizes), dtype=np.uint8)
    pos = 0
    for kind, size in zip(SWEEP_KINDS, sizes, strict=True):
        block = out[pos:pos + n * size].reshape(n, size)
        runs, texts, logicals = _kind_plan(kind)
        for src, dst, k in runs:
            block[:, dst:dst + k] = sub[:, src:src + k]
        for dst, k in texts:
            _clean_text(block[:, dst:dst + k])
        for dst, k in logicals:
            v = block[:, dst:dst + k]
            v[...] = np.where(v == ord("T"), np.uint8(ord("T")), np.uint8(ord("F")))
        pos += n * size
    return out


def share_rows_from_columns(data: np.ndarray, logical: list[str],
                            sel: np.ndarray | None) -> np.ndarray:
    """Any tractor-like table (names in any case; raw logicals listed in ``logical`` as
    'T'/'F' bytes, else bool), rows ``sel`` -> the share's row bytes, column by column."""
    lower = {n.lower(): n for n in data.dtype.names}
    parts = []
    for kind in SWEEP_KINDS:
        dt = kind_raw_dtype(kind)
        n = len(data) if sel is None else len(sel)
        buf = np.empty(n, dtype=dt)
        for c in sweep_columns(kind):
            if c not in lower:
                raise InputError(f"no {c!r} column for the sweeps")
            v = data[lower[c]] if sel is None else data[lower[c]][sel]
            name = c.upper()
            if lower[c] in logical:
                v = v == ord("T")
            if v.dtype.kind == "U":
                v = np.char.encode(np.char.rstrip(v), "ascii")
            if dt[name].kind == "S":
                v = arrow_to_fixed_bytes(fixed_bytes_to_arrow(v), dt[name].itemsize)
            if sweep_dtype(kind)[name].base.kind == "b":
                v = np.where(v, np.uint8(ord("T")), np.uint8(ord("F")))
            buf[name] = v
        parts.append(buf.view(np.uint8).reshape(-1))
    return np.concatenate(parts)


def box_selections(ra: np.ndarray, dec: np.ndarray, primary: np.ndarray, keys: np.ndarray,
                   boxes: dict[int, str]) -> dict[str, np.ndarray | None]:
    """Box name -> rows of the partition piece ``keys == k`` that go into the box's sweeps:
    ``brick_primary`` and inside the box (``ramin <= ra < ramax``, ``decmin <= dec <
    decmax``, Dec 90 in the top row); None when every row of the brick qualifies."""
    out: dict[str, np.ndarray | None] = {}
    for k, box in boxes.items():
        ramin, ramax, decmin, decmax = parse_box(box)
        top = dec < decmax if decmax < 90 else dec <= decmax
        mask = (keys == k) & primary & (ra >= ramin) & (ra < ramax) & (dec >= decmin) & top
        nsel = int(np.count_nonzero(mask))
        out[box] = None if nsel == len(mask) else np.flatnonzero(mask)
    return out


def write_share(path: Path, rows: np.ndarray, nrows: int, header: dict[str, str]) -> None:
    """Write one share atomically (see the module docstring)."""
    keys = [k for k in parquet_key_order(tuple(header)) if len(k) <= 8]
    head = json.dumps({"nrows": nrows, "header": {k: header[k] for k in keys}}).encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(MAGIC + _HEAD.pack(len(head)) + head)
        fh.write(memoryview(rows))


@functools.lru_cache(maxsize=64)
def parquet_key_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The order in which a Parquet file written by pyarrow lists schema metadata keys
    (not insertion order; it fixes the order of the sweeps' provenance keys): found once
    per key set by writing a one-row file in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.table({"x": [0]}).replace_schema_metadata({k: "" for k in keys})
    pq.write_table(table, sink)
    md = pq.read_metadata(pa.BufferReader(sink.getvalue())).metadata or {}
    return tuple(k.decode() for k in md if k.decode() in keys)


class Share:
    """An open share: ``nrows``, ``header`` and the file offset of each kind's rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                magic = fh.read(len(MAGIC) + _HEAD.size)
                if magic[:len(MAGIC)] != MAGIC:
                    raise InputError(f"{self.path}: not a sweep share")
                (n,) = _HEAD.unpack(magic[len(MAGIC):])
                head = json.loads(fh.read(n))
        except (OSError, ValueError) as e:
            raise InputError(f"{self.path}: cannot read sweep share: {e}") from e
        self.nrows: int = int(head["nrows"])
        self.header: dict[str, str] = head["header"]
        start = len(MAGIC) + _HEAD.size + n
        self.offsets: dict[str, int] = {}
        for kind, size in zip(SWEEP_KINDS, _row_bytes(), strict=True):
            self.offsets[kind] = start
            start += self.nrows * size
        if self.path.stat().st_size != start:
            raise InputError(f"{self.path}: truncated sweep share")

    def read_rows(self, kind: str, out: np.ndarray | None = None) -> np.ndarray:
        """The share's rows of ``kind`` (raw FITS layout, :func:`kind_raw_dtype`), into
        ``out`` (contiguous, ``nrows`` long) if given."""
        if out is None:
            out = np.empty(self.nrows, dtype=kind_raw_dtype(kind))
        buf = memoryview(out.view(np.uint8))
        with open(self.path, "rb") as fh:
            fh.seek(self.offsets[kind])
            if fh.readinto(buf) != len(buf):
                raise InputError(f"{self.path}: truncated sweep share")
        return out


def copy_kind_rows(share: Share, kind: str, dst: BinaryIO) -> None:
    """Append the share's rows of ``kind`` to the open binary file ``dst`` (at its end),
    copied by the kernel where it can."""
    nbytes = share.nrows * kind_raw_dtype(kind).itemsize
    offset = share.offsets[kind]
    dst.flush()
    out = dst.fileno()
    with open(share.path, "rb") as src:
        fd = src.fileno()
        try:
            while nbytes:
                k = os.copy_file_range(fd, out, nbytes, offset)
                if k == 0:
                    raise InputError(f"{share.path}: truncated sweep share")
                offset += k
                nbytes -= k
        except (AttributeError, OSError):  # no in-kernel copy here: read and write
            while nbytes:
                chunk = os.pread(fd, min(nbytes, 1 << 24), offset)
                if not chunk:
                    raise InputError(f"{share.path}: truncated sweep share") from None
                os.write(out, chunk)
                offset += len(chunk)
                nbytes -= len(chunk)
    dst.seek(0, 2)
