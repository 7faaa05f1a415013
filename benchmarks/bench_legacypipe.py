"""lite vs legacypipe's runbrick on the same demo brick (same images, calibrations, zeropoints).

Simulates the one-brick demo of ``lsdask demo --processor legacypipe`` (brick 1801p320 at
DECam's 0.262"/px with Gaia and Tycho-2, lite calibrations and zeropoints; ``--zoom 1400 2200
1400 2200`` is the demo's own 800 x 800-pixel centre) once into ``--workdir``, then runs
``lsdask runbrick`` with each processor on the same brick (``--zoom`` optional), alternating
``--repeat`` times, each as a child process; prints the wall time per run, the median ratio
legacypipe / lite measured in this session, and legacypipe's own per-stage wall times read
from its log (``Stage <name>: Wall: ...``).

    LSDASK_LEGACYPIPE_PREFIX=~/.cache/lsdask/legacypipe-stack \\
        .venv/bin/python benchmarks/bench_legacypipe.py [--zoom X0 X1 Y0 Y1] [--threads 2]

Measured 2026-11-27 (2 threads, zoom 1400 2200 1400 2200, other jobs on the machine): lite
34.1 s, legacypipe 302.5 s (8.9x); legacypipe's stages: fitblobs 265.1 s, outliers 8.3,
coadds 6.6, srcs 4.4, tims 3.5, writecat 1.7, halos 1.1, refs 0.3.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

BRICK = "1801p320"


def prepare(work: Path) -> Path:
    """The simulated one-brick demo with its calibrations, zeropoints and survey-ccds."""
    from lsdask.demo import DemoSettings, simulate_demo, write_demo_config

    settings = DemoSettings.legacypipe()
    cfg = work / "release.toml"
    if not (work / "survey" / "survey-ccds-demo.fits.gz").exists():
        simulate_demo(work, settings)
        write_demo_config(work, settings)
        subprocess.run([sys.executable, "-m", "lsdask", "run", str(cfg), "--stages",
                        "images:bricks", "--no-progress"], check=True)
    return cfg


def run_once(cfg: Path, processor: str, out: Path, zoom: list[int] | None,
             threads: int) -> tuple[float, str]:
    args = [sys.executable, "-m", "lsdask", "runbrick", str(cfg), "--brick", BRICK,
            "--processor", processor, "--outdir", str(out), "--threads", str(threads),
            "--force"]
    if zoom:
        args += ["--zoom", *map(str, zoom)]
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{processor} failed:\n{p.stderr[-3000:]}")
    return dt, p.stderr


def stage_times(log: str) -> dict[str, float]:
    """legacypipe's 'Stage X : Wall: 12.3 s, CPU ...' lines -> {stage: wall seconds}."""
    out = {}
    for m in re.finditer(r"^Stage (\w+) ?: ?Wall:? *([\d.]+)", log, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lsdask-bench-legacypipe"))
    ap.add_argument("--zoom", type=int, nargs=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    cfg = prepare(a.workdir)
    times: dict[str, list[float]] = {"lite": [], "legacypipe": []}
    stages: dict[str, float] = {}
    for _ in range(a.repeat):
        for proc in ("lite", "legacypipe"):
            dt, log = run_once(cfg, proc, a.workdir / f"out-{proc}", a.zoom, a.threads)
            times[proc].append(dt)
            if proc == "legacypipe":
                stages = stage_times(log)
            print(f"{proc:10s} {dt:8.1f} s", flush=True)
    lite, lp = statistics.median(times["lite"]), statistics.median(times["legacypipe"])
    print(f"brick {BRICK} zoom {a.zoom or 'full'} threads {a.threads}: lite {lite:.1f} s, "
          f"legacypipe {lp:.1f} s, ratio {lp / lite:.1f}x")
    if stages:
        print("legacypipe stages (wall s): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                       stages.items()))


if __name__ == "__main__":
    main()
