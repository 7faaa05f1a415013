"""The demo chain with the real lite processors on a LocalCluster (a small corner of the
demo region to keep the suite fast; `lsdask demo` runs the whole square degree)."""

from __future__ import annotations

import fitsio
from distributed import Client

from lsdask.cli import main
from lsdask.demo import DemoSettings, run_demo
from lsdask.jobqueue import make_cluster
from lsdask.release import Release


def attempts(release) -> int:
    with release.ledger() as led:
        return led._con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]


def check_matched_targets_against_truth(layout) -> None:
    """End to end (simulated images -> lite calibs -> zeropoints -> runbrick -> match): the
    demo's mock targets are bright truth sources plus random positions."""
    import numpy as np

    from lsdask.demo import DEMO_EXTERNAL

    out = layout.external(DEMO_EXTERNAL.split(".")[0])
    m = fitsio.read(str(out), ext="MATCHED", columns=["OBJID", "TRUTH_ID", "FLUX_R",
                                                      "TRUE_FLUX_R", "MATCH_DIST"])
    truth = fitsio.read(str(layout.truth), columns=["objid", "type"])
    types = dict(zip(truth["objid"].tolist(), np.char.strip(truth["type"].astype("U")),
                     strict=True))
    fake = m["TRUTH_ID"] < 0
    # random positions match only by chance (within the 1.5" radius)
    assert fake.any() and np.mean(m["OBJID"][fake] >= 0) < 0.25
    assert np.all(m["MATCH_DIST"][m["OBJID"] >= 0] <= 1.5)
    psf = ~fake & np.array([types.get(t) == "PSF" for t in m["TRUTH_ID"].tolist()])
    psf &= m["TRUE_FLUX_R"] < 250  # unsaturated
    found = psf & (m["OBJID"] >= 0)
    assert found.sum() >= 0.8 * psf.sum() and found.sum() >= 10
    ratio = np.median(m["FLUX_R"][found] / m["TRUE_FLUX_R"][found])
    assert abs(ratio - 1) < 0.05, ratio
    assert np.median(m["MATCH_DIST"][found]) < 0.3


def test_demo_chain_then_rerun_skips_everything(tmp_path, capsys):
    settings = DemoSettings.small()
    cluster = make_cluster("local", n_workers=2)
    try:
        with Client(cluster) as client:
            s = run_demo(tmp_path, client=client, settings=settings, progress=False)
            assert s["ok"], s["status"]
            release = Release.from_config(tmp_path / "release.toml")
            layout = release.layout
            bricks = layout.bricklist.read_text().split()
            assert len(bricks) >= 2 and s["bricks_done"] == len(bricks)
            assert s["sources"] > 50
            for b in bricks:
                hdr = fitsio.read_header(str(layout.tractor(b)), ext=1)
                assert hdr["NAXIS2"] >= 0
            assert layout.survey_ccds.exists() and layout.survey_ccds_parquet.exists()
            st = release.status()
            assert st.loc["runbrick", "succeeded"] >= len(bricks)
            assert (st[["pending", "running", "failed"]].to_numpy() == 0).all(), st.to_string()
            if s["report"]:
                assert layout.report_dir.exists()
            check_matched_targets_against_truth(layout)
            # second run: nothing re-run
            n = attempts(release)
            mtimes = {b: layout.tractor(b).stat().st_mtime_ns for b in bricks}
            s2 = run_demo(tmp_path, client=client, settings=settings, progress=False)
            assert s2["ok"]
            assert attempts(release) == n
            assert {b: layout.tractor(b).stat().st_mtime_ns for b in bricks} == mtimes
    finally:
        cluster.close()
    # the operator commands work on the demo's own config
    cfg = str(tmp_path / "release.toml")
    assert main(["status", cfg]) == 0
    out = capsys.readouterr().out
    assert "runbrick" in out and "calibs" in out
    assert main(["tasks", cfg, "--stage", "runbrick", "--state", "succeeded", "--keys"]) == 0
    assert set(capsys.readouterr().out.split()) >= set(bricks)
    assert main(["logs", cfg, bricks[0]]) == 0
    assert "=== lsdask runbrick" in capsys.readouterr().out
    assert main(["clean", cfg]) == 0
    assert not list(layout.checkpoints_dir.glob("*/checkpoint-*"))
