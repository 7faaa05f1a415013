"""``lsdask status CONFIG``: per stage, tasks by state, failures by class, core-hours, ETA."""

from __future__ import annotations

from pathlib import Path

from ..progress import format_eta


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="per-stage task counts, failures, core-hours, ETA",
                       description="Summarise the release's ledger (read-only; safe while a "
                       "run is going on).")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.add_argument("--runs", action="store_true", help="also list the runs")
    p.set_defaults(func=run)


def format_status(df) -> str:
    if not len(df):
        return "no tasks recorded yet"
    lines = [f"{'stage':<11}{'pending':>8}{'running':>8}{'done':>8}{'failed':>8}  "
             f"{'core-h':>8}{'ETA':>8}  failures by class"]
    for stage, r in df.iterrows():
        fails = ", ".join(f"{c.split(':', 1)[1]} {int(r[c])}" for c in df.columns
                          if c.startswith("failed:") and r[c])
        lines.append(f"{stage:<11}{int(r['pending']):>8}{int(r['running']):>8}"
                     f"{int(r['succeeded']):>8}{int(r['failed']):>8}  "
                     f"{r['core_hours']:>8.3f}{format_eta(r['eta_hours']):>8}  {fails}")
    return "\n".join(lines)


def run(args) -> int:
    from ..release import release_from_arg

    release = release_from_arg(args.config)
    print(format_status(release.status()))
    ccds = release.layout.survey_ccds
    if ccds.is_file():
        import fitsio

        from ..survey.ccds import describe_cuts

        try:
            table = fitsio.read(str(ccds), columns=["image_filename", "ccdname", "ccd_cuts"])
            print(f"{ccds.name}: {describe_cuts(table)}")
        except (OSError, ValueError) as e:
            print(f"{ccds}: unreadable ({e})")
    if args.runs and release.layout.ledger.exists():
        with release.ledger() as led:
            lock = led.lock_info()
            for r in led.runs():
                print(f"run {r['run_id']}: {r['outcome'] or 'running/killed'} stages "
                      f"{r['stages']} by {r['user']}@{r['host']} pid {r['pid']} "
                      f"config {r['config_hash']}")
            if lock:
                print(f"lock: pid {lock.pid} on {lock.host}")
    return 0
