"""survey-ccds tables: real files, merging, Arrow/Parquet round trips, bad inputs."""

import fitsio
import numpy as np
import pytest

from lsdask.errors import InputError
from lsdask.survey.ccds import (
    SURVEY_CCDS_DTYPE,
    ccds_from_arrow,
    ccds_to_arrow,
    merge_ccd_files,
    read_ccds,
    read_ccds_parquet,
    rename_columns,
    usable,
    write_ccds,
    write_ccds_parquet,
)
from lsdask.testing.ccdgen import random_ccds


def _real_ccd_files(shared_data):
    files = sorted(shared_data.glob("legacypipe-test/*/survey-ccds*"))
    assert len(files) == 11
    return files


def test_every_real_file_reads(shared_data):
    for f in _real_ccd_files(shared_data):
        c = read_ccds(f)
        assert len(c) >= 1
        assert all(n == n.lower() for n in c.dtype.names)
        assert {"crval1", "cd1_1", "width", "filter", "image_filename"} <= set(c.dtype.names)
        assert np.all(c["width"] > 0)


def test_merge_real_files_keeps_ccd_cuts(shared_data):
    files = _real_ccd_files(shared_data)
    merged = read_ccds(files)
    assert len(merged) == sum(len(fitsio.read(str(f), ext=1)) for f in files)
    # old tables lack ccd_cuts: merged as 0 (no cut), not dropped
    assert "ccd_cuts" in merged.dtype.names
    widest = max(len(s) for s in merged["image_filename"])
    assert any(s.endswith(".fits") or s.endswith(".fz") for s in merged["image_filename"])
    assert widest > 30


def test_uppercase_columns_read_case_insensitively(tmp_path):
    c = random_ccds(5)
    up = rename_columns(c, [n.upper() for n in c.dtype.names])
    path = tmp_path / "survey-ccds-upper.fits"
    fitsio.write(str(path), up)
    back = read_ccds(path)
    assert back.dtype.names == c.dtype.names
    assert np.array_equal(back["crval1"], c["crval1"])


def test_fits_arrow_parquet_round_trip(tmp_path):
    c = random_ccds(50, seed=4)
    path = write_ccds(c, tmp_path / "survey-ccds-x.fits.gz")
    back = read_ccds(path)
    assert back.dtype.names == SURVEY_CCDS_DTYPE.names
    for n in SURVEY_CCDS_DTYPE.names:
        assert back.dtype[n].kind == c.dtype[n].kind
        assert np.array_equal(back[n], c[n]), n
    t = ccds_to_arrow(back)
    assert t.num_rows == 50
    rt = ccds_from_arrow(t)
    for n in SURVEY_CCDS_DTYPE.names:
        assert rt.dtype[n].newbyteorder("=") == back.dtype[n].newbyteorder("="), n
        assert np.array_equal(rt[n], back[n])
    pq = write_ccds_parquet(back, tmp_path / "x.parquet")
    assert np.array_equal(read_ccds_parquet(pq), rt)


def test_merge_ccd_files_arrow(tmp_path):
    paths = []
    for i in range(4):
        c = random_ccds(3, seed=i)
        c["image_filename"] = "x" * (10 + 20 * i)  # widths differ across files
        paths.append(write_ccds(c, tmp_path / f"zpt-{i}.fits"))
    t = merge_ccd_files(paths)
    assert t.num_rows == 12
    back = ccds_from_arrow(t)
    assert back["image_filename"][-1] == "x" * 70  # not truncated to the first file's width


def test_missing_column_names_file_and_column(tmp_path):
    c = random_ccds(3)
    names = [n for n in c.dtype.names if n != "cd1_1"]
    path = tmp_path / "no-cd.fits"
    fitsio.write(str(path), c[names])
    with pytest.raises(InputError, match=r"no-cd\.fits.*cd1_1"):
        read_ccds(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = write_ccds(random_ccds(200), tmp_path / "good.fits")
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(path.read_bytes()[:8000])
    with pytest.raises(InputError, match="truncated.fits"):
        read_ccds(bad)
    with pytest.raises(InputError, match="not found"):
        read_ccds(tmp_path / "absent.fits")


def test_usable_cuts_and_bands():
    c = random_ccds(1000, seed=5)
    m = usable(c, bands=["g"])
    assert np.all(c["ccd_cuts"][m] == 0) and np.all(c["filter"][m] == "g")
    assert usable(c, ignore_cuts=True).all()
    assert 0 < m.sum() < len(c)
