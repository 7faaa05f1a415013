"""``lsdask retry CONFIG --stage S [--class oom]``: make failed tasks run again next time."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    from ..ledger import FAILURE_CLASSES

    p = sub.add_parser("retry", help="reset failed tasks so the next run retries them")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--stage", required=True)
    p.add_argument("--class", dest="failure_class",
                   choices=FAILURE_CLASSES)
    p.add_argument("keys", nargs="*", help="only these keys")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ledger import Ledger
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    if not release.layout.ledger.exists():
        print("nothing has run yet", file=sys.stderr)
        return 0
    with Ledger(release.layout.ledger) as led:
        led.acquire(heartbeat=False)
        n = led.reset(args.stage, args.failure_class, keys=args.keys or None)
    print(f"{n} {args.stage} task(s) reset to pending; `lsdask run` will retry them",
          file=sys.stderr)
    return 0
