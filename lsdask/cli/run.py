"""``lsdask run CONFIG``: run a release's stages on a cluster, resumable at any point."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a release (all stages, or --stages ...)",
                       description="Run the release's stages as Dask graphs. Stop or kill it at "
                       "any time: a rerun skips finished work and re-plans the rest.")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--stages", nargs="+", metavar="STAGE",
                   help="stages to run (images calibs zeropoints ccds bricks runbrick parquet "
                   "sweeps match depth; 'all'; ranges like zeropoints:runbrick)")
    p.add_argument("--cluster", choices=["local", "slurm"],
                   help="cluster kind (default: from the profile)")
    p.add_argument("--profile", help="cluster profile (default: the config's [cluster] profile, "
                   "or local / local-slurm for --cluster)")
    p.add_argument("--adapt", nargs=2, type=int, metavar=("MIN", "MAX"),
                   help="adaptive scaling between MIN and MAX workers (slurm: jobs)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler to use instead")
    p.add_argument("--force", nargs="*", metavar="STAGE",
                   help="redo these stages even when their products exist (no names: all)")
    p.add_argument("--window", type=int, help="tasks in flight at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def pick_profile(args, cfg) -> str:
    if args.profile:
        return args.profile
    if args.cluster == "slurm":
        prof = cfg.cluster.profile
        return prof if prof not in ("local",) else "local-slurm"
    if args.cluster == "local":
        return "local"
    return cfg.cluster.profile


def quiet_dask(args) -> None:
    """Dask's INFO chatter off the console (workers inherit the environment)."""
    import logging
    import os

    if not getattr(args, "verbose", False):
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # harmless "Sizeof calculation ... failed" notes about task arguments
        logging.getLogger("distributed.sizeof").setLevel(logging.ERROR)


def run(args) -> int:
    quiet_dask(args)
    from distributed import Client

    from ..jobqueue import adapt, close_cluster, make_cluster
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    cfg = release.config
    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        profile = pick_profile(args, cfg)
        cluster = make_cluster(profile, account=cfg.cluster.account,
                               log_directory=cfg.layout.release_dir / "logs" / "dask-jobs"
                               if profile != "local" else None)
        if args.adapt:
            adapt(cluster, *args.adapt)
        elif getattr(cluster, "lsdask_kind", "local") == "slurm":
            adapt(cluster, cfg.cluster.adapt_min, cfg.cluster.adapt_max)
        client = Client(cluster)
    force = args.force
    if force is not None and len(force) == 0:
        force = True
    try:
        res = release.run(client, stages=args.stages, force=force or (),
                          progress=False if args.no_progress else None, window=args.window)
    finally:
        close_cluster(client, cluster)
    print_result(res)
    return 0 if res.ok else 1


def print_result(res) -> None:
    s = res.summary
    out = sys.stderr
    for plan in res.plans.values():
        print(f"  {plan}", file=out)
    stages = sorted(set(s.submitted) | set(s.succeeded) | set(s.failed))
    for st in stages:
        print(f"  {st}: {s.succeeded.get(st, 0)} succeeded, {s.failed.get(st, 0)} failed, "
              f"{s.retried.get(st, 0)} retried", file=out)
    for st, v in res.post.items():
        print(f"  {st}: {'not available/configured' if v is None else v}", file=out)
    if res.report:
        print(f"  performance report: {res.report}", file=out)
    print(f"lsdask run: {'ok' if res.ok else 'finished with failures'} in {res.elapsed:.1f} s "
          f"(see `lsdask status`)", file=out)
