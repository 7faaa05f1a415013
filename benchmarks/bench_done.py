"""What deciding "done" costs per brick (issue 10), against the old check in the same run.

Bricks of generated DR9 tractor catalogues (``--rows`` sources) with a depth table and
``--coadds`` coadd-sized files (``--coadd-mb`` each), their ``brick-<brick>.sha256sum`` and
input stamp. Timed per brick, caches cold (a new process would see them so):

- ``old``: the lite processor's ``runbrick_done`` alone (catalogue opens and validates);
- ``new``: :func:`lsdask.graphs.runbrick.is_done`: stamp + input fingerprint, every product's
  size, ``runbrick_done``, and the tractor file's sha256 against its sha256sum;
- ``full``: every product file hashed against the sha256sum (what ``--verify`` would cost).

    .venv/bin/python benchmarks/bench_done.py [--bricks 20] [--rows 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lsdask import done
from lsdask.atomic import sha256_file
from lsdask.graphs import runbrick as runbrick_stage
from lsdask.survey.layout import ReleaseLayout
from lsdask.testing.tractor_gen import generate_release


def make(layout: ReleaseLayout, n: int, rows: int, ncoadds: int, mb: float) -> list[str]:
    bricks = generate_release(layout, n, rows_per_brick=rows)
    blob = os.urandom(int(mb * 2**20))
    for b in bricks:
        sums = layout.sha256sum(b)
        lines = sums.read_text()
        files = done.sha256sum_files(sums, layout.release_dir)
        for k in range(ncoadds):
            p = layout.coadd(b, f"kind{k}", "g")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)
            files.append(p)
            lines += f"{sha256_file(p)}  {p.relative_to(layout.release_dir)}\n"
        sums.write_text(lines)
        done.write_stamp(layout.brick_stamp(b), "fp", [*files, sums])
    return bricks


def timed(fn, bricks: list[str]) -> float:
    done._SHA_CACHE.clear()
    t0 = time.perf_counter()
    for b in bricks:
        assert fn(b), b
    return (time.perf_counter() - t0) / len(bricks) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bricks", type=int, default=20)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--coadds", type=int, default=24)
    ap.add_argument("--coadd-mb", type=float, default=2.0)
    args = ap.parse_args()
    from lsdask.processors.lite import runbrick_done

    with tempfile.TemporaryDirectory() as d:
        layout = ReleaseLayout(Path(d) / "survey", Path(d) / "release")
        bricks = make(layout, args.bricks, args.rows, args.coadds, args.coadd_mb)
        size = sum(p.stat().st_size for p in done.sha256sum_files(
            layout.sha256sum(bricks[0]), layout.release_dir)) / 2**20
        old = timed(lambda b: runbrick_done(layout, b), bricks)
        new = timed(lambda b: runbrick_stage.is_done(layout, "lite", b, "fp"), bricks)
        full = timed(lambda b: done.verify_sha256sum(layout.sha256sum(b), layout.release_dir)
                     is None, bricks)
    print(f"{args.bricks} bricks of {args.rows} sources, {args.coadds + 2} product files "
          f"({size:.0f} MiB) each")
    print(f"done check per brick: old {old:.1f} ms, new {new:.1f} ms "
          f"(+{new - old:.1f} ms: stamp, sizes, tractor sha256), full verification "
          f"{full:.1f} ms")


if __name__ == "__main__":
    main()
