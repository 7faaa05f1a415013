"""``lsdask report CONFIG``: write the release's HTML run report and print its path."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write the HTML run report (plots, gallery)",
                       description="Write <release_dir>/report/index.html and its plots from "
                       "the ledger (read-only), survey-ccds and the products: static files "
                       "that open from the file system. Sections whose inputs do not exist "
                       "yet say so. `lsdask run` refreshes it at its end.")
    p.add_argument("config", type=Path, help="release TOML (or its directory)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..release import release_from_arg
    from ..report import write_report

    print(write_report(release_from_arg(args.config)))
    return 0
