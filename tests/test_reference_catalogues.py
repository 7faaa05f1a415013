"""The simulated survey's reference catalogues are what legacypipe and legacyzpts read: Gaia
chunks with a real chunk's columns, ``tycho2.kd.fits`` as astrometry.net's kd-tree, PS1
calibrators whose magnitudes legacypipe's colour terms turn into the true DECam ones."""

from __future__ import annotations

import json
import sys

import fitsio
import numpy as np
import pytest
from legacypipe_stack import run_direct, stack_prefix

from lsdask.simulate import SimConfig, simulate_survey
from lsdask.survey.layout import ReleaseLayout
from lsdask.survey.startree import write_star_kdtree


@pytest.fixture(scope="module")
def survey(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("refsim") / "survey"
    simulate_survey(d, SimConfig(ramin=180.0, ramax=180.05, decmin=32.0, decmax=32.05,
                                 bands=("g", "r", "z"), star_density=40000.0))
    return ReleaseLayout(d)


def test_gaia_chunks_have_a_real_chunks_columns(survey, shared_data):
    real = fitsio.read(str(shared_data / "legacypipe-test/testcase12/gaia/chunk-04795.fits"))
    rows, dtypes = [], []
    for p in sorted(survey.gaia_dir.glob("chunk-*.fits")):
        with fitsio.FITS(str(p)) as f:
            rows.append(f[1].get_nrows())
            dtypes.append(f[1].get_rec_dtype()[0])
    assert sum(rows) > 10 and 0 in rows  # and empty neighbours, as the real catalogue has
    for dt in dtypes:
        for name in real.dtype.names:
            assert dt[name].kind == real.dtype[name].kind, name
            assert dt[name].itemsize == real.dtype[name].itemsize, name


def test_kdtree_searches_as_startree_built_one(tmp_path, shared_data):
    """lsdask's writer against the real ``tycho2.kd.fits`` of a legacypipe test case (built by
    astrometry.net's ``startree`` at NERSC): libkd finds the same rows."""
    real = shared_data / "legacypipe-test/testcase12/tycho2.kd.fits"
    ours = write_star_kdtree(tmp_path / "tycho2.kd.fits", fitsio.read(str(real), ext=1))
    script = tmp_path / "search.py"
    script.write_text(
        "import json, sys\n"
        "from astrometry.libkd.spherematch import tree_open, tree_search_radec\n"
        "out = {}\n"
        "for fn in sys.argv[1:]:\n"
        "    kd = tree_open(fn, 'stars')\n"
        "    out[fn] = [sorted(int(i) for i in tree_search_radec(kd, r, d, rad))\n"
        "               for r, d, rad in [(346.5, 12.2, 1.0), (346.5, 12.2, 0.2),\n"
        "                                 (346.0, 11.9, 0.3), (10.0, 10.0, 1.0)]]\n"
        "print('RESULT', json.dumps(out))\n")
    log = tmp_path / "search.log"
    rc = run_direct(stack_prefix(), [str(real), str(ours)], {}, log, script=script)
    assert rc == 0, log.read_text()[-2000:]
    res = json.loads(log.read_text().split("RESULT ", 1)[1])
    assert res[str(real)] == res[str(ours)]
    assert len(res[str(ours)][0]) > 50 and res[str(ours)][3] == []



def test_legacypipe_reads_reference_catalogues(survey, tmp_path):
    """legacypipe's own readers on the simulated survey: Gaia stars in a CCD's footprint
    (``read_gaia``), Tycho-2 (``read_tycho2``), and PS1 calibrators whose magnitudes, through
    ``ps1cat.ps1_to_decam``, are the true DECam magnitudes."""
    truth = fitsio.read(str(survey.truth))
    ref = truth[truth["is_ref"]]
    script = tmp_path / "refs.py"
    script.write_text(
        "import json, os, sys, numpy as np\n"
        "from astrometry.util.util import Tan\n"
        "from legacypipe.reference import read_gaia, read_tycho2\n"
        "from legacypipe.survey import LegacySurveyData\n"
        "from legacypipe.ps1cat import ps1cat, ps1_to_decam\n"
        "survey_dir, ra, dec = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])\n"
        "wcs = Tan(ra, dec, 500.5, 500.5, -0.262/3600, 0, 0, 0.262/3600, 1000.0, 1000.0)\n"
        "gaia = read_gaia(wcs, ['g', 'r', 'z'])\n"
        "tycho = read_tycho2(LegacySurveyData(survey_dir), wcs, ['g', 'r', 'z'])\n"
        "ps1 = ps1cat(ccdwcs=wcs).get_stars()\n"
        "dec = {b: ps1_to_decam(ps1.median, b) + ps1.median[:, 'grizY'.index(b)] for b in 'grz'}\n"
        "print('RESULT', json.dumps(dict(ngaia=len(gaia),\n"
        "    gaia_id=[int(i) for i in gaia.source_id],\n"
        "    ntycho=0 if tycho is None else len(tycho), ps1_id=[int(i) for i in ps1.obj_id],\n"
        "    **{b: [float(v) for v in dec[b]] for b in 'grz'})))\n")
    env = {"GAIA_CAT_DIR": str(survey.gaia_dir), "GAIA_CAT_VER": "2",
           "GAIA_CAT_PREFIX": "chunk", "GAIA_CAT_SCHEME": "ring",
           "TYCHO2_KD_DIR": str(survey.survey_dir), "PS1CAT_DIR": str(survey.ps1_dir)}
    log = tmp_path / "refs.log"
    rc = run_direct(stack_prefix(), [str(survey.survey_dir), "180.025", "32.025"], env, log,
                    script=script)
    assert rc == 0, log.read_text()[-3000:]
    res = json.loads(log.read_text().split("RESULT ", 1)[1])
    # read_tycho2 reads every star within 1 deg: the 4 simulated ones (outside the images)
    assert res["ngaia"] >= 5 and res["ntycho"] == 4
    ids = {4_000_000_000_000_000_000 + int(o): i for i, o in enumerate(ref["objid"])}
    assert all(g in ids for g in res["gaia_id"])
    rows = [ids[4_000_000_000_000_000_000 + (p - 100_000_000_000_000_000)] for p in res["ps1_id"]]
    assert len(rows) >= 5
    for b in "grz":
        true = 22.5 - 2.5 * np.log10(ref[f"flux_{b}"][rows])
        assert np.max(np.abs(np.array(res[b]) - true)) < 1e-4, b
    print(f"legacypipe read {res['ngaia']} Gaia stars, {len(rows)} PS1 calibrators "
          "(DECam magnitudes exact to 1e-4)", file=sys.stderr)


def test_calibrator_magnitudes_as_legacypipe(tmp_path, shared_data):
    """lsdask's PS1 calibrator cuts and PS1->DECam magnitudes, its Gaia->DECam ones and its
    forced Gaia point sources are legacypipe's: the same stars and magnitudes from
    legacypipe's DecamImage methods (``get_photometric_calibrator_cuts``,
    ``photometric_calibrator_to_observed``), ``gaiacat.gaia_to_decam`` and
    ``reference.fix_gaia``, on a PS1 chunk spanning and exceeding the calibrators' colour
    range, with stars PS1 did not measure in g, r or i, and on real Gaia chunks (20 stars
    without BP; 884 stars, some forced by their proper motion or parallax alone)."""
    from lsdask.processors.lite.refstars import gaia_pointsource
    from lsdask.survey.ps1cat import ps1_calibrators, ps1_chunk_name
    from lsdask.survey.refcat import gaia_to_decam, healpix_ring, read_refstars

    rng = np.random.default_rng(5)
    n = 600
    ps1 = np.zeros(n, [("obj_id", "i8"), ("ra", "f8"), ("dec", "f8"), ("nmag_ok", "i2", (5,)),
                       ("median", "f4", (5,)), ("median_err", "f4", (5,))])
    ps1["obj_id"] = np.arange(n)
    ps1["ra"] = 180.0 + rng.uniform(-0.05, 0.05, n)
    ps1["dec"] = 32.0 + rng.uniform(-0.05, 0.05, n)
    ps1["nmag_ok"] = rng.integers(0, 4, (n, 5))
    g = rng.uniform(15, 22, n)
    gi = rng.uniform(-0.5, 3.5, n)  # inside and outside the calibrators' 0.4-2.7
    ps1["median"] = np.c_[g, g - 0.6 * gi, g - gi, g - 1.2 * gi, g - 1.3 * gi]
    ps1["median_err"] = 0.01
    ps1_dir = tmp_path / "ps1"
    ps1_dir.mkdir()
    (hp,) = set(healpix_ring(ps1["ra"], ps1["dec"]).tolist())
    fitsio.write(str(ps1_dir / ps1_chunk_name(hp)), ps1, extname="PS1")
    gaia_file = shared_data / "legacypipe-test/testcase12/gaia/chunk-04795.fits"
    script = tmp_path / "cal.py"
    script.write_text(
        "import json, sys, fitsio, numpy as np\n"
        "from astrometry.util.fits import fits_table\n"
        "from legacypipe.decam import DecamImage\n"
        "from legacypipe.gaiacat import gaia_to_decam\n"
        "class Im(DecamImage):\n"
        "    def __init__(self, band):\n"
        "        self.band = band\n"
        "cat, out = fits_table(sys.argv[1]), {}\n"
        "for b in 'grz':\n"
        "    keep = Im(b).get_photometric_calibrator_cuts('ps1', cat)\n"
        "    mag = Im(b).photometric_calibrator_to_observed('ps1', cat)\n"
        "    out['ps1_' + b] = {int(i): float(m) for i, m in zip(cat.obj_id[keep], mag[keep])}\n"
        "gaia = fits_table(sys.argv[2])\n"
        "for b, m in zip('grz', gaia_to_decam(gaia, list('grz'))):\n"
        "    out['gaia_' + b] = [float(v) for v in m]\n"
        "from legacypipe.reference import fix_gaia\n"
        "gaia = fits_table(sys.argv[3])\n"
        "fix_gaia(gaia, list('grz'))\n"
        "out['pointsource'] = sorted(int(i) for i in gaia.source_id[gaia.pointsource])\n"
        "out['ngaia'] = len(gaia)\n"
        "print('RESULT', json.dumps(out))\n")
    log = tmp_path / "cal.log"
    gaia8 = shared_data / "legacypipe-test/testcase8/gaia/chunk-05483.fits"
    rc = run_direct(stack_prefix(), [str(ps1_dir / ps1_chunk_name(hp)), str(gaia_file),
                                     str(gaia8)], {}, log, script=script)
    assert rc == 0, log.read_text()[-3000:]
    res = json.loads(log.read_text().split("RESULT ", 1)[1])
    gaia = fitsio.read(str(gaia_file))
    for b in "grz":
        ours = ps1_calibrators(ps1_dir, 180.0, 32.0, 0.2, b)
        mine = {int(r["obj_id"]): float(r["mag"]) for r in ours}
        theirs = {int(k): v for k, v in res["ps1_" + b].items()}
        assert 50 < len(mine) < n and sorted(mine) == sorted(theirs), b
        assert max(abs(mine[k] - theirs[k]) for k in mine) < 1e-4, b
        lp = np.array(res["gaia_" + b])
        ok = lp < 30  # legacypipe's missing-magnitude value
        mag = gaia_to_decam(gaia["phot_g_mean_mag"], gaia["phot_bp_mean_mag"],
                            gaia["phot_rp_mean_mag"], b)
        # legacypipe sums its 13-term polynomial in float32: 6e-4 mag for the reddest star
        assert ok.all() and np.max(np.abs(mag - lp)) < 1e-3, b
    g8 = fitsio.read(str(gaia8), columns=["source_id", "ra", "dec"])
    refs = read_refstars(gaia8.parent, float(np.median(g8["ra"])), float(np.median(g8["dec"])),
                         2.0)
    refs = refs[np.isin(refs["source_id"], g8["source_id"])]
    assert len(refs) == res["ngaia"] == 884
    ours = sorted(int(i) for i in refs["source_id"][gaia_pointsource(refs)])
    g = refs["gaia_g"]
    old_rule = ((g <= 18) & (refs["astrometric_excess_noise"] < 10 ** 0.5)) | (g <= 13)
    print(f"{len(ours)} forced point sources of 884 (DR9's G/AEN rule alone: "
          f"{int(old_rule.sum())})", file=sys.stderr)
    assert ours == res["pointsource"] and len(ours) > old_rule.sum()
