"""``lsdask cluster --profile X --show-script``: inspect a cluster profile."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="show cluster profiles and their batch job script")
    p.add_argument("--profile", default="local", help="profile name (a jobqueue.<name> section)")
    p.add_argument("--show-script", action="store_true", help="print the batch job script")
    p.add_argument("--release", help="release name (the job name is lsdask-<release>)")
    p.add_argument("--list", action="store_true", help="list the profiles")
    from .run import add_batch_options

    add_batch_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from ..jobqueue import Profile, profile_names

    if args.list:
        for name in profile_names():
            prof = Profile.load(name)
            print(f"{name:<24} {'slurm' if prof.is_slurm else 'local'}")
        return 0
    prof = Profile.load(args.profile)
    if args.show_script:
        print(prof.job_script(account=args.account, qos=args.qos, walltime=args.walltime,
                              release=args.release), end="")
        return 0
    key = f"jobqueue.{prof.name}" if prof.is_slurm else f"lsdask.profiles.{prof.name}"
    print(f"# dask config {key}")
    print(yaml.safe_dump(prof.jobqueue if prof.is_slurm else prof.local, sort_keys=False),
          end="")
    return 0
