"""Depth summary: sums against the per-brick truth, per-brick table, plot, CLI."""

from __future__ import annotations

import fitsio
import numpy as np

from lsdask.cli import main
from lsdask.graphs.depth import PIXEL_AREA, read_depth_tables, run_depth
from lsdask.testing.tractor_gen import generate_release


def test_depth_summary(tmp_release):
    names = generate_release(tmp_release, 5, 10, seed=2)
    tables = {n: fitsio.read(str(tmp_release.coadd(n, "depth.fits"))) for n in names}
    # one brick has an upper-case table (as other writers may produce)
    d = tables[names[0]]
    up = np.zeros(len(d), dtype=[(c.upper(), d.dtype[c]) for c in d.dtype.names])
    for c in d.dtype.names:
        up[c.upper()] = d[c]
    fitsio.write(str(tmp_release.coadd(names[0], "depth.fits")), up, clobber=True)
    s = run_depth(tmp_release, bands=["g", "r", "z"])
    assert s["bricks"] == 5 and not s["failed"]
    summ = fitsio.read(str(tmp_release.depth_summary()))
    assert len(summ) == 50 and summ["DEPTHLO"][0] == 0 and summ["DEPTHHI"][-1] == 100
    for b in "grz":
        want = sum(t[f"counts_ptsrc_{b}"].astype(np.int64) for t in tables.values())
        assert np.array_equal(summ[f"COUNTS_PTSRC_{b.upper()}"], want)
        np.testing.assert_allclose(summ[f"AREA_PTSRC_{b.upper()}"], want * (0.262 / 3600) ** 2)
        assert abs(s["area"][b] - 5 * 0.0625) < 0.005  # bricks are ~0.25 x 0.25 deg
    per = fitsio.read(str(tmp_release.depth_table()))
    assert [r.strip() for r in per["BRICKNAME"]] == sorted(names)
    row = per[list(per["BRICKNAME"]).index(names[1])]
    assert np.array_equal(row["COUNTS_GAL_Z"], tables[names[1]]["counts_gal_z"])
    assert 22.0 < row["PSFDEPTH_Z"] < 23.5 and 23.5 < row["PSFDEPTH_G"] < 25.0
    png = tmp_release.depth_plot().read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert PIXEL_AREA == (0.262 / 3600) ** 2
    assert len(read_depth_tables(tmp_release).compute()) == 5


def test_depth_bad_table_and_cli(tmp_path, capsys):
    from lsdask.survey.layout import ReleaseLayout

    root = tmp_path / "r"
    layout = ReleaseLayout(root, root, name="d")
    names = generate_release(layout, 3, 10, seed=1)
    layout.coadd(names[2], "depth.fits").write_bytes(b"broken")
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[release]\nname = "d"\nsurvey_dir = "{root}"\n')
    assert main(["depth", str(cfg), "--scheduler", "threads"]) == 1  # one brick failed
    out = capsys.readouterr()
    assert names[2] in out.out and '"bricks": 2' in out.out
    assert layout.depth_summary().is_file() and layout.depth_plot().is_file()
