"""The brick grid against desiutil's reference implementation and FORMATS.md."""

import fitsio
import numpy as np
import pytest

from lsdask.survey.bricks import BrickGrid, brick_grid, radec_in_box

desiutil_brick = pytest.importorskip("desiutil.brick")


@pytest.fixture(scope="module")
def reference():
    b = desiutil_brick.Bricks(0.25)
    return b, b.to_table()


def test_grid_identical_to_desiutil(reference):
    _, ref = reference
    t = brick_grid().table
    assert len(t) == len(ref) == 662174
    assert np.array_equal(np.asarray(ref["BRICKNAME"]).astype("U8"), t["brickname"])
    for col in ("BRICKID", "BRICKQ", "BRICKROW", "BRICKCOL", "DEC1", "DEC2", "DEC"):
        assert np.array_equal(np.asarray(ref[col]), t[col.lower()]), col
    for col in ("RA", "RA1", "RA2"):
        assert np.max(np.abs(np.asarray(ref[col]) - t[col.lower()])) < 1e-9, col


def test_lookup_agrees_with_desiutil(reference):
    bricks, _ = reference
    rng = np.random.default_rng(42)
    n = 1_000_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    t = brick_grid().table
    pick = rng.integers(0, len(t), 2000)
    special_ra = np.concatenate([[0.0, 360.0, 0.0, 360.0, 180.0, 359.9999999, 0.0, 0.0],
                                 t["ra1"][pick], t["ra"][pick], t["ra1"][pick]])
    special_dec = np.concatenate([[90.0, -90.0, 0.0, 0.0, 89.99, -89.99, 89.875, -89.875],
                                  t["dec"][pick], t["dec1"][pick], t["dec2"][pick]])
    ra[: len(special_ra)] = special_ra
    dec[: len(special_dec)] = special_dec
    g = brick_grid()
    assert np.array_equal(g.brickname(ra, dec), bricks.brickname(ra, dec))
    assert np.array_equal(g.brickid(ra, dec), bricks.brickid(ra, dec))


def test_formats_examples_and_poles():
    g = brick_grid()
    assert g.brickname(0.125, 0.0)[0] == "0001p000"
    assert g.brickname(36.4256, -4.25)[0] == "0364m042"
    south, north = g.brick(1), g.brick(662174)
    assert (south.name, north.name) == ("1800m900", "1800p900")
    assert south.ra == north.ra == 180.0 and south.ra1 == 0.0 and south.ra2 == 360.0
    assert g.brick("1800p900").brickid == 662174
    # every RA at the pole is in the single polar brick
    assert set(g.brickname(np.linspace(0, 359.9, 50), 90.0)) == {"1800p900"}
    with pytest.raises(KeyError, match="no brick named"):
        g.brick("9999x999")
    with pytest.raises(KeyError):
        g.brick(0)


def test_brick_contains_points_of_its_lookup():
    g = brick_grid()
    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, 5000), rng.uniform(-89, 89, 5000)
    idx = g.index(ra, dec)
    for i in rng.choice(len(ra), 200, replace=False):
        assert g.row(int(idx[i])).contains(ra[i], dec[i])


def test_in_box_wraps_ra():
    g = brick_grid()
    t = g.table
    idx = g.in_box(350, 10, -1, 1)
    ras = t["ra"][idx]
    assert len(idx) > 0
    assert np.all((ras >= 350) | (ras <= 10))
    assert np.any(ras > 350) and np.any(ras < 10)
    # the complement in RA at the same Dec is excluded
    assert not radec_in_box(180.0, 0.0, 350, 10, -1, 1)
    # same count as the two halves
    assert len(idx) == len(g.in_box(350, 360, -1, 1)) + len(g.in_box(0, 10, -1, 1))


def test_polar_box_and_wcs():
    g = brick_grid()
    idx = g.in_box(0, 360, 89.5, 90)
    assert "1800p900" in set(g.table["brickname"][idx])
    b = g.brick(str(g.brickname(180.2, 32.5)[0]))
    w = b.wcs()
    assert (w.width, w.height) == (3600, 3600)
    assert abs(w.pixscale - 0.262) < 1e-9
    ra, dec = w.pixel_to_radec(1800.5, 1800.5)
    assert abs(ra - b.ra) < 1e-10 and abs(dec - b.dec) < 1e-10
    # the pixel grid spans a little more than the brick
    cra, cdec = w.corners()
    assert cdec.min() < b.dec1 and cdec.max() > b.dec2


def test_survey_bricks_file(tmp_path):
    path = tmp_path / "survey-bricks.fits.gz"
    brick_grid().write(path)
    data = fitsio.read(str(path), ext=1)
    assert len(data) == 662174
    assert data.dtype.names == ("BRICKNAME", "BRICKID", "BRICKQ", "BRICKROW", "BRICKCOL",
                                "RA", "DEC", "RA1", "RA2", "DEC1", "DEC2")
    assert data.dtype["BRICKQ"].itemsize == 2 and data.dtype["BRICKID"].itemsize == 4
    assert data["BRICKNAME"][0].strip() == "1800m900"
    assert not list(tmp_path.glob(".*tmp*"))


def test_grid_is_cached_and_rebuildable():
    assert brick_grid() is brick_grid()
    assert len(BrickGrid(0.5)) < len(brick_grid())
