"""The ``lsdask`` command.

Each subcommand lives in its own module of this package, which defines
``add_parser(subparsers)`` (registering the subcommand with ``set_defaults(func=run)``)
and ``run(args) -> int``. Add a module to :data:`COMMANDS` to register it.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime error. Errors that
are the user's (``LsdaskError``) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

from ..errors import LsdaskError

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = [
    "bricks",
    "survey_bricks",
    "runbrick",
    "sweeps",
    "match",
    "depth",
    "run",
    "launch",
    "status",
    "report",
    "tasks",
    "retry",
    "rerun",
    "logs",
    "clean",
    "cluster",
    "demo",
    "simulate",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit 2, one line, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="lsdask", description="Run a Legacy Surveys imaging data release "
                     "on Dask.")
    parser.add_argument("--version", action="version", version=f"lsdask {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LsdaskError as e:
        print(f"lsdask {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"lsdask {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, sqlite3.Error) as e:
        msg = storage_error(e)
        if msg is None:
            raise
        print(f"lsdask {args.command}: error: {msg}", file=sys.stderr)
        return 1


def storage_error(e: BaseException) -> str | None:
    """One line for a release that cannot be written (disk full, read-only, no permission),
    or None for other errors."""
    import errno

    if isinstance(e, sqlite3.Error):
        text = str(e)
        if any(s in text for s in ("disk is full", "readonly", "read-only", "unable to open",
                                   "disk I/O error")):
            return f"the ledger cannot be written ({text}): is the release dir full or read-only?"
        return None
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                              errno.EACCES, errno.EPERM):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e} (nothing half-written was kept)"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
