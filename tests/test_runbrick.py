"""lite runbrick against truth on small simulated bricks (perfect calibrations)."""

from __future__ import annotations

import dataclasses
import glob

import fitsio
import numpy as np
import pytest
from runbrick_sim import simulate_brick
from scipy.spatial import cKDTree

from lsdask.config import RunbrickOptions
from lsdask.processors import BrickMemoryError
from lsdask.processors.lite.brickio import DEPTH_EDGES
from lsdask.processors.lite.runbrick import (
    brick_wcs,
    run_runbrick,
    runbrick_done,
    select_ccds,
    unique_pixels,
)
from lsdask.survey.bricks import brick_grid
from lsdask.survey.layout import ReleaseLayout
from lsdask.survey.tractor import TRACTOR_DTYPE

BRICK = "1804p325"
EAST = "1807p325"  # the next brick in RA, same row
WIDTH = 600


def _match(cat, truth, radius=1.0):
    """Index into truth of each catalogue row's nearest truth source and the distance (")."""
    cosd = np.cos(np.deg2rad(np.median(truth["dec"])))
    tree = cKDTree(np.c_[truth["ra"] * cosd, truth["dec"]] * 3600)
    d, i = tree.query(np.c_[cat["ra"] * cosd, cat["dec"]] * 3600)
    return i, d


def _isolated(truth, radius=6.0):
    cosd = np.cos(np.deg2rad(np.median(truth["dec"])))
    xy = np.c_[truth["ra"] * cosd, truth["dec"]] * 3600
    tree = cKDTree(xy)
    return np.array([len(tree.query_ball_point(p, radius)) == 1 for p in xy])


@pytest.fixture(scope="session")
def sim_brick(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb")
    layout, ccds = simulate_brick(root / "survey", BRICK, WIDTH, star_density=100000.0,
                                  galaxy_density=3000.0, seed=11)
    # a CCD with ccd_cuts != 0 and one in an unrequested band must be ignored
    extra = ccds[:2].copy()
    extra["ccd_cuts"][0] = 0x4000
    extra["filter"][1] = "i"
    ccds = np.concatenate([ccds, extra])
    rel = ReleaseLayout(layout.survey_dir, root / "release")
    opts = RunbrickOptions(width=WIDTH, height=WIDTH, threads=2)
    res = run_runbrick(rel, BRICK, ccds, ["g", "r", "z"], opts, release=9010, config_hash="cafe")
    truth = fitsio.read(str(layout.truth), ext="TRUTH")
    return rel, ccds, opts, res, truth


def test_products_and_layout(sim_brick):
    layout, ccds, opts, res, truth = sim_brick
    assert runbrick_done(layout, BRICK)
    w = brick_wcs(brick_grid().brick(BRICK), opts)
    # the cut CCD and the i-band CCD (the two last rows) are left out
    assert res["nccds"] == len(select_ccds(ccds[:-2], w, "grz")) > 4
    for b in "grz":
        for kind in ("image", "invvar", "nexp", "depth", "galdepth", "psfsize", "model",
                     "chi2"):
            assert layout.coadd(BRICK, kind, b).is_file()
    for kind in ("maskbits.fits.fz", "ccds.fits", "depth.fits", "image.jpg"):
        assert layout.coadd(BRICK, kind).is_file()
    assert layout.blobs(BRICK).is_file()
    assert not layout.checkpoint(BRICK).exists()  # removed after success
    # sha256sum lists every product, with correct digests
    from lsdask.atomic import sha256_file

    lines = layout.sha256sum(BRICK).read_text().splitlines()
    listed = {ln.split("  ", 1)[1]: ln.split("  ", 1)[0] for ln in lines}
    assert f"tractor/{BRICK[:3]}/tractor-{BRICK}.fits" in listed
    assert len(listed) == 3 * 8 + 4 + 1 + 1
    for rel, digest in listed.items():
        assert sha256_file(layout.release_dir / rel) == digest
    # no temporary files left behind
    assert not glob.glob(str(layout.release_dir / "**" / ".*tmp-*"), recursive=True)
    ccdtab = fitsio.read(str(layout.coadd(BRICK, "ccds.fits")))
    assert len(ccdtab) == res["nccds"] and "ccd_x0" in ccdtab.dtype.names


def test_tractor_datamodel(sim_brick):
    from astropy.table import Table

    layout, ccds, opts, res, truth = sim_brick
    path = layout.tractor(BRICK)
    data = fitsio.read(str(path))
    assert list(data.dtype.names) == list(TRACTOR_DTYPE.names)
    for n in TRACTOR_DTYPE.names:
        want, got = TRACTOR_DTYPE[n], data.dtype[n]
        assert got.shape == want.shape, n
        if want.base.kind == "S":  # fitsio returns text as unicode
            assert got.base.kind in "SU", n
        else:
            assert got.base.kind == want.base.kind, n
            assert got.base.itemsize == want.base.itemsize, n
    t = Table.read(path)
    assert len(t) == len(data) == res["nsources"] > 100
    assert list(data["objid"]) == list(range(len(data)))
    assert (data["brickid"] == brick_grid().brick(BRICK).brickid).all()
    assert set(np.char.strip(data["type"].astype("U"))) <= {"PSF", "REX", "EXP", "DEV"}
    assert (data["ebv"] == 0).all() and (data["mw_transmission_g"] == 1).all()
    assert (data["flux_w1"] == 0).all() and (data["nobs_w1"] == 0).all()
    hdr = fitsio.read_header(str(path), 0)
    b = brick_grid().brick(BRICK)
    assert hdr["BRICKNAM"] == BRICK and hdr["BRICKID"] == b.brickid
    assert hdr["RAMIN"] == pytest.approx(b.ra1) and hdr["DECMAX"] == pytest.approx(b.dec2)
    assert hdr["EBVMAP"] == "none" and hdr["CONFHASH"] == "cafe"
    assert hdr["DEPNAM00"] == "lsdask" and "DEPVER00" in hdr


def test_dr8_sample_shares_columns(sim_brick, shared_data):
    layout, *_ = sim_brick
    ours = {n.lower() for n in fitsio.FITS(str(layout.tractor(BRICK)))[1].get_colnames()}
    files = sorted(glob.glob(str(shared_data / "desitarget-samples" / "tractor-*.fits")))
    assert files
    for f in files:
        theirs = {n.lower() for n in fitsio.FITS(f)[1].get_colnames()}
        # DR8 -> DR9 renamed the galaxy shape columns and dropped photsys; all else is shared
        dr8_only = {c for c in theirs - ours
                    if not c.startswith(("shapedev", "shapeexp", "fracdev"))}
        assert dr8_only <= {"photsys"}, dr8_only
        assert len(theirs & ours) >= 80


def test_truth_point_sources(sim_brick):
    """Isolated point sources with S/N > 50: flux bias, error calibration, positions."""
    layout, ccds, opts, res, truth = sim_brick
    cat = fitsio.read(str(layout.tractor(BRICK)))
    iso = _isolated(truth, 4.0)
    i, d = _match(cat, truth)
    ok = (d < 1.0) & (np.char.strip(truth["type"][i].astype("U")) == "PSF") & iso[i]
    ok &= cat["fracmasked_r"] < 0.05
    chis = []
    for b in "grz":
        f, iv, tf = cat[f"flux_{b}"], cat[f"flux_ivar_{b}"], truth[f"flux_{b}"][i]
        sel = ok & (tf * np.sqrt(iv) > 50) & (cat[f"anymask_{b}"] == 0)
        assert sel.sum() >= 30, b
        bias = np.median(f[sel] / tf[sel] - 1)
        assert abs(bias) < 0.02, (b, bias)
        chis.append((f[sel] - tf[sel]) * np.sqrt(iv[sel]))
    # error calibration pooled over bands (~200 stars; one band alone has a +-0.15 scatter)
    chi = np.concatenate(chis)
    rstd = 1.4826 * np.median(np.abs(chi - np.median(chi)))
    assert 0.8 <= rstd <= 1.3, rstd
    sel = ok & (truth["flux_r"][i] * np.sqrt(cat["flux_ivar_r"]) > 50)
    cosd = np.cos(np.deg2rad(cat["dec"][sel]))
    dra = (cat["ra"][sel] - truth["ra"][i][sel]) * cosd * 3600
    ddec = (cat["dec"][sel] - truth["dec"][i][sel]) * 3600
    assert np.sqrt(np.mean(dra ** 2 + ddec ** 2)) < 0.05


def test_completeness(sim_brick):
    """> 95 % of isolated point sources with S/N > 10 (from the depth maps) are detected."""
    layout, ccds, opts, res, truth = sim_brick
    cat = fitsio.read(str(layout.tractor(BRICK)))
    w = brick_wcs(brick_grid().brick(BRICK), opts)
    x, y = w.radec_to_pixel(truth["ra"], truth["dec"])
    ix, iy = np.rint(x - 1).astype(int), np.rint(y - 1).astype(int)
    inside = (ix >= 10) & (iy >= 10) & (ix < w.width - 10) & (iy < w.height - 10)
    snr2 = np.zeros(len(truth))
    for b in "grz":
        depth = fitsio.read(str(layout.coadd(BRICK, "depth", b)))
        snr2[inside] += truth[f"flux_{b}"][inside] ** 2 * depth[iy[inside], ix[inside]]
    want = inside & (np.sqrt(snr2) > 10) & _isolated(truth, 4.0) & (
        np.char.strip(truth["type"].astype("U")) == "PSF")
    assert want.sum() >= 50
    cosd = np.cos(np.deg2rad(np.median(cat["dec"])))
    tree = cKDTree(np.c_[cat["ra"] * cosd, cat["dec"]] * 3600)
    d, _ = tree.query(np.c_[truth["ra"][want] * cosd, truth["dec"][want]] * 3600)
    if np.mean(d < 1.0) <= 0.95:  # diagnostics
        miss = np.flatnonzero(want)[d >= 1.0]
        print("missed", truth[miss], np.sqrt(snr2[miss]), ix[miss], iy[miss])
    assert np.mean(d < 1.0) > 0.95


def test_depth_histogram(sim_brick):
    layout, ccds, opts, res, truth = sim_brick
    t = fitsio.read(str(layout.coadd(BRICK, "depth.fits")))
    assert len(t) == 50
    np.testing.assert_allclose(t["depthlo"][1:], DEPTH_EDGES[1:-1], atol=1e-5)
    assert t["depthlo"][0] == 0 and t["depthhi"][-1] == 100
    uniq = unique_pixels(brick_grid().brick(BRICK), brick_wcs(brick_grid().brick(BRICK), opts))
    for b in "grz":
        depth = fitsio.read(str(layout.coadd(BRICK, "depth", b)))
        ncov = int(((depth > 0) & uniq).sum())
        assert ncov > 0
        assert t[f"counts_ptsrc_{b}"].sum() == ncov
        assert t[f"counts_gal_{b}"].sum() == ncov
        assert t[f"counts_ptsrc_{b}"].dtype == np.dtype(">i4")


def test_ccd_selection_and_memory_limit(sim_brick, tmp_path):
    layout, ccds, opts, res, truth = sim_brick
    w = brick_wcs(brick_grid().brick(BRICK), opts)
    sel = select_ccds(ccds, w, ["g", "r", "z"])
    assert len(sel) == res["nccds"] and (sel["ccd_cuts"] == 0).all()
    assert set(sel["filter"]) <= set("grz")
    assert len(select_ccds(ccds, w, ["r"])) < len(sel)
    small = RunbrickOptions(width=WIDTH, height=WIDTH, memory_limit_gb=0.05)
    other = ReleaseLayout(layout.survey_dir, tmp_path)
    with pytest.raises(BrickMemoryError, match="exceeds"):
        run_runbrick(other, BRICK, ccds, ["g", "r", "z"], small)
    assert not other.tractor(BRICK).exists()


@pytest.fixture(scope="session")
def noise_brick(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    layout, ccds = simulate_brick(root / "survey", BRICK, 400, star_density=0.0,
                                  galaxy_density=0.0, seed=5, passes=1)
    rel = ReleaseLayout(layout.survey_dir, root / "release")
    opts = RunbrickOptions(width=400, height=400)
    res = run_runbrick(rel, BRICK, ccds, ["g", "r", "z"], opts)
    return rel, res


def test_pure_noise_no_false_detections(noise_brick, sim_brick):
    rel, res = noise_brick
    cat = fitsio.read(str(rel.tractor(BRICK))) if res["nsources"] else np.zeros(0)
    # a brick with sources has ~200 detections on this area; noise must give (almost) none
    assert len(cat) <= 0.01 * sim_brick[3]["nsources"]


def test_neighbouring_bricks_primary_disjoint(tmp_path_factory):
    """Sources in the overlap of two bricks' pixel grids are primary in exactly one."""
    root = tmp_path_factory.mktemp("pair")
    g = brick_grid()
    a, b = g.brick(BRICK), g.brick(EAST)
    from runbrick_sim import perfect_calibs

    from lsdask.simulate import SimConfig, simulate_survey

    cosd = np.cos(np.deg2rad(a.dec))
    simulate_survey(root / "survey", SimConfig(
        ramin=a.ra2 - 0.025 / cosd, ramax=a.ra2 + 0.025 / cosd, decmin=a.dec - 0.02,
        decmax=a.dec + 0.02, star_density=60000.0, galaxy_density=0.0, seed=3))
    ccds = perfect_calibs(ReleaseLayout(root / "survey"))
    rel = ReleaseLayout(root / "survey", root / "release")
    opts = RunbrickOptions(width=1000, height=1000, pixscale=1.0)  # whole brick + overlap
    cats = {}
    for br in (a, b):
        run_runbrick(rel, br.brickname, ccds, ["g", "r", "z"], opts)
        cats[br.brickname] = fitsio.read(str(rel.tractor(br.brickname)))
    ca, cb = cats[BRICK], cats[EAST]
    tree = cKDTree(np.c_[cb["ra"] * cosd, cb["dec"]] * 3600)
    d, j = tree.query(np.c_[ca["ra"] * cosd, ca["dec"]] * 3600)
    both = d < 1.0
    assert both.sum() >= 10  # the overlap strip holds sources seen by both bricks
    assert not np.any(ca["brick_primary"][both] & cb["brick_primary"][j[both]])
    assert np.all(ca["brick_primary"][both] | cb["brick_primary"][j[both]])
    assert (ca["brick_primary"] == a.contains(ca["ra"], ca["dec"])).all()


def test_sigkill_resume_and_cli(sim_brick, tmp_path):
    """A brick SIGKILLed after its coadds checkpoint resumes from it (via the CLI, in a child
    process) and gives the same catalogue as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    from lsdask.survey.ccds import write_ccds

    layout, ccds, opts, res, truth = sim_brick
    ccdfile = write_ccds(ccds, tmp_path / "survey-ccds-test.fits")
    out = tmp_path / "release"
    cmd = [sys.executable, "-m", "lsdask", "runbrick", "--brick", BRICK, "--survey-dir",
           str(layout.survey_dir), "--outdir", str(out), "--ccds", str(ccdfile),
           "--width", str(WIDTH), "--threads", "1"]
    env = dict(os.environ, LSDASK_RUNBRICK_TEST_KILL_AFTER="coadds")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    new = ReleaseLayout(layout.survey_dir, out)
    assert new.checkpoint(BRICK).is_file()
    assert not new.tractor(BRICK).exists() and not runbrick_done(new, BRICK)
    env.pop("LSDASK_RUNBRICK_TEST_KILL_AFTER")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    import json

    summary = json.loads(p.stdout)
    assert summary["resumed_from"] == "coadds" and summary["threads"] == 1
    assert runbrick_done(new, BRICK) and not new.checkpoint(BRICK).exists()
    a = fitsio.read(str(layout.tractor(BRICK)))  # uninterrupted run, 2 threads
    b = fitsio.read(str(new.tractor(BRICK)))
    assert a.dtype == b.dtype and len(a) == len(b)
    for n in a.dtype.names:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    # a done brick is skipped at once
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout) == {"brick": BRICK, "skipped": True}


def test_missing_calib_is_input_error_and_bad_checkpoint_ignored(sim_brick, tmp_path):
    from lsdask.errors import InputError
    from lsdask.processors.lite import checkpoint

    layout, ccds, opts, res, truth = sim_brick
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "images").symlink_to(layout.survey_dir / "images")  # images but no calibs
    # told not to fit missing calibrations (legacypipe's --skip-calibs): an error naming them
    # (without it they are fitted on the fly: tests/test_lite_vs_legacypipe.py)
    with pytest.raises(InputError, match="psfex calibration missing"):
        run_runbrick(ReleaseLayout(bare, tmp_path / "out"), BRICK, ccds, "grz",
                     dataclasses.replace(opts, skip_calibs=True))
    assert not (bare / "calib").exists()
    # a corrupt checkpoint is ignored (the brick is recomputed), not fatal
    rel = ReleaseLayout(layout.survey_dir, tmp_path / "rel")
    rel.checkpoint(BRICK).parent.mkdir(parents=True)
    rel.checkpoint(BRICK).write_bytes(b"not a pickle")
    assert checkpoint.load(rel.checkpoint(BRICK), "x") is None
    small = RunbrickOptions(width=200, height=200, keep_checkpoints=True)
    out = run_runbrick(rel, BRICK, ccds, "grz", small)
    assert out["resumed_from"] is None and rel.checkpoint(BRICK).is_file()
    assert runbrick_done(rel, BRICK)
    # keep_checkpoints: a rerun resumes from the kept checkpoint
    again = run_runbrick(rel, BRICK, ccds, "grz", small)
    assert again["resumed_from"] == "coadds"
