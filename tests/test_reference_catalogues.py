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
