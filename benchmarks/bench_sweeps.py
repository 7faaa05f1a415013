"""Benchmark: sweeps (tractor FITS -> Parquet -> sweep FITS + Parquet) vs the read floor.

Data: ~300 bricks x 3,000 rows of full DR9 columns (~1.9 GB of FITS), generated once into
benchmarks/out. Read floor: reading every tractor file fully with fitsio in 2 processes
(the cores the Dask run gets), measured before and after the steps (mean used). Steps, on a
LocalCluster of 2 single-threaded worker processes:
(a) tractor FITS -> Parquet dataset (the one-time "converted once" intermediate);
(b) sweeps from the Parquet dataset: every main, -lc, -ex FITS file and the Parquet sweeps;
(c) = (a) + (b), what ``run_sweeps`` does on a fresh release.
Prints wall-clock ratios to the floor and, since the machine is shared (see the load
average), CPU-second ratios (user + system, summed over the worker processes / the floor's
reader processes). Also the peak RSS of every process.

    .venv/bin/python benchmarks/bench_sweeps.py
"""

from __future__ import annotations

import shutil
import time

from _tractor_bench import bench_layout, cpu_seconds, load_average, peak_rss_mb, read_floor


def main() -> None:
    from distributed import Client, LocalCluster

    from lsdask.graphs.parquet import run_parquet
    from lsdask.graphs.sweeps import run_sweeps

    layout, names = bench_layout()
    paths = [str(layout.tractor(n)) for n in names]
    size = sum(layout.tractor(n).stat().st_size for n in names) / 1e9
    print(f"{len(paths)} tractor files, {size:.2f} GB; load average {load_average()}")
    read_floor(paths, 2)  # warm the page cache for everyone
    for d in (layout.parquet_dir, layout.sweeps_dir):
        shutil.rmtree(d, ignore_errors=True)
    floors = [read_floor(paths, 2, cpu=True)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:

        def cpu() -> float:
            return sum(client.run(cpu_seconds).values())

        c0, t0 = cpu(), time.time()
        p = run_parquet(layout, client=client)
        c1, t1 = cpu(), time.time()
        s = run_sweeps(layout, client=client, convert=False)
        c2, t2 = cpu(), time.time()
        rss = client.run(peak_rss_mb)
        again = run_sweeps(layout, client=client)
        rerun = time.time() - t2
    floors.append(read_floor(paths, 2, cpu=True))
    print(f"load average after: {load_average()}")
    fw = sum(f[0] for f in floors) / len(floors)
    fc = sum(f[1] for f in floors) / len(floors)
    print("read floor (fitsio, 2 processes): "
          + ", ".join(f"{w:.2f} s wall / {c:.2f} s CPU" for w, c in floors)
          + f" -> mean {fw:.2f} s wall, {fc:.2f} s CPU")
    print(f"sweeps: {s['boxes']} boxes, {s['rows']} rows from {p['converted']} bricks")
    steps = {"(a) tractor -> Parquet": (t1 - t0, c1 - c0),
             "(b) sweeps from Parquet (FITS + Parquet outputs)": (t2 - t1, c2 - c1),
             "(c) total": (t2 - t0, c2 - c0)}
    for name, (w, c) in steps.items():
        print(f"{name}: {w:.2f} s wall = {w / fw:.2f}x floor; "
              f"{c:.2f} s worker CPU = {c / fc:.2f}x floor CPU")
    print(f"no-op rerun: {rerun:.2f} s ({again['boxes']} boxes remade)")
    print(f"peak RSS MB: driver {peak_rss_mb():.0f}, workers "
          + ", ".join(f"{v:.0f}" for v in rss.values()))


if __name__ == "__main__":
    main()
