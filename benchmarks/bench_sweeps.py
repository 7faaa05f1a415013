"""Benchmark: sweeps (tractor FITS -> Parquet -> sweep FITS + Parquet) vs the read floor.

Data: ~300 bricks x 3,000 rows of full DR9 columns (~1.9 GB of FITS), generated once into
benchmarks/out. Read floor: reading every tractor file fully with fitsio (1 process, and
2 processes = the cores the Dask run gets). The sweeps run on a LocalCluster of 2
single-threaded worker processes and include writing all FITS and Parquet outputs.
Prints the ratios and the peak RSS of every process.

    .venv/bin/python benchmarks/bench_sweeps.py
"""

from __future__ import annotations

import shutil
import time

from _tractor_bench import bench_layout, peak_rss_mb, read_floor


def main() -> None:
    from distributed import Client, LocalCluster

    from lsdask.graphs.sweeps import run_sweeps

    layout, names = bench_layout()
    paths = [str(layout.tractor(n)) for n in names]
    size = sum(layout.tractor(n).stat().st_size for n in names) / 1e9
    read_floor(paths, 2)  # warm the page cache for everyone
    floor1 = read_floor(paths, 1)
    floor2 = read_floor(paths, 2)
    print(f"{len(paths)} tractor files, {size:.2f} GB")
    print(f"read floor: {floor1:.2f} s (1 process), {floor2:.2f} s (2 processes)")
    for d in (layout.parquet_dir, layout.sweeps_dir):
        shutil.rmtree(d, ignore_errors=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:
        t0 = time.time()
        s = run_sweeps(layout, client=client)
        total = time.time() - t0
        rss = client.run(peak_rss_mb)
        t1 = time.time()
        again = run_sweeps(layout, client=client)
        rerun = time.time() - t1
    conv = s["parquet"]["seconds"]
    print(f"sweeps: {s['boxes']} boxes, {s['rows']} rows; total {total:.2f} s "
          f"(parquet {conv:.2f} s + sweeps {total - conv:.2f} s)")
    print(f"ratio to read floor at equal cores (2): {total / floor2:.2f}x; "
          f"to 1-process floor: {total / floor1:.2f}x")
    print(f"no-op rerun: {rerun:.2f} s ({again['boxes']} boxes remade)")
    print(f"peak RSS MB: driver {peak_rss_mb():.0f}, workers "
          + ", ".join(f"{v:.0f}" for v in rss.values()))


if __name__ == "__main__":
    main()
