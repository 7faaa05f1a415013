"""``lsdask sweeps CONFIG``: tractor catalogues -> Parquet -> sweep files (FITS + Parquet)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("lsdask.sweeps")


def add_scheduler_args(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers`` (shared by sweeps, match and depth)."""
    p.add_argument("--scheduler", choices=["processes", "threads"], default="processes",
                   help="a LocalCluster of worker processes (default) or Dask's threaded "
                   "scheduler in this process")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")


@contextlib.contextmanager
def scheduler(args: argparse.Namespace) -> Iterator[object | None]:
    """Yield a distributed Client on a LocalCluster, or None for the threaded scheduler."""
    if args.scheduler == "threads":
        import dask

        with dask.config.set(scheduler="threads"):
            yield None
        return
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def print_summary(summary: dict) -> None:
    json.dump(summary, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def add_parser(sub) -> None:
    p = sub.add_parser("sweeps", help="make sweep files (via the tractor Parquet dataset)",
                       description="Convert new/changed tractor catalogues of the release to "
                       "the Parquet dataset, then write sweep-<box>.fits, -lc.fits, -ex.fits "
                       "and the Parquet sweeps for every non-empty 10x5 deg box.")
    p.add_argument("config", type=Path, help="release TOML")
    p.add_argument("--force", action="store_true", help="remake every box")
    add_scheduler_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..graphs.sweeps import run_sweeps

    cfg = load_config(args.config)
    with scheduler(args) as client:
        summary = run_sweeps(cfg.layout, client=client,
                             force=args.force or cfg.stages.sweeps.force)
    failed = (summary.get("parquet") or {}).get("failed") or {}
    for brick, msg in failed.items():
        log.error("%s: %s", brick, msg)
    print_summary(summary)
    return 1 if failed else 0
