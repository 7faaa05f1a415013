"""``lsdask demo [DIR]``: simulate the worked example and run it end to end."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="simulate a 1 sq. deg. survey and run the whole release",
                       description="Simulate RA 180-181, Dec 32-33 (scaled-down images), write "
                       "DIR/release.toml and run every stage on a LocalCluster, then print "
                       "a summary. Rerunning skips finished work.")
    p.add_argument("dir", nargs="?", type=Path, default=Path("lsdask-demo"),
                   help="folder for the demo (default ./lsdask-demo)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--processor", choices=("lite", "legacypipe"), default="lite",
                   help="runbrick processor: lite (default) or legacypipe, the real runbrick "
                   "(through $LSDASK_LEGACYPIPE_PREFIX; a smaller region: 4 bricks)")
    p.add_argument("--zoom", type=int, nargs=4, metavar=("X0", "X1", "Y0", "Y1"),
                   help="run only this sub-grid of every brick (runbrick --zoom)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .run import quiet_dask

    quiet_dask(args)
    from ..demo import DemoSettings, format_summary, run_demo

    zoom = tuple(args.zoom) if args.zoom else None
    settings = (DemoSettings.legacypipe(zoom) if args.processor == "legacypipe"
                else DemoSettings(zoom=zoom))
    s = run_demo(args.dir, n_workers=args.workers, settings=settings,
                 progress=False if args.no_progress else None)
    print(format_summary(s))
    return 0 if s["ok"] else 1
