"""``lsdask tasks CONFIG --stage S --state failed``: list tasks from the ledger."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from ..ledger import FAILURE_CLASSES

    p = sub.add_parser("tasks", help="list tasks (e.g. failed bricks) from the ledger")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--state", choices=["pending", "running", "succeeded", "failed"])
    p.add_argument("--class", dest="failure_class",
                   choices=FAILURE_CLASSES)
    p.add_argument("--keys", action="store_true", help="print the keys only, one per line")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    with release.ledger() as led:
        rows = led.tasks(args.stage, args.state, args.failure_class, args.limit)
    for r in rows:
        if args.keys:
            print(r["key"])
            continue
        wall = f"{r['wall']:.1f}s" if r["wall"] is not None else "-"
        where = r["host"] or "-"
        if r["slurm_job_id"]:
            where += f" job {r['slurm_job_id']}"
        extra = f" {r['failure_class']}: {r['message']}" if r["state"] == "failed" else ""
        print(f"{r['stage']:<11} {r['key']:<30} {r['state']:<9} attempt {r['attempt']} "
              f"threads {r['threads']} {wall} {where}{extra}")
    return 0
