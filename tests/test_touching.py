"""The brick list: real test cases, brute force, RA wrap, poles."""

import numpy as np
import pytest

from lsdask.survey.bricks import brick_grid
from lsdask.survey.ccds import read_ccds
from lsdask.survey.regions import Region
from lsdask.survey.touching import bricks_touching_ccds, ccd_brick_pairs, ccd_corners
from lsdask.survey.wcs import angular_separation, tan_pixel_to_radec
from lsdask.testing.ccdgen import random_ccds


def test_each_real_case_touches_its_own_brick(shared_data):
    cases = sorted(p for p in (shared_data / "legacypipe-test").iterdir() if p.is_dir())
    assert len(cases) == 11
    import fitsio

    for case in cases:
        ccds = read_ccds(sorted(case.glob("survey-ccds*")))
        bricks = fitsio.read(str(case / "survey-bricks.fits.gz"), ext=1)
        col = next(n for n in bricks.dtype.names if n.lower() == "brickname")
        own = [str(b).strip() for b in bricks[col]]
        names = bricks_touching_ccds(ccds)
        assert set(own) <= set(names), case.name
        assert all(len(n) == 8 for n in names)


def _sampled_pairs(ccds, n=24):
    """Pairs found by sampling each CCD's pixels densely (a subset of the exact answer)."""
    g = brick_grid()
    t = g.table
    found = set()
    u = np.linspace(0, 1, n)  # fractions along each axis, both edges included
    for i, c in enumerate(ccds):
        x = 0.5 + u[:, None] * c["width"] * np.ones(n)[None, :]
        y = 0.5 + u[None, :] * c["height"] * np.ones(n)[:, None]
        ra, dec = tan_pixel_to_radec(x.ravel(), y.ravel(), *(float(c[k]) for k in (
            "crval1", "crval2", "crpix1", "crpix2", "cd1_1", "cd1_2", "cd2_1", "cd2_2")))
        # a sample point lies on brick b's pixel grid -> must be a pair
        near = np.flatnonzero(angular_separation(t["ra"], t["dec"], c["crval1"], c["crval2"])
                              < 0.6)
        for b in near:
            w = g.row(int(b)).wcs()
            if w.contains(ra, dec).any():
                found.add((i, int(b)))
    return found


@pytest.mark.parametrize("ra_range,dec_range", [((-2, 2), (-3, 3)), ((0, 360), (86, 90)),
                                                ((100, 110), (30, 40))])
def test_pairs_cover_sampled_overlaps(ra_range, dec_range):
    ccds = random_ccds(25, seed=7, ra_range=ra_range, dec_range=dec_range)
    ci, bi = ccd_brick_pairs(ccds)
    exact = set(zip(ci.tolist(), bi.tolist(), strict=True))
    sampled = _sampled_pairs(ccds)
    assert sampled <= exact
    # exact may add only pairs whose overlap is thinner than the sampling step
    assert len(exact - sampled) <= 0.15 * len(exact)
    assert len(exact) >= 2 * len(ccds)


def test_ccd_straddling_ra_zero():
    c = random_ccds(1, seed=1)
    c["crval1"], c["crval2"] = 0.0, 10.0
    c["cd1_1"], c["cd1_2"], c["cd2_1"], c["cd2_2"] = -0.262 / 3600, 0, 0, 0.262 / 3600
    ra, _ = ccd_corners(c)
    assert ra.max() > 359 and ra.min() < 1
    names = bricks_touching_ccds(c)
    ras = brick_grid().table["ra"][[brick_grid().brick(n).brickid - 1 for n in names]]
    assert np.any(ras > 359) and np.any(ras < 1)
    # sorted by RA
    assert list(ras) == sorted(ras)
    # a wrapping region keeps both sides; a region on one side keeps only that side
    both = bricks_touching_ccds(c, region=Region(359, 1, 9, 11))
    east = bricks_touching_ccds(c, region=Region(0, 1, 9, 11))
    assert set(east) < set(both) == set(names)


def test_polar_ccd_touches_the_pole_brick():
    c = random_ccds(1, seed=2)
    c["crval1"], c["crval2"] = 123.0, 89.95
    names = bricks_touching_ccds(c)
    assert "1800p900" in names
    assert len(names) > 3


def test_cuts_bands_and_region_filter():
    ccds = random_ccds(3000, seed=9, ra_range=(170, 190), dec_range=(25, 40))
    region = Region(178, 182, 30, 34)
    base = bricks_touching_ccds(ccds, region=region)
    g = brick_grid()
    for n in base:
        b = g.brick(n)
        assert region.contains(b.ra, b.dec)
    assert bricks_touching_ccds(ccds, region=region, ignore_cuts=True) != [] and set(
        base) <= set(bricks_touching_ccds(ccds, region=region, ignore_cuts=True))
    only_g = bricks_touching_ccds(ccds, region=region, bands=["g"])
    assert set(only_g) < set(base)
    one = random_ccds(1, seed=3)
    one["ccd_cuts"] = 0x10
    assert bricks_touching_ccds(one) == []
