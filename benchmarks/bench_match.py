"""Benchmark: external matching of 200,000 objects vs a per-brick KD-tree loop (old way).

Uses the generated 300-brick release of bench_sweeps (made once in benchmarks/out) and its
tractor Parquet dataset (converted here if missing, not timed). Contenders, same run:
- lsdask: ``run_match`` on a LocalCluster of 2 single-threaded workers (output FITS written);
- old way: for every brick, read the tractor FITS, build a KD-tree of its primary sources
  and query all external objects, keeping the nearest (one process, as the loop body of
  legacypipe's match-external-catalog).
Both results are checked identical to one brute-force cKDTree.

    .venv/bin/python benchmarks/bench_match.py
"""

from __future__ import annotations

import time

import numpy as np
from _tractor_bench import bench_layout, cpu_seconds, load_average, peak_rss_mb

N_EXT = 200_000


def old_way(layout, names, ra, dec, radius, out_path):
    """The old loop: per brick, read the tractor file, KD-tree its primary sources, query
    every external object, keep the nearest row; then write the same output table.
    Returns (brickid, objid, chord distance, seconds of the match-only part)."""
    import fitsio
    from scipy.spatial import cKDTree

    from lsdask.survey.tractor import TRACTOR_DTYPE, read_tractor
    from lsdask.survey.wcs import chord, unit_vectors

    xyz = unit_vectors(ra, dec)
    best = np.full(len(ra), np.inf)
    out = np.zeros(len(ra), dtype=TRACTOR_DTYPE)
    out["objid"] = -1
    t_match = 0.0
    for n in names:
        t0 = time.time()
        t = read_tractor(layout.tractor(n))
        t = t[t["brick_primary"]]
        d, j = cKDTree(unit_vectors(t["ra"], t["dec"])).query(
            xyz, distance_upper_bound=chord(radius))
        better = d < best
        best[better] = d[better]
        t_match += time.time() - t0
        out[better] = t[j[better]]
    fitsio.write(str(out_path), out, clobber=True)
    found = out["objid"] >= 0
    return np.where(found, out["brickid"], -1), out["objid"], best, t_match


def main() -> None:
    import fitsio
    from distributed import Client, LocalCluster

    from lsdask.graphs.match import brute_force_match, run_match
    from lsdask.graphs.parquet import partition_files, run_parquet

    layout, names = bench_layout()
    run_parquet(layout)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pos = pa.concat_tables([pq.read_table(f, columns=["ra", "dec", "brick_primary"])
                            for fs in partition_files(layout).values() for f in fs])
    prim = pos.filter(pos.column("brick_primary"))
    rng = np.random.default_rng(42)
    k = rng.choice(prim.num_rows, N_EXT // 2, replace=False)
    pra = prim.column("ra").to_numpy()[k]
    pdec = prim.column("dec").to_numpy()[k]
    ext = np.zeros(N_EXT, dtype=[("RA", "f8"), ("DEC", "f8"), ("PLATE", "i4"), ("Z", "f4")])
    ext["RA"][: N_EXT // 2] = pra + rng.normal(0, 0.5 / 3600, len(k))
    ext["DEC"][: N_EXT // 2] = pdec + rng.normal(0, 0.5 / 3600, len(k))
    ext["RA"][N_EXT // 2:] = rng.uniform(pra.min(), pra.max(), N_EXT - len(k))
    ext["DEC"][N_EXT // 2:] = rng.uniform(pdec.min(), pdec.max(), N_EXT - len(k))
    ext["PLATE"] = np.arange(N_EXT)
    path = layout.release_dir / "bench-external.fits"
    fitsio.write(str(path), ext, clobber=True)

    print(f"load average before: {load_average()}")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("scipy.spatial"))  # warm imports

        def cpu() -> float:
            return sum(client.run(cpu_seconds).values()) + cpu_seconds()

        c0, t0 = cpu(), time.time()
        s = run_match(layout, path, client=client, copy=["PLATE", "Z"])
        t_new, c_new = time.time() - t0, cpu() - c0
        rss = client.run(peak_rss_mb)
    rss_driver = peak_rss_mb()
    print(f"load average after lsdask: {load_average()}")
    c0, t0 = cpu_seconds(), time.time()
    bid_old, oid_old, _, t_old_match = old_way(layout, names, ext["RA"], ext["DEC"], 1.5,
                                               layout.release_dir / "bench-old-way.fits")
    t_old, c_old = time.time() - t0, cpu_seconds() - c0
    bid, oid, _ = brute_force_match(layout, ext["RA"], ext["DEC"], 1.5)
    out = fitsio.read(s["output"], columns=["OBJID", "BRICKID"])
    same_new = np.array_equal(out["OBJID"], oid)
    same_old = np.array_equal(oid_old, oid) and np.array_equal(bid_old, bid)
    print(f"load average after: {load_average()}")
    print(f"{N_EXT} external objects, {s['nmatched']} matched, {len(names)} bricks")
    print(f"lsdask match: {t_new:.2f} s wall, {c_new:.2f} s CPU (driver + 2 workers; output "
          f"written; phases {s['phases']}), identical to brute force: {same_new}")
    print(f"old per-brick KD-tree loop (1 process): {t_old:.2f} s wall, {c_old:.2f} s CPU with "
          f"the same output gathered and written; {t_old_match:.2f} s wall for the "
          f"read + KD-tree + query part alone; identical: {same_old}")
    print(f"speed-up (wall): {t_old / t_new:.1f}x vs the full old loop, "
          f"{t_old_match / t_new:.1f}x vs its match-only part; "
          f"CPU: {c_old / c_new:.1f}x")
    (layout.release_dir / "bench-old-way.fits").unlink()
    print(f"peak RSS MB: driver {rss_driver:.0f}, workers "
          + ", ".join(f"{v:.0f}" for v in rss.values()))


if __name__ == "__main__":
    main()
