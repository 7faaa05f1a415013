"""Benchmark: tractor FITS -> Parquet partition + sweeps (main, -lc, -ex FITS and Parquet
sweeps) vs the read floor, the two-pass path it replaced and legacypipe's script.

Data: ~300 bricks x 3,000 rows of full DR9 columns (~1.9 GB of FITS), generated once into
benchmarks/out. Each repeat measures, interleaved (the machine is shared):
- the read floor: every tractor file read fully with fitsio in 2 processes;
- before: the two-pass path (:mod:`lsdask.testing.sweeps_before`: tractor -> Parquet, then
  every box's sweeps from the Parquet files), on a fresh LocalCluster of 2 single-threaded
  worker processes;
- after: ``run_sweeps`` (one pass over the tractor files writes the Parquet partition and
  each brick's sweep shares, then the boxes are assembled), on a fresh cluster the same way;
- where the time goes, on the same cluster set-up: the Parquet partition alone (the pass
  without sweep shares), and the same with the 42 array columns (fixed-size lists: apflux_*,
  lc_*, dchisq ...) left out, the share of Parquet's list encoding;
- legacypipe's ``generate-sweep-files.py`` (DR9.6.9, ``--numproc 2``, FITS sweeps only)
  when the legacypipe stack is built (``$LSDASK_LEGACYPIPE_PREFIX``, default
  ``~/.cache/lsdask/legacypipe-stack``, with its ``.stamp``); skipped with a message if not.
Prints the medians of wall-clock seconds, the ratios to the floor, worker CPU seconds and
the peak RSS of each worker.

    .venv/bin/python benchmarks/bench_sweeps.py     # LSDASK_BENCH_REPEATS=3
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import dask
from _tractor_bench import OUT, bench_layout, cpu_seconds, load_average, peak_rss_mb, read_floor

REPEATS = int(os.environ.get("LSDASK_BENCH_REPEATS", 3))
PREFIX = Path(os.environ.get("LSDASK_LEGACYPIPE_PREFIX",
                             Path.home() / ".cache" / "lsdask" / "legacypipe-stack"))
SCRIPT = (Path(__file__).resolve().parents[2] / "shared" / "vendor" / "legacypipe-stack"
          / "dr9.6.9-bin" / "generate-sweep-files.py")


def _clean(layout) -> None:
    for d in (layout.parquet_dir, layout.sweeps_root):
        shutil.rmtree(d, ignore_errors=True)


def _on_cluster(fn, layout) -> tuple[float, float, list[float]]:
    """Wall seconds, worker CPU seconds and worker peak RSS (MB) of ``fn(layout, client)``
    on a fresh LocalCluster of 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    _clean(layout)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:
        c0, t0 = sum(client.run(cpu_seconds).values()), time.time()
        fn(layout, client)
        wall = time.time() - t0
        cpu = sum(client.run(cpu_seconds).values()) - c0
        rss = sorted(client.run(peak_rss_mb).values())
    return wall, cpu, rss


def _before(layout, client) -> None:
    from lsdask.testing.sweeps_before import run_before

    run_before(layout, client)


def _after(layout, client) -> None:
    from lsdask.graphs.sweeps import run_sweeps

    s = run_sweeps(layout, client=client)
    if s["parquet"]["failed"]:
        raise RuntimeError(s["parquet"]["failed"])


def _partition(layout, client) -> None:
    """The tractor -> Parquet partition alone (what the pass costs without sweep shares)."""
    from lsdask.graphs.parquet import tractor_bricks, tractor_checksum
    from lsdask.testing.sweeps_before import _compute, _convert_chunk

    items = [(b, tractor_checksum(layout, b)) for b in tractor_bricks(layout)]
    chunks = [items[i:i + 4] for i in range(0, len(items), 4)]
    _compute(client, [dask.delayed(_convert_chunk, pure=False)(layout, c) for c in chunks])


def _flat_chunk(layout, bricks: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lsdask.graphs.parquet import WRITE_OPTIONS, raw_to_arrow
    from lsdask.survey.tractor import read_table_raw

    for b in bricks:
        data, logical, phdr, _ = read_table_raw(layout.tractor(b), primary_header=True)
        keep = [n for n in data.dtype.names if not data.dtype[n].shape]
        table = raw_to_arrow(data[keep], [n for n in logical if n in keep],
                             {k: str(v) for k, v in phdr.items()})
        assert not any(pa.types.is_fixed_size_list(f.type) for f in table.schema)
        out = layout.tractor_parquet / f"flat-{b}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out, compression="none", **WRITE_OPTIONS)


def _partition_flat(layout, client) -> None:
    """The partition without the array columns (diagnostic: what the lists cost)."""
    from lsdask.graphs.parquet import tractor_bricks
    from lsdask.testing.sweeps_before import _compute

    names = list(tractor_bricks(layout))
    chunks = [names[i:i + 4] for i in range(0, len(names), 4)]
    _compute(client, [dask.delayed(_flat_chunk, pure=False)(layout, c) for c in chunks])


def _legacypipe_setup(paths: list[str]) -> tuple[Path, Path] | None:
    if not (PREFIX / ".stamp").is_file() or not (PREFIX / "env.sh").is_file():
        print(f"legacypipe's script: skipped (no built stack at {PREFIX}; "
              "set LSDASK_LEGACYPIPE_PREFIX)")
        return None
    if not SCRIPT.is_file():
        print(f"legacypipe's script: skipped ({SCRIPT} not found)")
        return None
    from lsdask.survey.bricks import brick_grid

    work = OUT / "legacypipe-sweeps"
    work.mkdir(parents=True, exist_ok=True)
    bricks = work / "survey-bricks.fits.gz"
    if not bricks.is_file():
        brick_grid().write(bricks)
    (work / "filelist.txt").write_text("".join(p + "\n" for p in paths))
    return work, bricks


def _legacypipe(work: Path, bricks: Path, tractor_dir: Path) -> float:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = (f'. "{PREFIX}/env.sh" && exec python "{SCRIPT}" -f fits -F "{work}/filelist.txt" '
           f'-d "{bricks}" --numproc 2 "{tractor_dir}" "{out}"')
    t0 = time.time()
    subprocess.run(["bash", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    if not list(out.rglob("sweep-*.fits")):
        raise RuntimeError(f"legacypipe's script wrote no sweep file into {out}")
    return wall


def main() -> None:
    layout, names = bench_layout()
    paths = [str(layout.tractor(n)) for n in names]
    size = sum(layout.tractor(n).stat().st_size for n in names) / 1e9
    print(f"{len(paths)} tractor files, {size:.2f} GB; load average {load_average()}; "
          f"{REPEATS} repeats, interleaved")
    read_floor(paths, 2)  # warm the page cache for everyone
    lp = _legacypipe_setup(paths)
    runs: dict[str, list] = {"floor": [], "before": [], "after": [], "legacypipe": [],
                             "partition": [], "flat": []}
    for r in range(REPEATS):
        runs["floor"].append(read_floor(paths, 2, cpu=True))
        order = (("before", _before), ("after", _after))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            runs[name].append(_on_cluster(fn, layout))
        runs["partition"].append(_on_cluster(_partition, layout))
        runs["flat"].append(_on_cluster(_partition_flat, layout))
        if lp is not None:
            runs["legacypipe"].append((_legacypipe(*lp, layout.release_dir / "tractor"),))
        print(f"  repeat {r + 1}: floor {runs['floor'][-1][0]:.2f} s, before "
              f"{runs['before'][-1][0]:.2f} s, after {runs['after'][-1][0]:.2f} s"
              + (f", legacypipe {runs['legacypipe'][-1][0]:.2f} s" if lp else "")
              + f"; worker CPU before {runs['before'][-1][1]:.1f} s, after "
              f"{runs['after'][-1][1]:.1f} s; worker peak RSS MB before "
              f"{runs['before'][-1][2]}, after {runs['after'][-1][2]}", flush=True)
    print(f"load average after: {load_average()}")

    def med(name: str, i: int = 0) -> float:
        return statistics.median(x[i] for x in runs[name])

    floor = med("floor")
    print(f"\nmedians of {REPEATS} (wall s; CPU s summed over the 2 workers / readers):")
    print(f"{'':44s} {'wall':>7s} {'x floor':>8s} {'CPU':>7s} {'x floor':>8s}")
    print(f"{'read floor (fitsio, 2 processes)':44s} {floor:7.2f} {1:8.2f} "
          f"{med('floor', 1):7.2f} {1:8.2f}")
    for name, label in (("before", "lsdask before (two passes)"),
                        ("after", "lsdask after (one pass + box assembly)")):
        w, c = med(name), med(name, 1)
        print(f"{label:44s} {w:7.2f} {w / floor:8.2f} {c:7.2f} {c / med('floor', 1):8.2f}")
    print(f"after / before: {med('after') / med('before'):.2f}")
    print("where the time goes (same cluster set-up):")
    for name, label in (("partition", "  Parquet partition alone (no sweep shares)"),
                        ("flat", "  ... without the 42 array columns")):
        w, c = med(name), med(name, 1)
        print(f"{label:44s} {w:7.2f} {w / floor:8.2f} {c:7.2f} {c / med('floor', 1):8.2f}")
    if lp is not None:
        w = med("legacypipe")
        print(f"{'legacypipe generate-sweep-files.py (2 proc)':44s} {w:7.2f} {w / floor:8.2f}")
        print(f"after / legacypipe: {med('after') / w:.2f} ({w / med('after'):.1f}x faster)")
    for name in ("before", "after"):
        rss = [max(x[2][i] for x in runs[name]) for i in range(2)]
        print(f"peak RSS per worker, {name}: " + ", ".join(f"{v:.0f} MB" for v in rss))


if __name__ == "__main__":
    main()
