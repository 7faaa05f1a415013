"""``lsdask launch CONFIG``: submit the driver (``lsdask run``) as a Slurm batch job."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from .run import add_batch_options


def add_parser(sub) -> None:
    p = sub.add_parser("launch", help="submit `lsdask run CONFIG` as a Slurm batch job",
                       description="Write an sbatch script that runs the driver (`lsdask run "
                       "CONFIG`) and submit it; prints the Slurm job id. --qos/--walltime/"
                       "--account set the driver's job (default: the profile's `driver`).")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--profile", help="cluster profile (default: the config's)")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="passed to `lsdask run`")
    p.add_argument("--dry-run", action="store_true", help="write the script, do not submit")
    add_batch_options(p)
    p.set_defaults(func=run)


def driver_script(cfg, config: Path, profile: str, qos: str | None = None,
                  walltime: str | None = None, account: str | None = None,
                  stages: list[str] | None = None, log: Path | None = None) -> str:
    """The sbatch script of the driver job (``exec lsdask run``: it gets Slurm's SIGTERM)."""
    import os

    from ..errors import ConfigError
    from ..jobqueue import Profile

    prof = Profile.load(profile)
    if not prof.is_slurm:
        raise ConfigError(f"lsdask launch needs a Slurm profile (the config's is {profile!r}); "
                          f"use --profile")
    drv = prof.driver
    directives = list(drv.get("directives", []))
    if qos:
        directives = [f"-q {qos}", *(d for d in directives if not d.startswith(("-q ", "--qos")))]
    acct = account or cfg.cluster.account or os.environ.get("LSDASK_ACCOUNT")
    lines = ["#!/usr/bin/env bash", f"#SBATCH -J lsdask-{cfg.release.name}-driver",
             f"#SBATCH -t {walltime or drv.get('walltime', '01:00:00')}",
             "#SBATCH -N 1", "#SBATCH -n 1", f"#SBATCH -c {int(drv.get('cpus', 1))}",
             f"#SBATCH --mem={drv.get('memory', '4G')}"]
    lines += [f"#SBATCH {d}" for d in directives]
    if acct:
        lines.append(f"#SBATCH -A {acct}")
    if log is not None:
        lines.append(f"#SBATCH -o {log}")
    cmd = [sys.executable, "-m", "lsdask", "run", str(config.resolve()), "--profile", profile,
           "--no-progress"]
    if acct:
        cmd += ["--account", acct]
    if stages:
        cmd += ["--stages", *stages]
    lines += ["", "export PYTHONUNBUFFERED=1", f"cd {shlex.quote(str(config.resolve().parent))}",
              "# exec: the driver itself receives Slurm's SIGTERM at the walltime (and resumes "
              "when launched again)", "exec " + " ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import LsdaskError
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    cfg = release.config
    config = Path(cfg.path or args.config)
    logs = cfg.layout.dask_logs_dir
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    script = logs / f"driver-{stamp}.sbatch"
    script.write_text(driver_script(cfg, config, args.profile or cfg.cluster.profile,
                                    qos=args.qos, walltime=args.walltime,
                                    account=args.account, stages=args.stages,
                                    log=logs / "driver-%j.out"))
    if args.dry_run:
        print(script)
        return 0
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise LsdaskError(f"sbatch {script}: {out.stderr.strip() or out.stdout.strip()}")
    job = out.stdout.strip().split(";")[0]
    print(job)
    print(f"lsdask launch: driver job {job} ({script}); log {logs}/driver-{job}.out; "
          f"watch: lsdask status {args.config}", file=sys.stderr)
    return 0
