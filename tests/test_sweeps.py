"""Sweep boxes (names, membership) and sweep files built from a generated release."""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
import pyarrow.parquet as pq
import pytest

from lsdask.cli import main
from lsdask.graphs.sweeps import read_sweeps, run_sweeps, sweep_files
from lsdask.survey.bricks import brick_grid
from lsdask.survey.sweeps import (
    EX_SWEEP_COLUMNS,
    LC_SWEEP_COLUMNS,
    SWEEP_COLUMNS,
    all_boxes,
    box_name,
    box_of,
    boxes_for_brick,
    in_box,
    parse_box,
    read_sweep,
    sweep_dtype,
)
from lsdask.survey.tractor import TRACTOR_COLUMNS, read_tractor
from lsdask.testing.tractor_gen import generate_release, patch_bricks


def test_sweep_folders_as_the_public_releases(sweeps_release):
    """Main, -lightcurves and -extra files each in its own folder under ``sweep/`` as
    legacypipe's generate-sweep-files.py writes them (``X.X``, ``X.X-lightcurves``,
    ``X.X-extra``; 9.0 for DR9); lsdask's and desitarget's sweep listings give only the main
    files."""
    from desitarget.io import list_sweepfiles

    layout, _, summary = sweeps_release
    root = layout.release_dir / "sweep"
    assert sorted(p.name for p in root.iterdir()) == ["9.0", "9.0-extra", "9.0-lightcurves"]
    main_ = sorted(p.name for p in (root / "9.0").iterdir())
    assert len(main_) == summary["boxes"] == 4
    for kind, folder in (("lc", "9.0-lightcurves"), ("ex", "9.0-extra")):
        assert sorted(p.name for p in (root / folder).iterdir()) == [
            n.replace(".fits", f"-{kind}.fits") for n in main_]
    assert [p.name for p in sweep_files(layout)] == main_
    assert sorted(Path(p).name for p in list_sweepfiles(str(layout.release_dir))) == main_
    # the folder version follows the release number (DR10 -> 10.0)
    from lsdask.config import parse_config

    cfg = parse_config({"release": {"name": "x", "survey_dir": "/s", "release": 10000}})
    assert cfg.layout.sweep("000p000-010p005", "ex") == Path(
        "/s/sweep/10.0-extra/sweep-000p000-010p005-ex.fits")


def test_box_names_parse_back():
    boxes = all_boxes()
    assert len(boxes) == 1296 == len(set(boxes))
    for b in boxes:
        ramin, ramax, decmin, decmax = parse_box(b)
        assert box_name(ramin, ramax, decmin, decmax) == b
        assert ramax - ramin == 10 and decmax - decmin == 5
    assert parse_box("sweep-000m005-010p000.fits") == (0, 10, -5, 0)
    assert parse_box("sweep-350p085-360p090-lc.fits") == (350, 360, 85, 90)
    assert parse_box("150p000-160p005") == (150, 160, 0, 5)
    with pytest.raises(ValueError):
        parse_box("sweep-15p000-160p005.fits")
    assert list(box_of([0.0, 359.999, 155.0, 10.0], [-0.001, 89.9, 0.0, 90.0])) == [
        "000m005-010p000", "350p085-360p090", "150p000-160p005", "010p085-020p090"]
    assert in_box(np.array([150.0, 160.0]), np.array([0.0, 0.0]), "150p000-160p005").tolist() \
        == [True, False]


def test_boxes_for_brick_padding_and_wrap():
    assert boxes_for_brick(150.5, 150.75, 2.0, 2.25) == ["150p000-160p005"]
    # within 0.1 deg of the Dec 0 line: feeds both boxes
    assert boxes_for_brick(150.5, 150.75, 0.05, 0.3) == ["150m005-160p000", "150p000-160p005"]
    # at RA 0: feeds the box across the wrap
    assert set(boxes_for_brick(0.0, 0.25, 1.0, 1.25)) == {"000p000-010p005", "350p000-360p005"}


def test_column_split_matches_real_sweeps(shared_data):
    assert "brick_primary" not in SWEEP_COLUMNS
    assert not any(c.startswith("lc_") for c in SWEEP_COLUMNS)
    assert set(SWEEP_COLUMNS) | set(LC_SWEEP_COLUMNS) | set(EX_SWEEP_COLUMNS) == \
        set(TRACTOR_COLUMNS)
    for f in sorted((shared_data / "desitarget-samples").glob("sweep-*.fits")):
        hdr = fitsio.read_header(str(f), ext=1)
        assert (hdr["RAMIN"], hdr["RAMAX"], hdr["DECMIN"], hdr["DECMAX"]) == parse_box(f.name)
        real = read_sweep(f)
        assert (box_of(real["ra"], real["dec"]) == f.name[6:21]).all()
        # DR8 columns that DR9 kept are in our main sweep, upper-case in the file
        names = fitsio.FITS(str(f))[1].get_colnames()
        assert all(n == n.upper() for n in names)
        kept = [n.lower() for n in names if n.lower() in TRACTOR_COLUMNS]
        assert len(kept) > 60
        assert set(kept) <= set(SWEEP_COLUMNS)


@pytest.fixture(scope="module")
def sweeps_release(tmp_path_factory):
    from lsdask.survey.layout import ReleaseLayout

    root = tmp_path_factory.mktemp("sweeps")
    layout = ReleaseLayout(root, root, name="t")
    # a patch around RA 0 / Dec 0: four boxes, RA wrap, Dec sign change
    names = generate_release(layout, patch_bricks(12, 0.0, 0.0), 300, seed=2)
    summary = run_sweeps(layout)
    return layout, names, summary


def test_sweeps_hold_exactly_the_primary_rows(sweeps_release):
    layout, names, summary = sweeps_release
    truth = np.concatenate([read_tractor(layout.tractor(n)) for n in names])
    prim = truth[truth["brick_primary"]]
    files = sweep_files(layout)
    assert summary["rows"] == len(prim) and len(files) == summary["boxes"] == 4
    got = []
    for f in files:
        box = f.name[6:21]
        ff = fitsio.FITS(str(f))
        assert ff[1].get_extname() == "SWEEP"
        hdr = ff[1].read_header()
        assert (hdr["RAMIN"], hdr["RAMAX"], hdr["DECMIN"], hdr["DECMAX"]) == parse_box(box)
        assert hdr["DEPNAM00"] == "lsdask" and ff[0].read_header()["RAMIN"] == hdr["RAMIN"]
        assert "BRICKNAM" not in hdr
        main_ = ff[1].read()
        assert [c for c in ff[1].get_colnames()] == list(sweep_dtype("").names)
        lc = fitsio.read(str(layout.sweep(box, "lc")), ext="SWEEP")
        ex = fitsio.read(str(layout.sweep(box, "ex")), ext="SWEEP")
        assert lc.dtype.names == sweep_dtype("lc").names and len(lc) == len(main_) == len(ex)
        rows = read_sweep(f)
        assert in_box(rows["ra"], rows["dec"], box).all()
        assert (rows["objid"] == lc["OBJID"]).all() and (rows["brickid"] == ex["BRICKID"]).all()
        got.append((rows, lc, ex))
    allrows = np.concatenate([g[0] for g in got])
    key = allrows["brickid"].astype(np.int64) * 100000 + allrows["objid"]
    tkey = prim["brickid"].astype(np.int64) * 100000 + prim["objid"]
    assert len(np.unique(key)) == len(key)
    assert set(key) == set(tkey)
    # identical values, every column, across the three files
    order = np.argsort(tkey)
    ref = prim[order]
    lc = np.concatenate([g[1] for g in got])[np.argsort(key)]
    ex = np.concatenate([g[2] for g in got])[np.argsort(key)]
    mainrows = allrows[np.argsort(key)]
    for c in SWEEP_COLUMNS:
        assert np.array_equal(mainrows[c], ref[c]), c
    for c in LC_SWEEP_COLUMNS:
        assert np.array_equal(lc[c.upper()], ref[c]), c
    for c in EX_SWEEP_COLUMNS:
        assert np.array_equal(ex[c.upper()], ref[c]), c
    assert ex["BRICK_PRIMARY"].all()
    # the bricks feeding each box follow the padded-bounds rule
    grid = brick_grid()
    for f in files:
        box = f.name[6:21]
        for bid in np.unique(fitsio.read(str(f), columns=["BRICKID"])["BRICKID"]):
            b = grid.brick(int(bid))
            assert box in boxes_for_brick(b.ra1, b.ra2, b.dec1, b.dec2)


def test_parquet_sweeps_and_rerun(sweeps_release):
    layout, names, summary = sweeps_release
    df = read_sweeps(layout, columns=["RA", "DEC", "BRICKID", "OBJID", "FLUX_G"]).compute()
    assert len(df) == summary["rows"]
    f = sweep_files(layout)[0]
    t = pq.read_table(layout.sweeps_parquet / f"{f.stem}.parquet")
    fits_main = fitsio.read(str(f))
    assert t.column_names == list(fits_main.dtype.names)
    np.testing.assert_array_equal(t.column("FLUX_G").to_numpy(), fits_main["FLUX_G"])
    again = run_sweeps(layout)
    assert again["boxes"] == 0 and again["skipped"] == 4


def test_cli_sweeps(tmp_path, capsys):
    root = tmp_path / "rel"
    from lsdask.survey.layout import ReleaseLayout

    layout = ReleaseLayout(root, root, name="cli")
    generate_release(layout, 2, 200, seed=4)
    cfg = tmp_path / "release.toml"
    cfg.write_text(f'[release]\nname = "cli"\nsurvey_dir = "{root}"\n')
    assert main(["sweeps", str(cfg), "--scheduler", "threads"]) == 0
    out = capsys.readouterr().out
    assert '"boxes": 1' in out and layout.sweep("180p030-190p035").is_file()


def test_sweep_header_values_keep_their_type():
    """Brick header values come back from the shares' text as the numbers they were, and
    text that only looks like a number (a config hash) stays text: ``939e353016698065`` as a
    float is inf, which FITS cannot write (a random config hash broke a release's sweeps)."""
    from lsdask.graphs.sweeps import _coerce

    assert _coerce("939e353016698065") == "939e353016698065"
    assert _coerce("12e45") == "12e45" and _coerce("0123") == "0123"
    assert _coerce("180.295566502463") == 180.295566502463 and _coerce("9010") == 9010
    assert _coerce("True") is True and _coerce("DR9") == "DR9"
