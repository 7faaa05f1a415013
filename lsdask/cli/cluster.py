"""``lsdask cluster --profile X --show-script``: inspect a cluster profile."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="show cluster profiles and their batch job script")
    p.add_argument("--profile", default="local", help="profile name or YAML path")
    p.add_argument("--show-script", action="store_true", help="print the batch job script")
    p.add_argument("--account", help="Slurm account (default: $LSDASK_ACCOUNT/$SBATCH_ACCOUNT)")
    p.add_argument("--list", action="store_true", help="list the built-in profiles")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from ..jobqueue import PROFILES, job_script, load_profile, profile_path

    if args.list:
        for name in PROFILES:
            print(f"{name:<16} {profile_path(name)}")
        return 0
    if args.show_script:
        print(job_script(args.profile, account=args.account), end="")
        return 0
    print(f"# {profile_path(args.profile)}")
    print(yaml.safe_dump(load_profile(args.profile), sort_keys=False), end="")
    return 0
