"""Tractor -> Parquet: exact round trip, partitioning, header metadata, incremental reruns."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lsdask.graphs.parquet import (
    MANIFEST,
    convert_brick,
    load_manifest,
    partition_files,
    read_tractor_parquet,
    run_parquet,
    tractor_checksum,
)
from lsdask.survey.arrowfits import arrow_to_numpy
from lsdask.survey.sweeps import box_of
from lsdask.survey.tractor import TRACTOR_DTYPE, read_tractor
from lsdask.testing.tractor_gen import generate_release, write_brick


@pytest.fixture
def release(tmp_release):
    # 4 bricks around RA 180, Dec 35: rows fall in 4 sweep boxes
    names = generate_release(tmp_release, 4, 300, seed=1, center=(180.0, 35.0))
    return tmp_release, names


def _all_rows(layout, brick):
    parts = [arrow_to_numpy(pq.read_table(f)) for fs in partition_files(layout).values()
             for f in fs if f.stem == brick]
    rows = np.concatenate(parts)
    return rows[np.argsort(rows["objid"])]


def test_round_trip_exact(release):
    layout, names = release
    s = run_parquet(layout)
    assert s["converted"] == 4 and s["rows"] == 1200 and not s["failed"]
    boxes = partition_files(layout)
    assert len(boxes) >= 2  # several partitions
    for name in names:
        back = _all_rows(layout, name)
        orig = read_tractor(layout.tractor(name))
        assert back.dtype == TRACTOR_DTYPE
        assert np.array_equal(back, orig)
    for box, files in boxes.items():
        for f in files:
            assert f.parent.name == f"box={box}"
            t = pq.read_table(f)
            assert set(box_of(t.column("ra").to_numpy(), t.column("dec").to_numpy())) == {box}
            md = t.schema.metadata
            assert md[b"BRICKNAM"].decode() == f.stem and b"DEPNAM00" in md
            assert t.schema.field("apflux_g").type.list_size == 8
    df = read_tractor_parquet(layout, columns=["ra", "objid"])
    assert len(df) == 1200


def test_incremental_and_atomic(release):
    layout, names = release
    run_parquet(layout)
    again = run_parquet(layout)
    assert again["converted"] == 0 and again["skipped"] == 4
    # one brick changes: only it is converted, and its old files are replaced
    write_brick(layout, names[0], 200, seed=9)
    s = run_parquet(layout)
    assert s["converted"] == 1 and s["skipped"] == 3 and s["rows"] == 200
    assert np.array_equal(_all_rows(layout, names[0]), read_tractor(layout.tractor(names[0])))
    # a brick disappears: its files go
    layout.tractor(names[1]).unlink()
    s = run_parquet(layout)
    assert s["removed"] == 1
    assert not any(f.stem == names[1] for fs in partition_files(layout).values() for f in fs)
    assert not list(layout.tractor_parquet.rglob(f"{names[1]}.parquet"))
    # a killed run: files of a brick written but the manifest not updated -> reconverted
    write_brick(layout, names[2], 100, seed=5)
    convert_brick(layout, names[2], tractor_checksum(layout, names[2]))
    assert load_manifest(layout)["bricks"][names[2]]["nrows"] == 300
    # a stray temporary (hidden) file is never part of the dataset
    stray = next(layout.tractor_parquet.glob("box=*")) / ".x.tmp-123.parquet"
    stray.write_bytes(b"half written")
    s = run_parquet(layout)
    assert s["converted"] == 1 and s["rows"] == 100
    assert len(read_tractor_parquet(layout, columns=["ra"])) == 200 + 100 + 300
    man = json.loads((layout.tractor_parquet / MANIFEST).read_text())
    assert set(man["bricks"]) == {names[0], names[2], names[3]}


def test_unreadable_brick_reported(release):
    layout, names = release
    layout.tractor(names[0]).write_bytes(b"garbage" * 100)
    s = run_parquet(layout)
    assert names[0] in s["failed"] and names[0] in s["failed"][names[0]]
    assert s["converted"] == 3
