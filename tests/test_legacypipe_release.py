"""Releases whose runbrick is the real legacypipe: the simulated demo through the runner on
a LocalCluster (compared with the simulation's truth) and one brick on the local Slurm.

The demo here is ``lsdask demo --processor legacypipe`` (one brick) zoomed to its central
300x300 pixels (CI time); lite makes the calibrations and zeropoints.
"""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
import pytest
from distributed import Client
from legacypipe_stack import stack_prefix

from lsdask.demo import DemoSettings, run_demo
from lsdask.jobqueue import make_cluster
from lsdask.release import Release
from lsdask.survey.wcs import angular_separation

ZOOM = (322, 622, 322, 622)  # the brick's centre: 300x300 pixels at 1"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    prefix = stack_prefix()
    mp = pytest.MonkeyPatch()
    mp.setenv("LSDASK_LEGACYPIPE_PREFIX", str(prefix))
    d = tmp_path_factory.mktemp("lpdemo")
    cluster = make_cluster("local", n_workers=2)
    try:
        with Client(cluster) as client:
            s = run_demo(d, client=client, settings=DemoSettings.legacypipe(ZOOM),
                         progress=False)
    finally:
        cluster.close()
        mp.undo()
    return d, s


def truth_in(layout, brick: str) -> np.ndarray:
    """Truth sources inside the brick's zoomed pixel grid (3 pixels from its edge)."""
    from lsdask.config import RunbrickOptions
    from lsdask.processors.lite.runbrick import brick_wcs
    from lsdask.survey.bricks import brick_grid

    opts = RunbrickOptions(width=944, height=944, pixscale=1.0, zoom=list(ZOOM))
    w = brick_wcs(brick_grid().brick(brick), opts)
    t = fitsio.read(str(layout.truth))
    x, y = w.radec_to_pixel(t["ra"], t["dec"])
    inside = (x > 3) & (x < w.width - 3) & (y > 3) & (y < w.height - 3)
    return t[inside]


def test_demo_legacypipe_against_truth(demo):
    d, s = demo
    assert s["ok"], s["status"]
    assert s["processors"] == {"calibs": "lite", "zeropoints": "lite",
                               "runbrick": "legacypipe"}
    release = Release.from_config(d / "release.toml")
    layout = release.layout
    bricks = layout.bricklist.read_text().split()
    assert len(bricks) >= 1 and s["bricks_done"] == len(bricks)
    assert layout.survey_ccds_kd.exists()  # legacypipe's create_kdtrees ran in stage ccds
    # the ledger knows each brick ran legacypipe; logs start with the command line
    for b in bricks:
        assert "+ . " in layout.log("runbrick", b).read_text()
        assert "-m legacypipe.runbrick --brick " + b in layout.log("runbrick", b).read_text()
    cat = np.concatenate([fitsio.read(str(layout.tractor(b))) for b in bricks])
    # the whole-release stages read legacypipe's own (DR11) catalogues as DR9 rows
    assert "pmra" not in cat.dtype.names and "ls_id_dr11" in cat.dtype.names
    sweeps = sorted(layout.sweeps_dir.glob("sweep-*.fits"))
    swept = sum(len(fitsio.read(str(p), columns=["ra"])) for p in sweeps
                if not p.name.endswith(("-lc.fits", "-ex.fits")))
    assert swept == int(cat["brick_primary"].sum()) > 0
    truth = np.concatenate([truth_in(layout, b) for b in bricks])
    # match each truth source with r < 21 (unsaturated) to the nearest catalogue source
    bright = truth[(truth["flux_r"] > 10 ** ((22.5 - 21) / 2.5)) & (truth["flux_r"] < 250)]
    sep = angular_separation(bright["ra"][:, None], bright["dec"][:, None],
                             cat["ra"][None, :], cat["dec"][None, :]) * 3600.0
    j = np.argmin(sep, axis=1)
    found = sep[np.arange(len(bright)), j] < 1.0
    completeness = found.mean()
    stars = np.char.strip(bright["type"].astype("U")) == "PSF"
    ratio_r = cat["flux_r"][j[found]] / bright["flux_r"][found]
    print(f"legacypipe on the demo: {len(bright)} true sources 17<r<21, completeness "
          f"{completeness:.3f}, median r flux ratio stars "
          f"{np.median(ratio_r[stars[found]]):.3f}, galaxies "
          f"{np.median(ratio_r[~stars[found]]):.3f}, median offset "
          f"{np.median(sep[np.arange(len(bright)), j][found]):.3f}\"")
    # astrometry and detection of the true stars hold; the photometry and typing do not yet:
    # lsdask's simulated calibrations do not mean to legacypipe what they mean to lite
    # (issue 15: measured star flux ratios 1.37-1.67, 14 % typed PSF on this zoom)
    assert len(bright) >= 20 and stars.sum() >= 15
    assert found[stars].mean() >= 0.75
    assert np.median(sep[np.arange(len(bright)), j][found]) < 0.1


@pytest.mark.slurm
def test_one_legacypipe_brick_on_slurm(demo, tmp_path, monkeypatch, slurm):
    """The runbrick stage of one demo brick on SLURMCluster workers of the local Slurm, the
    launcher named in the config (no environment variable on the workers)."""
    monkeypatch.delenv("LSDASK_LEGACYPIPE_PREFIX", raising=False)
    d, _ = demo
    first = Release.from_config(d / "release.toml")
    brick = first.layout.bricklist.read_text().split()[0]
    text = (d / "release.toml").read_text()
    from lsdask.survey.bricks import brick_grid

    b = brick_grid().brick(brick)
    text = text.replace('release_dir = "release"', f'release_dir = "{tmp_path / "rel"}"')
    text = text.replace('"survey', f'"{d / "survey"}')
    text = text.replace("[region]\n", "[region]\n# one brick\n")
    lines = []
    for ln in text.splitlines():
        if ln.startswith("ra = ["):
            ln = f"ra = [{b.ra - 0.01}, {b.ra + 0.01}]"
        elif ln.startswith("dec = ["):
            ln = f"dec = [{b.dec - 0.01}, {b.dec + 0.01}]"
        elif ln.startswith('profile = "local"'):
            ln = 'profile = "local-slurm"'
        lines.append(ln)
        if ln == "[legacypipe]":
            lines.append(f'prefix = "{stack_prefix()}"')
    cfg = tmp_path / "slurm.toml"
    cfg.write_text("\n".join(lines) + "\n")
    rel = Release.from_config(cfg)
    cluster = make_cluster("local-slurm", log_directory=tmp_path / "jobs")
    try:
        cluster.scale(1)
        with Client(cluster) as client:
            res = rel.run(client, stages=["images", "runbrick"], progress=False)
    finally:
        cluster.close()
    assert res.ok, res.summary.failed
    with rel.ledger() as led:
        rows = led.tasks("runbrick", "succeeded")
    assert [r["key"] for r in rows] == [brick]
    assert rows[0]["slurm_job_id"]
    # same catalogue as the LocalCluster run of the same brick
    a = fitsio.read(str(first.layout.tractor(brick)))
    c = fitsio.read(str(rel.layout.tractor(brick)))
    assert len(a) == len(c) and np.array_equal(a["flux_r"], c["flux_r"])


def test_survey_ccds_merge_identical_to_legacyzpts_merge(demo, tmp_path):
    """lsdask's fast survey-ccds merge gives the table legacyzpts' own
    ``legacy_zeropoints_merge.py`` makes from the same per-exposure annotated tables."""
    from legacypipe_stack import assert_same_catalogue, run_direct

    d, _ = demo
    layout = Release.from_config(d / "release.toml").layout
    images = sorted(p for p in layout.zpt_dir.rglob("*-annotated.fits"))
    assert len(images) == 3
    ours = tmp_path / "ours.fits"
    ours.write_bytes(__import__("gzip").decompress(layout.survey_ccds.read_bytes()))
    # the merge orders exposures as the images stage does: give legacyzpts the same order
    order = [str(layout.zeropoints(n)) for n in
             [r.strip() for r in dict.fromkeys(
                 fitsio.read(str(ours), columns=["image_filename"])["image_filename"]
                 .astype(str))]]
    theirs = tmp_path / "theirs.fits"
    rc = run_direct(stack_prefix(), ["--outname", str(theirs), *order], {},
                    tmp_path / "merge.log", module="legacyzpts.legacy_zeropoints_merge")
    assert rc == 0, (tmp_path / "merge.log").read_text()[-2000:]
    assert assert_same_catalogue(ours, theirs) == 12
