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
from _tractor_bench import bench_layout, peak_rss_mb

N_EXT = 200_000


def old_way(layout, names, ra, dec, radius):
    from scipy.spatial import cKDTree

    from lsdask.graphs.match import chord, unit_vectors
    from lsdask.survey.tractor import read_tractor

    xyz = unit_vectors(ra, dec)
    best = np.full(len(ra), np.inf)
    objid = np.full(len(ra), -1)
    brickid = np.full(len(ra), -1)
    for n in names:
        t = read_tractor(layout.tractor(n))
        t = t[t["brick_primary"]]
        d, j = cKDTree(unit_vectors(t["ra"], t["dec"])).query(
            xyz, distance_upper_bound=chord(radius))
        better = d < best
        best[better] = d[better]
        objid[better] = t["objid"][j[better]]
        brickid[better] = t["brickid"][j[better]]
    return brickid, objid, best


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

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("scipy.spatial"))  # warm imports
        t0 = time.time()
        s = run_match(layout, path, client=client, copy=["PLATE", "Z"])
        t_new = time.time() - t0
        rss = client.run(peak_rss_mb)
    t0 = time.time()
    bid_old, oid_old, _ = old_way(layout, names, ext["RA"], ext["DEC"], 1.5)
    t_old = time.time() - t0
    bid, oid, _ = brute_force_match(layout, ext["RA"], ext["DEC"], 1.5)
    out = fitsio.read(s["output"], columns=["OBJID", "BRICKID"])
    same_new = np.array_equal(out["OBJID"], oid)
    same_old = np.array_equal(oid_old, oid) and np.array_equal(bid_old, bid)
    print(f"{N_EXT} external objects, {s['nmatched']} matched, {len(names)} bricks")
    print(f"lsdask match: {t_new:.2f} s (2 workers, output written), identical to brute "
          f"force: {same_new}")
    print(f"old per-brick KD-tree loop: {t_old:.2f} s (1 process), identical: {same_old}")
    print(f"speed-up: {t_old / t_new:.1f}x")
    print(f"peak RSS MB: driver {peak_rss_mb():.0f}, workers "
          + ", ".join(f"{v:.0f}" for v in rss.values()))


if __name__ == "__main__":
    main()
