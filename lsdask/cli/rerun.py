"""``lsdask rerun CONFIG --stage S KEY...``: redo single keys and what is made from them."""

from __future__ import annotations

from pathlib import Path

from .run import add_batch_options

#: The per-key stages ``rerun`` redoes (an image key for calibs/zeropoints, a brick name).
RERUN_STAGES = ("calibs", "zeropoints", "runbrick")


def add_parser(sub) -> None:
    p = sub.add_parser("rerun", help="redo single keys (images, bricks) and what depends on them",
                       description="Redo the given keys of a stage even though their products "
                       "are done, then the later stages: an image's calibs redo its zeropoints, "
                       "an image's zeropoints the bricks it touches; whole-release stages redo "
                       "what their changed inputs make stale.")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--stage", required=True, choices=RERUN_STAGES)
    p.add_argument("keys", nargs="+", metavar="KEY", help="brick names or image keys")
    p.add_argument("--cluster", choices=["local", "slurm"], help="cluster kind")
    p.add_argument("--profile", help="cluster profile (default: the config's)")
    p.add_argument("--adapt", nargs=2, type=int, metavar=("MIN", "MAX"))
    p.add_argument("--scheduler", help="address of a running Dask scheduler to use instead")
    p.add_argument("--window", type=int, help="tasks in flight at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_batch_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..graphs.base import STAGES
    from ..ledger import Ledger
    from ..release import release_from_arg
    from . import run as run_cmd

    release = release_from_arg(args.config)
    if not release.layout.ledger.exists():
        raise ConfigError(f"{args.config}: nothing has run yet (use `lsdask run`)")
    with Ledger.open_readonly(release.layout.ledger) as led:
        known = set(led.states(args.stage))
        ran = {s for s in STAGES if led.states(s)}
    unknown = [k for k in args.keys if k not in known]
    if unknown:
        raise ConfigError(f"{args.stage} has no task {', '.join(unknown)} in the ledger "
                          f"(see `lsdask tasks {args.config} --stage {args.stage}`)")
    # the stage, the per-key stages after it, and the later stages this release has run
    later = STAGES[STAGES.index(args.stage) + 1:]
    args.stages = ["images", args.stage, *(s for s in later if s in RERUN_STAGES or s in ran)]
    args.force = None
    args.force_keys = {args.stage: list(args.keys)}
    return run_cmd.run(args)
