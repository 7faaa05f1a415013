"""Stage planning without a cluster: image discovery and selection, the header cache,
brick planning from footprints, stage names, post-stage lookup."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lsdask.errors import UsageError
from lsdask.graphs import images as images_stage
from lsdask.graphs.stages import normalize_stages, whole_stage
from lsdask.processors.testing import make_survey, write_config
from lsdask.release import Release


@pytest.fixture
def release(tmp_path):
    rel = Release.from_config(write_config(tmp_path, bands=("g", "r")))
    make_survey(rel.layout, nexp=2, bands=("g", "r"))
    return rel


def test_discover_exclude_and_mjd(release):
    layout = release.layout
    names = images_stage.discover(layout, ["decam"])
    assert len(names) == 4 and all(n.startswith("decam/CP/") for n in names)
    # temporary files of atomic writes and non-CP names are ignored
    (layout.images_dir / "decam/CP/.c4d_x.tmp-1.fits.fz").write_bytes(b"")
    (layout.images_dir / "decam/CP/notes.fits.fz").write_bytes(b"")
    assert images_stage.discover(layout, ["decam"]) == names
    excl = images_stage.discover(layout, ["decam"], exclude=["*_ooi_r_*"])
    assert len(excl) == 2 and all("_ooi_g_" in n for n in excl)
    table = images_stage.image_table(layout, names)
    assert len(table) == 8 and table["ok"].all()  # 2 CCDs per image
    assert set(table["filter"]) == {"g", "r"} and (table["expnum"] > 0).all()
    sel = images_stage.select(table, mjd_min=57754.005)
    assert len(sel) == 4  # the second exposure of each band
    assert len(images_stage.select(table, bands=["r"])) == 4


def test_header_cache_reads_only_changed_files(release, monkeypatch):
    layout = release.layout
    names = images_stage.discover(layout, ["decam"])
    images_stage.image_table(layout, names)
    assert layout.image_list.exists()
    calls = []
    real = images_stage.read_footprints
    monkeypatch.setattr(images_stage, "read_footprints",
                        lambda lay, n: calls.append(n) or real(lay, n))
    images_stage.image_table(layout, names)
    assert calls == []
    os.utime(layout.image(names[0]), ns=(0, 0))
    t = images_stage.image_table(layout, names)
    assert calls == [names[0]] and len(t) == 8


def test_unreadable_image_kept_for_its_own_failure(release):
    layout = release.layout
    names = images_stage.discover(layout, ["decam"])
    layout.image(names[0]).write_bytes(b"not a FITS file")
    table = images_stage.image_table(layout, names)
    bad = table[~table["ok"]]
    assert list(bad["image_filename"]) == [names[0]] and bad["error"][0]
    imgs, brick_images = images_stage.images_in_region(table, release.config.region_box())
    assert names[0] in imgs  # planned: its calibs will fail as 'input'
    assert all(names[0] not in v for v in brick_images.values())
    region = release.config.region_box()
    from lsdask.survey.bricks import brick_grid

    g = brick_grid()
    for b in brick_images:
        br = g.brick(b)
        assert region.contains(np.array([br.ra]), np.array([br.dec]))[0]


def test_stage_names():
    assert normalize_stages("calibs,runbrick") == ["calibs", "runbrick"]
    assert normalize_stages(["zeropoints:bricks"]) == ["zeropoints", "ccds", "bricks"]
    assert normalize_stages(None)[0] == "images" and "depth" in normalize_stages("all")
    with pytest.raises(UsageError, match="unknown stage"):
        normalize_stages(["nope"])
    with pytest.raises(UsageError):
        whole_stage("runbrick")
    assert [whole_stage(s).name for s in ("parquet", "sweeps", "match", "depth")] == [
        "parquet", "sweeps", "match", "depth"]
