"""The single tractor pass (Parquet partition + sweep shares, then box assembly) against the
two-pass path it replaced: same bytes in every product, and incremental reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import fitsio
import numpy as np
import pytest

from lsdask.graphs.parquet import load_manifest, run_parquet
from lsdask.graphs.sweeps import run_sweeps, share_files
from lsdask.graphs.tractorpass import share_rows_from_columns, share_rows_from_raw
from lsdask.survey.layout import ReleaseLayout
from lsdask.survey.tractor import read_table_raw, table_layout
from lsdask.testing.sweeps_before import run_before
from lsdask.testing.tractor_gen import generate_release, patch_bricks, write_brick

PRODUCTS = ("sweep", "parquet/sweeps", "parquet/tractor")


def _products(root: Path) -> dict[str, bytes]:
    """Every sweep FITS, Parquet sweep and tractor Parquet file (not manifests)."""
    out = {}
    for sub in PRODUCTS:
        for f in sorted((root / sub).rglob("*")):
            if f.is_file() and not f.name.startswith(("_", ".")):
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


def _assert_same_products(a: Path, b: Path) -> None:
    pa_, pb = _products(a), _products(b)
    assert sorted(pa_) == sorted(pb)
    differ = [k for k in pa_ if pa_[k] != pb[k]]
    assert not differ, differ


def _roughen(path: Path) -> None:
    """Give a tractor file what a strict writer may hold: text with trailing (and inner)
    blanks, logicals that are neither 'T' nor 'F'."""
    dtype, _, nrows, start = table_layout(path)
    names = {n.lower(): n for n in dtype.names}
    raw = np.memmap(path, dtype=dtype, mode="r+", offset=start, shape=(nrows,))
    raw[names["type"]][::7] = b"P  "
    raw[names["ref_cat"]][1::5] = b"G "
    raw[names["wise_coadd_id"]][::3] = b"1 2\t "
    raw[names["gaia_duplicated_source"]][::4] = 0
    raw.flush()
    del raw


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """A 12-brick patch around RA 0 / Dec 0 (four boxes, RA wrap, Dec sign change), one
    brick roughened; copy ``a`` for the old path, ``b`` for the single pass."""
    root = tmp_path_factory.mktemp("pass")
    a = ReleaseLayout(root / "a", root / "a", name="t")
    names = generate_release(a, patch_bricks(12, 0.0, 0.0), 300, seed=2)
    _roughen(a.tractor(names[5]))
    shutil.copytree(root / "a", root / "b")
    return a, ReleaseLayout(root / "b", root / "b", name="t"), names


def test_single_pass_products_are_byte_identical(releases):
    a, b, names = releases
    rows = run_before(a)
    s = run_sweeps(b)
    assert s["rows"] == rows > 0 and s["boxes"] == 4 and s["parquet"]["converted"] == 12
    assert len(_products(a.release_dir)) == 4 * 3 + 4 + sum(
        len(e["files"]) for e in load_manifest(b)["bricks"].values())
    _assert_same_products(a.release_dir, b.release_dir)
    # the roughened brick's text was cleaned: trailing blanks became NULs, inner kept
    text = []
    for f in sorted(b.sweeps_dir.glob("sweep-*.fits")):
        raw = read_table_raw(f)[0]
        text += [v for n in raw.dtype.names if raw.dtype[n].kind == "S" for v in raw[n]]
    assert b"1 2" in text and b"P" in text and b"G" in text
    assert not any(v.endswith((b" ", b"\t")) for v in text)


def test_column_path_gives_the_raw_path_bytes(releases):
    a, _, names = releases
    path = a.tractor(names[5])
    raw, logical, _, _ = read_table_raw(path)
    sel = np.flatnonzero(np.arange(len(raw)) % 3 != 1)
    want = share_rows_from_raw(raw, sel)
    assert np.array_equal(share_rows_from_columns(raw, logical, sel), want)
    assert np.array_equal(share_rows_from_raw(raw, None)[:0], want[:0])
    # fitsio's decoding (native numbers, bool logicals, blank-stripped text) as well
    data = fitsio.read(str(path), ext=1)
    assert np.array_equal(share_rows_from_columns(data, [], sel), want)


def test_rerun_after_one_brick_changed(releases, tmp_path):
    _, b, names = releases
    run_sweeps(b)  # as the first test left it, or fresh
    before = {p: p.stat().st_mtime_ns for sub in PRODUCTS
              for p in (b.release_dir / sub).rglob("*")
              if p.is_file() and not p.name.startswith("_")}
    again = run_sweeps(b)
    assert again["boxes"] == 0 and again["skipped"] == 4
    assert again["parquet"]["converted"] == 0
    brick = names[0]
    touched = {f.split("/")[0][4:] for f in load_manifest(b)["bricks"][brick]["shares"]}
    assert 0 < len(touched) < 4
    write_brick(b, brick, 250, seed=11)
    s = run_sweeps(b)
    assert s["parquet"]["converted"] == 1 and s["parquet"]["skipped"] == 11
    assert {f[6:21] for f in s["files"]} == touched and s["skipped"] == 4 - len(touched)
    after = {p: p.stat().st_mtime_ns for p in before if p.is_file()}
    redone = {p for p in after if after[p] != before[p]}
    for p in redone:
        assert p.stem.startswith(brick) or any(t in p.name for t in touched), p
    untouched = [p for p in after if p.parent.parent.name == "sweep" and not any(
        t in p.name for t in touched)]
    assert untouched and not redone & set(untouched)
    # and the result is what the old path makes of the changed release
    ref = ReleaseLayout(tmp_path / "ref", tmp_path / "ref", name="t")
    shutil.copytree(b.release_dir / "tractor", ref.release_dir / "tractor")
    run_before(ref)
    _assert_same_products(ref.release_dir, b.release_dir)


def test_release_converted_before_gets_its_shares(tmp_path):
    layout = ReleaseLayout(tmp_path, tmp_path, name="t")
    generate_release(layout, 3, 200, seed=3)
    run_before(layout)  # a manifest without shares
    with pytest.raises(Exception, match="no sweep shares"):
        share_files(layout)
    p = run_parquet(layout)
    assert p["converted"] == 3
    assert sum(len(v) for v in share_files(layout).values()) >= 3


def test_parquet_sweep_row_groups_as_before(releases, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import lsdask.graphs.sweeps as new
    import lsdask.testing.sweeps_before as old

    a, _, _ = releases
    monkeypatch.setattr(new, "ROW_GROUP", 500)
    monkeypatch.setattr(old, "ROW_GROUP", 500)
    layouts = []
    for name in ("old", "new"):
        lay = ReleaseLayout(tmp_path / name, tmp_path / name, name="t")
        shutil.copytree(a.release_dir / "tractor", lay.release_dir / "tractor")
        layouts.append(lay)
    run_before(layouts[0])
    run_sweeps(layouts[1])
    groups = [pq.read_metadata(f).num_row_groups
              for f in sorted(layouts[1].sweeps_parquet.glob("sweep-*.parquet"))]
    assert len(groups) == 4 and max(groups) > 1
    _assert_same_products(layouts[0].release_dir, layouts[1].release_dir)
