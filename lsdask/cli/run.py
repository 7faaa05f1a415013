"""``lsdask run CONFIG``: run a release's stages on a cluster, resumable at any point."""

from __future__ import annotations

import contextlib
import signal
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
    p.add_argument("--profile", help="cluster profile (default: the config's [cluster] profile)")
    add_batch_options(p)
    p.add_argument("--adapt", nargs=2, type=int, metavar=("MIN", "MAX"),
                   help="adaptive scaling between MIN and MAX workers (slurm: jobs)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler to use instead")
    p.add_argument("--force", nargs="*", metavar="STAGE",
                   help="redo these stages even when their products exist (no names: all)")
    p.add_argument("--window", type=int, help="tasks in flight at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_batch_options(p) -> None:
    """``--qos/--walltime/--account``: override the profile (and the config)."""
    p.add_argument("--qos", help="Slurm QOS of the worker jobs (NERSC: regular, debug, shared...)")
    p.add_argument("--walltime", help="walltime of each worker job, HH:MM:SS")
    p.add_argument("--account", help="Slurm account (default: the config's, $LSDASK_ACCOUNT)")


def pick_profile(args, cfg) -> str:
    """The profile: --profile, else the config's; ``--cluster`` must agree with its kind."""
    from ..errors import ConfigError
    from ..jobqueue import Profile, profile_names

    name = args.profile or cfg.cluster.profile
    if args.cluster == "local" and not args.profile:
        return "local"
    prof = Profile.load(name)
    if args.cluster == "slurm" and not prof.is_slurm:
        slurm = [n for n in profile_names() if Profile.load(n).is_slurm]
        raise ConfigError(f"--cluster slurm needs a Slurm profile: --profile NAME or "
                          f"[cluster] profile in the config (profiles: {', '.join(slurm)})")
    if args.cluster == "local" and prof.is_slurm:
        raise ConfigError(f"--cluster local with the Slurm profile {name!r}")
    return name


def quiet_dask(args) -> None:
    """Dask's INFO chatter off the console (workers inherit the environment)."""
    import logging
    import os

    if not getattr(args, "verbose", False):
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # harmless "Sizeof calculation ... failed" notes about task arguments
        logging.getLogger("distributed.sizeof").setLevel(logging.ERROR)
        for name in SHUTDOWN_NOISE:  # "... ended with CancelledError" when stopping
            logging.getLogger(name).setLevel(logging.ERROR)


#: Loggers that warn about tasks cancelled by a shutdown (the run's end, Ctrl-C, SIGTERM).
SHUTDOWN_NOISE = ("distributed.worker_state_machine", "distributed.nanny",
                  "distributed.worker")




def _on_sigterm(signum, frame) -> None:
    from ..release import Terminated

    raise Terminated()


@contextlib.contextmanager
def _sigint_ignored():
    """Processes started meanwhile (local Dask workers) ignore Ctrl-C: the driver alone
    handles it, and stops them (no tracebacks from every worker)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run(args) -> int:
    quiet_dask(args)
    from distributed import Client

    from ..jobqueue import adapt, close_cluster, dashboard_link, is_slurm, release_cluster
    from ..release import Terminated, release_from_arg

    release = release_from_arg(args.config)
    cfg = release.config
    with contextlib.suppress(ValueError):  # SIGTERM (Slurm walltime, scancel): end cleanly
        signal.signal(signal.SIGTERM, _on_sigterm)
    cluster = client = None
    res = None
    try:
        release.preflight()
        if args.scheduler:
            client = Client(args.scheduler)
        else:
            profile = pick_profile(args, cfg)
            with _sigint_ignored():
                cluster = release_cluster(cfg, profile, log_directory=cfg.layout.dask_logs_dir,
                                          qos=args.qos, walltime=args.walltime,
                                          account=args.account)
            if args.adapt:
                adapt(cluster, *args.adapt)
            elif is_slurm(cluster):
                adapt(cluster, cfg.cluster.adapt_min, cfg.cluster.adapt_max)
            client = Client(cluster)
            print(f"lsdask run: dashboard {dashboard_link(client)}", file=sys.stderr)
        if not getattr(args, "verbose", False):
            with contextlib.suppress(Exception):
                from ..runner import QuietShutdownPlugin

                client.register_plugin(QuietShutdownPlugin(SHUTDOWN_NOISE))
        force = args.force
        if force is not None and len(force) == 0:
            force = True
        res = release.run(client, stages=args.stages, force=force or (),
                          progress=False if args.no_progress else None, window=args.window,
                          force_keys=getattr(args, "force_keys", None))
    except (KeyboardInterrupt, Terminated) as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"lsdask run: {what}; run it again to resume", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        with _sigint_ignored(), contextlib.suppress(Exception):
            if client is not None:
                close_cluster(client, cluster)
    print_result(res, args.config)
    return 0 if res.ok else 1


def print_result(res, config: Path | str = "CONFIG") -> None:
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
    if res.run_report:
        print(f"  run report: {res.run_report}", file=out)
    if res.ok:
        print(f"lsdask run: ok in {res.elapsed:.1f} s", file=out)
        return
    nfail = sum(res.failed.values())
    classes = ", ".join(f"{n} {c}" for c, n in sorted(res.failed.items()))
    what = [f"{nfail} task(s) failed ({classes})"] if nfail else []
    if res.blocked:
        what.append(f"{res.blocked} blocked by failed inputs")
    what += [f"{st} {v.get('error') or 'blocked: ' + str(v.get('blocked'))}"
             for st, v in res.post.items()
             if isinstance(v, dict) and (v.get("error") or v.get("blocked")) and not nfail]
    print(f"lsdask run: not complete: {'; '.join(what) or 'failures'} "
          f"(this run or earlier); see `lsdask tasks {config} --state failed`", file=out)
