"""lite runbrick on real legacypipe test cases (real CP cutouts of DECam, Mosaic-3 and 90Prime,
PsfEx and spline-sky calibs in their layouts, or none: then lite fits them on the fly)."""

from __future__ import annotations

import glob
import shutil

import fitsio
import numpy as np
import pytest
from scipy import ndimage

from lsdask.config import RunbrickOptions
from lsdask.processors.lite.ccdimage import ccd_wcs
from lsdask.processors.lite.runbrick import brick_wcs, run_runbrick, runbrick_done
from lsdask.survey.bricks import brick_grid
from lsdask.survey.ccds import read_ccds
from lsdask.survey.layout import ReleaseLayout
from lsdask.survey.tractor import TRACTOR_DTYPE, validate_tractor
from lsdask.survey.wcs import angular_separation

CASES = {"testcase3": "2447p120", "testcase8": "1209p050", "testcase4": "1867p255",
         "mzlsbass2": "1773p595", "mzlsbass3": "2173p350"}


def zoom_for(ccds: np.ndarray, brick: str, margin: int = 5) -> list[int]:
    """The brick sub-grid covering the CCDs (test cutouts are tiny)."""
    w = brick_grid().brick(brick).wcs()
    xs, ys = [], []
    for c in ccds:
        x, y = w.radec_to_pixel(*ccd_wcs(c).corners())
        xs += list(x)
        ys += list(y)
    return [max(0, int(min(xs)) - margin), min(3600, int(max(xs)) + margin),
            max(0, int(min(ys)) - margin), min(3600, int(max(ys)) + margin)]


def read_gaia(folder) -> np.ndarray:
    parts = []
    for f in sorted(glob.glob(str(folder / "gaia" / "*.fits"))):
        try:
            parts.append(fitsio.read(f, columns=["ra", "dec", "phot_g_mean_mag"]))
        except OSError:  # empty chunk
            continue
    return (np.concatenate(parts) if parts
            else np.zeros(0, [("ra", "f8"), ("dec", "f8"), ("phot_g_mean_mag", "f4")]))


@pytest.fixture(scope="module", params=sorted(CASES))
def real_case(request, shared_data, tmp_path_factory):
    name = request.param
    folder = shared_data / "legacypipe-test" / name
    if not folder.is_dir():
        pytest.skip(f"real test case folder {folder} is absent")
    brick = CASES[name]
    ccds = read_ccds(glob.glob(str(folder / "survey-ccds-1.*"))[0])
    out = tmp_path_factory.mktemp(name)
    shutil.copytree(folder, out / "survey")  # lite writes calibrations a case lacks
    layout = ReleaseLayout(out / "survey", out)
    opts = RunbrickOptions(zoom=zoom_for(ccds, brick), threads=2)
    res = run_runbrick(layout, brick, ccds, ["g", "r", "z"], opts, release=9010,
                       config_hash="abc")
    return name, folder, brick, layout, opts, res


def test_real_catalogue_valid(real_case):
    name, folder, brick, layout, opts, res = real_case
    path = layout.tractor(brick)
    assert str(path).startswith(str(layout.release_dir))
    assert validate_tractor(path) == res["nsources"] > 0
    cat = fitsio.read(str(path))
    assert [n.lower() for n in cat.dtype.names] == list(TRACTOR_DTYPE.names)
    assert (cat["release"] == 9010).all() and (cat["brickname"] == brick).all()
    assert runbrick_done(layout, brick)
    hdr = fitsio.read_header(str(path), 0)
    assert hdr["BRICKNAM"] == brick and hdr["CONFHASH"] == "abc"
    # every source is measured in a band that has data
    fluxiv = sum(cat[f"flux_ivar_{b}"] for b in "grz")
    assert (fluxiv > 0).all()


def test_real_bright_sources_match_gaia(real_case):
    """Unsaturated Gaia stars on the covered pixels are detected within 0.5"; bright detections
    near a Gaia star coincide with it within 0.5"."""
    name, folder, brick, layout, opts, res = real_case
    cat = fitsio.read(str(layout.tractor(brick)))
    gaia = read_gaia(folder)
    if not len(gaia):  # mzlsbass3 predates the Gaia chunks: no reference sources made up
        assert not np.any(np.char.strip(cat["ref_cat"].astype("U")) == "G2")
        return
    w = brick_wcs(brick_grid().brick(brick), opts)
    cov = None
    for b in "grz":
        p = layout.coadd(brick, "invvar", b)
        if p.exists():
            c = fitsio.read(str(p)) > 0
            cov = c if cov is None else cov | c
    cov = ndimage.binary_erosion(cov, iterations=6)
    gx, gy = w.radec_to_pixel(gaia["ra"], gaia["dec"])
    ix, iy = np.rint(gx - 1).astype(int), np.rint(gy - 1).astype(int)
    on = (ix >= 0) & (iy >= 0) & (ix < w.width) & (iy < w.height)
    on[on] &= cov[iy[on], ix[on]]
    stars = gaia[on & (gaia["phot_g_mean_mag"] > 16) & (gaia["phot_g_mean_mag"] < 19.5)]
    for s in stars:
        d = angular_separation(s["ra"], s["dec"], cat["ra"], cat["dec"]) * 3600
        assert d.min() < 0.5, f"{name}: Gaia G={s['phot_g_mean_mag']:.2f} star unmatched"
    snr = np.sqrt(sum(cat[f"flux_{b}"] ** 2 * cat[f"flux_ivar_{b}"] for b in "grz"))
    bright = cat[snr > 50]
    nmatch = 0
    for c in bright:
        d = angular_separation(c["ra"], c["dec"], gaia["ra"], gaia["dec"]) * 3600
        if d.min() < 2.0:
            assert d.min() < 0.5
            nmatch += 1
    if name == "testcase8":
        assert len(stars) >= 3 and nmatch >= 3  # the case has unsaturated Gaia stars
