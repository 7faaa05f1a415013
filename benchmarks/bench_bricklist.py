"""Brick list over a full-survey CCD table (issue 2 target: 10^6 CCDs in < 60 s on 2 cores).

Generates 10^6 DECam-sized CCD rows uniformly over the whole sky, then times
``bricks_touching_ccds``. Baseline in the same run: the cost of merely
computing every CCD's corners through its WCS (the least any exact method must
do), so the ratio says what the candidate search and polygon test add.

    python benchmarks/bench_bricklist.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time

from lsdask.survey.bricks import brick_grid
from lsdask.survey.touching import bricks_touching_ccds, ccd_corners
from lsdask.testing.ccdgen import random_ccds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ccds = random_ccds(args.n, seed=0)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    brick_grid()
    t_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(ccds), 50_000):
        ccd_corners(ccds[i:i + 50_000])
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = bricks_touching_ccds(ccds)
    t_list = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"CCDs: {args.n:,} (generated in {t_gen:.1f} s); grid build {t_grid:.2f} s")
    print(f"brick list: {len(names):,} bricks in {t_list:.1f} s "
          f"({args.n / t_list:,.0f} CCDs/s); target < 60 s")
    print(f"baseline (corners only): {t_base:.2f} s; ratio {t_list / t_base:.1f}x")
    print(f"peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
