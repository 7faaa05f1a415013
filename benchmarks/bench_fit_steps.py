"""Cost of one of lite's fitting steps on one demo brick: without it vs with it.

Steps (``--step``): ``ellip``, the elliptical EXP / DEV fits (``runbrick.ELLIPTICAL_FITS``;
without: the round PSF / REX / DEV fits only); ``blends``, measuring each source with
the others subtracted (``runbrick.SUBTRACT_NEIGHBOURS``: the ``BLEND_PASSES`` extra passes
and the subtraction in the final pass; without: every source measured alone, as before).

Runs lite's runbrick on one brick of a finished demo (``lsdask demo DIR``) twice per
repeat, alternately without and with the step, each in its own child process writing to
a fresh directory (no checkpoint reused), and prints the wall time of each, its
``photometry`` phase (detection to catalogue: where the fits are) and the ratios, from
the fastest run of each mode (the machine is shared; run it under ``nice``).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fit_steps.py DEMO_DIR [--step S]
        [--brick B] [--threads N] [--repeat N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(demo: Path, brick: str, threads: int, step: str, on: bool, out: Path) -> dict:
    import shutil

    from lsdask.processors.lite import runbrick
    from lsdask.release import Release
    from lsdask.survey.ccds import read_ccds
    from lsdask.survey.layout import ReleaseLayout

    rel = Release.from_config(demo / "release.toml")
    ccds = read_ccds(rel.layout.survey_ccds)
    shutil.rmtree(out, ignore_errors=True)
    layout = ReleaseLayout(rel.layout.survey_dir, out, name=rel.layout.name)
    if step == "ellip":
        runbrick.ELLIPTICAL_FITS = on
    else:
        runbrick.SUBTRACT_NEIGHBOURS = on
    # the demo's own runbrick options (brick size, detection threshold), fresh output
    opts = dataclasses.replace(rel.config.stages.runbrick, threads=threads, force=True)
    bands = sorted({c.decode().strip() if isinstance(c, bytes) else str(c).strip()
                    for c in ccds["filter"]}, key="grz".find)
    t = time.time()
    res = runbrick.run_runbrick(layout, brick, ccds, bands, opts)
    res["wall"] = time.time() - t
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path)
    ap.add_argument("--brick", default=None, help="default: the demo's first brick")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--step", choices=("ellip", "blends"), default="ellip")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lsdask-bench-fit-steps"))
    ap.add_argument("--one", choices=("without", "with"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    brick = args.brick
    if brick is None:
        from lsdask.release import Release

        brick = Release.from_config(args.demo / "release.toml").layout.bricklist.read_text(
        ).split()[0]
    if args.one:
        r = run_one(args.demo, brick, args.threads, args.step, args.one == "with",
                    args.workdir / f"release-{args.one}")
        print(json.dumps(r, default=str))
        return 0
    best: dict[str, dict] = {}
    for mode in [m for _ in range(max(1, args.repeat)) for m in ("without", "with")]:
        # output to files, not pipes: runbrick's forked writers may outlive the child for a
        # moment; its own session, ended after it (those writers go with it)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen([sys.executable, __file__, str(args.demo), "--brick", brick,
                                  "--threads", str(args.threads), "--step", args.step,
                                  "--workdir", str(args.workdir), "--one", mode],
                                 stdout=out, stderr=err,
                                 cwd=ROOT, start_new_session=True)
            rc = p.wait()
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if rc:
            print(f"{mode}: exit status {rc}\n{stderr}", file=sys.stderr)
            return 1
        r = json.loads(stdout.strip().splitlines()[-1])
        ph = r["timings"].get("photometry", float("nan"))
        print(f"{brick} {mode} {args.step}: wall {r['wall']:.1f} s, photometry phase {ph:.1f} s, "
              f"{r['nsources']} sources")
        if mode not in best or r["wall"] < best[mode]["wall"]:
            best[mode] = r
    rw = best["with"]["wall"] / best["without"]["wall"]
    rp = best["with"]["timings"]["photometry"] / best["without"]["timings"]["photometry"]
    print(f"with / without the {args.step} step: wall {rw:.2f}x, photometry phase {rp:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
