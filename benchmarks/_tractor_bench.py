"""Shared benchmark helpers: the generated 300-brick release, peak-RSS and CPU probes."""

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


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _read_one(path: str) -> int:
    import fitsio

    return len(fitsio.read(path))


def _read_many(paths: list[str]) -> float:
    """Read ``paths`` fully with fitsio; returns this process's CPU seconds for it."""
    c0 = cpu_seconds()
    for p in paths:
        _read_one(p)
    return cpu_seconds() - c0


def read_floor(paths: list[str], processes: int = 1, cpu: bool = False):
    """Seconds to read every file fully with fitsio (in ``processes`` processes, files
    8 at a time); with ``cpu``, returns ``(wall, CPU seconds summed over processes)``."""
    t0 = time.time()
    if processes == 1:
        used = _read_many(paths)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as ex:
            used = sum(ex.map(_read_many, [paths[i:i + 8] for i in range(0, len(paths), 8)]))
    wall = time.time() - t0
    return (wall, used) if cpu else wall
