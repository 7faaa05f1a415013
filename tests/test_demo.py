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
