"""``lsdask logs CONFIG KEY``: print a task's log (a brick name, an image base name ...)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LsdaskError


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="print the log file of a task (brick, image, ...)")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("key", help="task key: brick name, image base name, survey-ccds ...")
    p.add_argument("--stage", help="stage (default: every stage with this key)")
    p.add_argument("--path", action="store_true", help="print the log path only")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    stages = [args.stage] if args.stage else None
    if stages is None:
        if release.layout.ledger.exists():
            with release.ledger() as led:
                stages = [r["stage"] for r in led.find(args.key)]
        if not stages:
            stages = ["runbrick", "zeropoints", "calibs", "ccds", "bricks"]
    found = False
    for st in stages:
        path = release.layout.log(st, args.key)
        if not path.exists():
            continue
        found = True
        if args.path:
            print(path)
            continue
        print(f"==> {path} <==", file=sys.stderr)
        sys.stdout.write(path.read_text(errors="replace"))
    if not found:
        raise LsdaskError(f"no log for {args.key!r} (stages tried: {', '.join(stages)})")
    return 0
