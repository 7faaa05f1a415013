"""Benchmark: merge 10^4 per-exposure zeropoint tables into one survey-ccds table.

Generates N small per-exposure FITS tables (SURVEY_CCDS_DTYPE, 4-62 rows each) in a
temporary directory, then times ``lsdask.survey.ccds.merge_ccd_files`` (raw FITS read ->
numpy runs -> Arrow concat) against a naive baseline measured in the same run (a Python loop of
``astropy.table.Table.read`` + ``astropy.table.vstack``, the usual notebook approach),
and a second baseline (fitsio.read + np.concatenate). Usage::

    python benchmarks/bench_merge_ccds.py [N]   # default 10000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import fitsio
import numpy as np

from lsdask.survey.ccds import SURVEY_CCDS_DTYPE, ccds_from_arrow, merge_ccd_files


def make_tables(d: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        k = int(rng.choice([4, 62]))
        t = np.zeros(k, dtype=SURVEY_CCDS_DTYPE)
        t["image_filename"] = f"decam/CP/V4.8.2a/CP20190101/c4d_190102_{i:06d}_ooi_g_ls9.fits.fz"
        t["expnum"] = 100000 + i
        t["ccdname"] = [f"N{j + 1}" for j in range(k)]
        t["ccdzpt"] = rng.normal(25.0, 0.05, k)
        t["ra"] = rng.uniform(0, 360, k)
        p = d / f"zpt-{i:06d}-annotated.fits"
        fitsio.write(str(p), t, extname="CCDS", clobber=True)
        paths.append(p)
    return paths


def main(n: int = 10000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        paths = make_tables(Path(tmp), n)
        print(f"generated {n} tables in {time.time() - t0:.1f} s")

        t0 = time.time()
        table = merge_ccd_files(paths)
        t_merge = time.time() - t0
        merged = ccds_from_arrow(table)

        t0 = time.time()
        base = np.concatenate([fitsio.read(str(p), ext=1) for p in paths])
        t_np = time.time() - t0

        from astropy.table import Table, vstack

        m = min(n, 500)  # astropy is slow: time a subset and scale linearly
        t0 = time.time()
        vstack([Table.read(str(p), hdu=1) for p in paths[:m]])
        t_astropy = (time.time() - t0) * n / m

    assert len(merged) == len(base)
    np.testing.assert_array_equal(merged["ccdzpt"], base["ccdzpt"])
    print(f"rows merged: {len(merged)}")
    print(f"merge_ccd_files (raw read -> Arrow):       {t_merge:.2f} s")
    print(f"baseline fitsio.read + np.concatenate:     {t_np:.2f} s "
          f"(ratio {t_np / t_merge:.2f})")
    print(f"baseline astropy Table.read + vstack:      {t_astropy:.2f} s "
          f"(extrapolated from {m}; ratio {t_astropy / t_merge:.1f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
