"""``lsdask clean CONFIG``: remove the checkpoints (and legacypipe's stage pickles) of bricks
that are done."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("clean", help="remove checkpoints of succeeded bricks")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would go")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    layout = release.layout
    proc = release.config.processor_ref("runbrick")
    n, nbytes = 0, 0
    paths = sorted(layout.checkpoints_dir.glob("*/*")) if layout.checkpoints_dir.exists() else []
    if layout.pickles_dir.exists():
        paths += sorted(layout.pickles_dir.glob("*/runbrick-*.pickle"))
    for path in paths:
        name = path.name.split(".", 1)[0]
        brick = name.split("-", 1)[1] if name.startswith(("checkpoint-", "runbrick-")) else None
        if brick is not None and name.startswith("runbrick-"):
            brick = brick.rsplit("-", 1)[0]
            if layout.stage_pickle(brick, name.rsplit("-", 1)[1]) != path:
                continue
        elif brick is None or layout.checkpoint(brick) != path:
            continue
        if not proc.call("runbrick_done", layout, brick):
            continue  # unfinished: its checkpoint is how it resumes
        n += 1
        nbytes += path.stat().st_size
        if args.dry_run:
            print(path)
        else:
            path.unlink()
            path.with_name(f".{brick}.lock").unlink(missing_ok=True)
    for lock in sorted(layout.checkpoints_dir.glob("*/.*.lock")) if not args.dry_run \
            and layout.checkpoints_dir.exists() else []:
        brick = lock.name[1:-len(".lock")]
        if proc.call("runbrick_done", layout, brick) and not layout.checkpoint(brick).exists():
            lock.unlink(missing_ok=True)  # the brick lock files of finished bricks
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {n} checkpoint(s) of finished bricks ({nbytes / 2**20:.1f} MiB)",
          file=sys.stderr)
    return 0
